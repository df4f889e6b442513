"""The ingest pipeline: reader -> prepare (open, hash, measure, rescale boxes) -> writer.

Readers (warehouse/sources/) only parse. Here, samples are taken in chunks: keys already in the
catalog are skipped (ingesting twice adds nothing), images are inspected on a thread pool (PIL and
hashlib release the GIL), and each chunk is written in one transaction. A crash loses at most the
chunk in flight, and running the same ingest again resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from typing import Any

from tqdm.auto import tqdm

from .catalog import Catalog, PreparedSample, recorded_run
from .errors import InputError
from .images import DEFAULT_MAX_PIXELS, ImageError, inspect_image
from .records import Box, Reject, Sample
from .workdir import Workdir

_logger = logging.getLogger(__name__)


@dataclass
class IngestConfig:
    workers: int = max(1, os.cpu_count() or 1)  # threads opening and hashing images
    chunk_size: int = 512                       # samples per transaction: the most a crash can lose
    max_pixels: int = DEFAULT_MAX_PIXELS        # larger images are rejected (decompression bombs)
    progress: bool = True                       # show a progress bar

    def __post_init__(self) -> None:
        for name in ("workers", "chunk_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class IngestReport:
    run_id: int
    added: int = 0             # images added to the catalog
    already_present: int = 0   # images whose key was already in the catalog (left untouched)
    rejected: int = 0          # problems recorded in `rejects` (whole images, rows or boxes)
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # the first few rejects, for the console

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rescale_boxes(sample: Sample, width: int, height: int) -> tuple[list[Box], list[Reject]]:
    """Map a sample's boxes from its annotation size to the stored image (x and y independently),
    clip them to the image, and reject inverted or empty ones."""
    annotated_w, annotated_h = sample.annotation_size or (width, height)
    sx, sy = width / annotated_w, height / annotated_h
    kept: list[Box] = []
    rejects: list[Reject] = []
    mentioned = {p.entity_id for c in sample.captions for p in c.phrases}
    for box in sample.boxes:
        label = f"box for entity {'/'.join(map(str, box.entity_ids))} ({box.x1:g},{box.y1:g},{box.x2:g},{box.y2:g})"
        if mentioned and not mentioned.intersection(box.entity_ids):  # 2 of 50,442 boxes in the real sample
            rejects.append(Reject(str(sample.path), f"{label}: no caption mentions this entity; box dropped"))
            continue
        if box.x2 <= box.x1 or box.y2 <= box.y1:
            rejects.append(Reject(str(sample.path), f"{label} is inverted or empty; box dropped"))
            continue
        x1, x2 = min(max(box.x1 * sx, 0.0), width), min(max(box.x2 * sx, 0.0), width)
        y1, y2 = min(max(box.y1 * sy, 0.0), height), min(max(box.y2 * sy, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            rejects.append(Reject(str(sample.path), f"{label} lies outside the {annotated_w}x{annotated_h} image; "
                                  "box dropped"))
            continue
        kept.append(Box(box.entity_ids, x1, y1, x2, y2))
    return kept, rejects


def _prepare(sample: Sample, max_pixels: int) -> PreparedSample | Reject:
    try:
        info = inspect_image(sample.path, max_pixels)
    except ImageError as e:
        return Reject(str(sample.path), f"{e}; image not ingested")
    boxes, box_rejects = rescale_boxes(sample, info.width, info.height)
    if box_rejects:
        # Entities keep the box counts of the boxes that were stored.
        counts: dict[int, int] = {}
        for b in boxes:
            for e in b.entity_ids:
                counts[e] = counts.get(e, 0) + 1
        sample = replace(sample, entities=[replace(e, n_boxes=counts.get(e.entity_id, 0)) for e in sample.entities],
                         rejects=sample.rejects + box_rejects)
    return PreparedSample(sample, info, boxes)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def ingest(workdir: Workdir, items: Iterable[Sample | Reject], command: str,
           source_config: dict[str, Any] | None = None, config: IngestConfig | None = None,
           total: int | None = None) -> IngestReport:
    """Store what a reader yields; record the run, its rejects and its counts in the catalog. The catalog is
    opened for each chunk's transaction only, so searches and the app can read it while an ingest runs."""
    config = config or IngestConfig()
    started = time.perf_counter()
    run_config = {"source": source_config or {}, "ingest": asdict(config)}
    with recorded_run(workdir, command, run_config) as (run_id, result):
        report = IngestReport(run_id=run_id)
        seen_keys: set[str] = set()
        bar = tqdm(total=total, unit="img", desc=command, disable=not config.progress, dynamic_ncols=True)
        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            for chunk in _chunks(items, config.chunk_size):
                rejects = [item for item in chunk if isinstance(item, Reject)]
                samples = [item for item in chunk if isinstance(item, Sample)]
                with Catalog.open(workdir, read_only=True) as catalog:
                    present = catalog.existing_keys(s.key for s in samples)
                fresh = []
                for s in samples:
                    if s.key in present:
                        report.already_present += 1
                    elif s.key in seen_keys:
                        rejects.append(Reject(str(s.path), f"duplicate key {s.key} in this source; first kept"))
                    else:
                        seen_keys.add(s.key)
                        fresh.append(s)
                prepared = []
                for outcome in pool.map(lambda s: _prepare(s, config.max_pixels), fresh):
                    if isinstance(outcome, Reject):
                        rejects.append(outcome)
                    else:
                        prepared.append(outcome)
                        rejects.extend(outcome.sample.rejects)
                # Rejects first: if the write of the images fails, the problems are still on record.
                with Catalog.open(workdir) as catalog:
                    report.rejected += catalog.add_rejects(rejects, run_id)
                    report.added += catalog.add_samples(prepared)
                report.examples.extend(str(r) for r in rejects[: max(0, 5 - len(report.examples))])
                bar.update(len(chunk))
                bar.set_postfix(added=report.added, present=report.already_present, rejected=report.rejected)
        bar.close()
        report.seconds = round(time.perf_counter() - started, 2)
        result.update(report.as_dict())
    _logger.info("%s: %d added, %d already present, %d rejected in %.1fs", command, report.added,
                 report.already_present, report.rejected, report.seconds)
    return report
