"""One ingest entry point per source format (`ingest_flickr30k`, `ingest_folder`, ...): open the workdir's
catalog, run the ingest pipeline (`ingest.py`) over the source's reader (`sources/`), note the source in the
manifest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .ingest import IngestConfig, IngestReport, ingest
from .records import Reject, Sample
from .sources import (
    count_flickr30k_entities,
    count_rows,
    list_image_files,
    load_local_dataset,
    read_flickr30k_entities,
    read_folder,
    read_hf_dataset,
    read_karpathy,
    read_results_csv,
)
from .synthetic import SyntheticConfig, generate_dataset
from .workdir import Workdir


def _run(workdir: Workdir, command: str, items: Iterable[Sample | Reject], source: dict[str, Any],
         config: IngestConfig | None, total: int | None) -> IngestReport:
    workdir.create()
    report = ingest(workdir, items, command, source, config, total)
    with Catalog.open(workdir, read_only=True) as catalog:
        schema_version = catalog.schema_version
    manifest = workdir.read_manifest()
    sources = manifest.get("sources", [])
    entry = {"command": command, **{k: str(v) for k, v in source.items()}}
    if entry not in sources:
        sources.append(entry)
    workdir.update_manifest(schema_version=schema_version, sources=sources)
    return report


def ingest_flickr30k(workdir: Workdir, root: Path, dataset: str = "flickr30k",
                     config: IngestConfig | None = None) -> IngestReport:
    """The official Flickr30k Entities layout (images/, Sentences/, Annotations/, split files)."""
    root = Path(root).resolve()
    items = read_flickr30k_entities(root, dataset)
    return _run(workdir, "ingest flickr30k", items, {"root": root, "dataset": dataset}, config,
                count_flickr30k_entities(root))


def ingest_karpathy(workdir: Workdir, json_path: Path, images_dir: Path, dataset: str = "flickr30k",
                    config: IngestConfig | None = None) -> IngestReport:
    items = read_karpathy(json_path, images_dir, dataset)
    return _run(workdir, "ingest karpathy", items,
                {"json": Path(json_path).resolve(), "images": Path(images_dir).resolve(), "dataset": dataset},
                config, None)


def ingest_results_csv(workdir: Workdir, csv_path: Path, images_dir: Path, dataset: str = "flickr30k",
                       split: str | None = None, config: IngestConfig | None = None) -> IngestReport:
    items = read_results_csv(csv_path, images_dir, dataset, split)
    return _run(workdir, "ingest results-csv", items,
                {"csv": Path(csv_path).resolve(), "images": Path(images_dir).resolve(), "dataset": dataset,
                 "split": split}, config, None)


def ingest_hf(workdir: Workdir, path: Path, dataset: str = "flickr30k", image_column: str = "image",
              caption_column: str = "caption", split_column: str = "split",
              config: IngestConfig | None = None) -> IngestReport:
    """A Hugging Face `datasets` copy on local disk; image bytes are written under datasets/hf-<name>/."""
    path = Path(path).resolve()
    loaded = load_local_dataset(path)
    images_out = workdir.create().datasets_dir / f"hf-{path.name}" / "images"
    items = read_hf_dataset(loaded, path, images_out, dataset, image_column, caption_column, split_column)
    return _run(workdir, "ingest hf", items, {"path": path, "dataset": dataset}, config, count_rows(loaded))


def ingest_folder(workdir: Workdir, root: Path, dataset: str | None = None, split: str | None = None,
                  config: IngestConfig | None = None) -> IngestReport:
    root = Path(root).resolve()
    total = len(list_image_files(root))
    return _run(workdir, "ingest folder", read_folder(root, dataset, split),
                {"root": root, "dataset": dataset or root.name, "split": split}, config, total)


def ingest_synthetic(workdir: Workdir, synthetic: SyntheticConfig | None = None,
                     config: IngestConfig | None = None, out: Path | None = None) -> IngestReport:
    """Generate the synthetic scenes (under datasets/ unless `out` is given) and ingest them."""
    synthetic = synthetic or SyntheticConfig()
    out = out or workdir.create().datasets_dir / f"synthetic-s{synthetic.seed}-{synthetic.size}px"
    progress = config.progress if config else True
    root = generate_dataset(out, synthetic, progress=progress)
    return _run(workdir, "ingest synthetic", read_flickr30k_entities(root, "synthetic"),
                {"root": root, "dataset": "synthetic", **asdict(synthetic)}, config,
                count_flickr30k_entities(root))
