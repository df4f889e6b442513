"""`groundex verify`: do the catalog, the files, the embedding shards, the FAISS indexes and the model hashes agree?

Each check reads what one part of the workdir claims and looks at what is on disk. A finding is a *problem*
(something a command would trip over or answer wrongly from: a missing image file, a shard shorter than its
catalog rows, an index holding other ids than the embeddings, a checkpoint whose bytes no longer match its
hash) or a *note* (harmless leftovers of an interrupted command: an unreferenced shard, a run that never
finished). The workdir is sound when there is no problem. Nothing here writes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from warehouse import (
    ARTEFACT_KINDS,
    ArtefactStore,
    Catalog,
    CatalogError,
    Workdir,
    content_hash,
    missing_files,
)

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    area: str        # 'catalog', 'images', 'models', 'embeddings', 'indexes', 'captioners', 'runs', ...
    message: str     # what disagrees with what, naming the row or the file
    problem: bool = True  # False: a note (harmless, e.g. left by an interrupted command)


@dataclass
class VerifyReport:
    workdir: str
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # what was looked at, by area

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.problem]

    @property
    def sound(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"workdir": self.workdir, "sound": self.sound, "checked": self.checked,
                "problems": [asdict(f) for f in self.problems],
                "notes": [asdict(f) for f in self.findings if not f.problem]}


Check = Callable[[Workdir, Catalog, VerifyReport], None]


def verify_workdir(workdir: Workdir, deep: bool = False, extra_checks: Iterable[Check] = (),
                   progress: bool = True) -> VerifyReport:
    """Run every check; `deep` also re-hashes every image file against the sha256 stored at ingest."""
    report = VerifyReport(str(workdir.root))
    try:
        workdir.read_manifest()
        catalog = Catalog.open(workdir, read_only=True)
    except (FileNotFoundError, ValueError, CatalogError) as e:
        report.findings.append(Finding("catalog", str(e)))
        return report
    with catalog:
        checks: list[Check] = [_check_rows, lambda w, c, r: _check_images(w, c, r, deep, progress), _check_artefacts,
                               _check_embeddings, _check_indexes, _check_runs, *extra_checks]
        for check in checks:
            check(workdir, catalog, report)
    return report


def _check_rows(workdir: Workdir, catalog: Catalog, report: VerifyReport) -> None:
    """Rows that point at rows which are not there (DuckDB holds no foreign keys: removal cascades by hand)."""
    dangling = catalog.dangling_rows()
    for what, n in dangling.items():
        if n:
            report.findings.append(Finding("catalog", f"{n:,} {what}"))
    report.checked["catalog tables"] = len(dangling)


def _check_images(workdir: Workdir, catalog: Catalog, report: VerifyReport, deep: bool, progress: bool) -> None:
    rows = catalog.image_files()
    missing = []
    for image_id, path, sha in tqdm(rows, desc="verify images", unit="img", disable=not progress or not deep):
        file = Path(path)
        if not file.is_file():
            missing.append((image_id, path))
        elif deep and hashlib.sha256(file.read_bytes()).hexdigest() != sha:
            report.findings.append(Finding("images", f"image {image_id}: {path} changed since ingest (sha256 differs)"))
    for image_id, path in missing[:20]:
        report.findings.append(Finding("images", f"image {image_id}: file {path} is missing"))
    if len(missing) > 20:
        report.findings.append(Finding("images", f"... and {len(missing) - 20:,} more missing image files"))
    report.checked["images"] = len(rows)


def _check_artefacts(workdir: Workdir, catalog: Catalog, report: VerifyReport) -> None:
    """Models, captioners, taggers and chunkers: each recorded folder holds its files and they hash to its id; what a
    head reads (its parent model) is there; folders on disk that the catalog does not know are noted."""
    store = ArtefactStore(workdir)
    artefacts = catalog.artefacts()
    models = {a.id for a in artefacts if a.kind == "model"}
    for a in artefacts:
        label = f"{a.kind} {a.display}"
        absent = missing_files(a.kind, a.path) if a.path.is_dir() else ["its folder"]
        if absent:
            report.findings.append(Finding(f"{a.kind}s", f"{label}: {a.path} lacks {', '.join(absent)}"))
        elif (actual := content_hash(a.kind, a.path)) != a.id:
            report.findings.append(Finding(f"{a.kind}s", f"{label}: the files in {a.path} hash to {actual}, not to "
                                                         "its id"))
        if a.kind in ("captioner", "tagger") and a.parent_id not in models:  # heads read a model; chunkers none
            report.findings.append(Finding(f"{a.kind}s", f"{label} reads model {a.parent_id}, which is not recorded"))
    recorded = {(a.kind, a.path.resolve()) for a in artefacts}
    for kind in ARTEFACT_KINDS:
        folder = store.folder(kind)
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_dir() and not path.name.startswith(".") and (kind, path.resolve()) not in recorded:
                report.findings.append(Finding(f"{kind}s", f"{path.relative_to(workdir.root)} is not recorded in the "
                                                           "catalog (unused)", problem=False))
    for path in store.stray_staging():
        report.findings.append(Finding("artefacts", f"{path.relative_to(workdir.root)}: a staging folder left by an "
                                                    "interrupted command (unused)", problem=False))
    for model_id in catalog.models_with_rows():
        if model_id not in models:
            report.findings.append(Finding("models", f"embeddings or indexes of model {model_id}, which is not "
                                                     "recorded"))
        elif catalog.embedding_set(model_id, "image") is None and catalog.embedded_ids(model_id, "image"):
            report.findings.append(Finding("embeddings", f"image embeddings of model {model_id} are not recorded as a "
                                                         "stored kind (embedding_sets)"))
    captioners = {a.id for a in artefacts if a.kind == "captioner"}
    for model_id, n in catalog.generated_caption_counts():
        if model_id not in captioners:
            report.findings.append(Finding("captioners", f"{n:,} generated captions of captioner {model_id}, which "
                                                         "is not recorded"))
    for kind in ARTEFACT_KINDS:
        report.checked[f"{kind}s"] = sum(a.kind == kind for a in artefacts)


def _load_shard(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None


def _check_embeddings(workdir: Workdir, catalog: Catalog, report: VerifyReport) -> None:
    rows = catalog.embedding_shards()
    referenced: set[Path] = set()
    for model_id, kind, shard, n, max_row, distinct in rows:
        paths = [workdir.shards_dir(model_id, kind) / shard]
        patch = workdir.shards_dir(model_id, "patch") / shard
        if kind == "image" and patch.parent.is_dir():
            paths.append(patch)
        dims = set()
        for path in paths:
            referenced.add(path)
            array = _load_shard(path)
            label = f"{path.parent.name} shard {path.relative_to(workdir.root)}"
            if array is None:
                report.findings.append(Finding("embeddings", f"{label} ({n:,} catalog rows) is missing or unreadable"))
                continue
            stored = catalog.embedding_set(model_id, path.parent.name)
            expected = None if stored is None else (
                (stored["cells"], stored["dim"]) if path.parent.name == "patch" else (stored["dim"],))
            if expected is not None and array.shape[1:] != expected:
                report.findings.append(Finding("embeddings", f"{label} holds vectors of shape {array.shape[1:]}; the "
                                                             f"catalog records {expected} (embedding_sets)"))
            if array.shape[0] <= max_row or distinct != n:
                report.findings.append(Finding("embeddings", f"{label} has {array.shape[0]:,} rows; the catalog points "
                                                             f"at row {max_row} ({distinct:,} distinct of {n:,})"))
            if array.dtype != np.float16:
                report.findings.append(Finding("embeddings", f"{label} is {array.dtype}, not float16"))
            dims.add(array.shape[-1])
        if len(dims) > 1:
            report.findings.append(Finding("embeddings", f"shard {shard} of model {model_id}: image and patch "
                                                         f"dimensions differ ({sorted(dims)})"))
    for model_id, kind, n in catalog.orphan_counts():
        report.findings.append(Finding("embeddings", f"{n:,} {kind} embedding rows of model {model_id} belong to "
                                                     f"removed items (the next `groundex index` drops them)",
                                       problem=False))
    on_disk = set(workdir.embeddings_dir.glob("*/*/shard-*.npy")) if workdir.embeddings_dir.is_dir() else set()
    for path in sorted(on_disk - referenced):
        report.findings.append(Finding("embeddings", f"{path.relative_to(workdir.root)} is not referenced by the "
                                                     "catalog (left by an interrupted run; unused)", problem=False))
    report.checked["embedding shards"] = len(referenced)


def faiss_ids(index: faiss.Index) -> np.ndarray:
    """Every id an index holds (IDMap: its id map; IVF: the ids of its inverted lists)."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(index.id_map)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise ValueError(f"cannot list the ids of a {type(index).__name__}")
    invlists = ivf.invlists
    parts = []
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _check_indexes(workdir: Workdir, catalog: Catalog, report: VerifyReport) -> None:
    from .index import patch_ids

    current = catalog.indexed_kinds()
    for model_id, kind in current:
        info = catalog.current_index(model_id, kind)
        path = Path(info["path"])
        label = f"{kind} index v{info['version']} of model {model_id} ({path.name})"
        ids_path = path.with_suffix(".ids.npy")
        if not path.is_file() or not ids_path.is_file():
            absent = path if not path.is_file() else ids_path
            report.findings.append(Finding("indexes", f"{label}: {absent} is missing"))
            continue
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            report.findings.append(Finding("indexes", f"{label}: unreadable ({str(e).strip().splitlines()[-1]})"))
            continue
        held = np.load(ids_path, allow_pickle=False)
        embedded = np.array(catalog.embedded_ids(model_id, "image" if kind == "patch" else kind), dtype=np.int64)
        if index.ntotal != info["n"]:
            report.findings.append(Finding("indexes", f"{label}: holds {index.ntotal:,} vectors, the catalog says "
                                                      f"{info['n']:,}"))
        stored = catalog.embedding_set(model_id, kind)
        if stored is None:
            report.findings.append(Finding("indexes", f"{label}: the catalog records no stored {kind} embeddings of "
                                                      "this model (embedding_sets)"))
            continue
        cells = stored["cells"]
        expected = patch_ids(held, cells) if kind == "patch" else held
        stored = faiss_ids(index)
        if len(stored) != len(expected) or not np.array_equal(np.sort(stored), np.sort(expected)):
            report.findings.append(Finding("indexes", f"{label}: its FAISS ids differ from its id list "
                                                      f"({ids_path.name})"))
        if not np.array_equal(np.sort(held), np.sort(embedded)):
            extra, absent = np.setdiff1d(held, embedded), np.setdiff1d(embedded, held)
            report.findings.append(Finding("indexes", f"{label}: out of date ({len(absent):,} embedded items not in "
                                                      f"it, {len(extra):,} in it without an embedding); run "
                                                      "`groundex index`"))
    report.checked["indexes"] = len(current)


def _check_runs(workdir: Workdir, catalog: Catalog, report: VerifyReport) -> None:
    for run_id, command in catalog.unfinished_runs():
        report.findings.append(Finding("runs", f"run {run_id} ({command}) never finished: it was killed or is "
                                               "still running; run the command again to resume", problem=False))
    report.checked["runs"] = catalog.counts()["runs"]
