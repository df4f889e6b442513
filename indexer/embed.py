"""Embedding a catalog: images (global + patches) and captions, into float16 shards.

    embeddings/<model_id>/image/shard-00000.npy    (n, D)     float16, L2-normalized before the cast
    embeddings/<model_id>/patch/shard-00000.npy    (n, P, D)  float16, same rows as the image shard
    embeddings/<model_id>/caption/shard-00000.npy  (m, D)     float16

Each shard is written atomically and then recorded in the catalog's `embeddings` table (item id ->
shard, row). Items already recorded are skipped, so an interrupted run resumes at the next shard; a
shard written but not yet recorded is simply embedded again under a new name.
Decoding runs on worker processes while the model embeds the previous batch (reader -> model -> writer).
`indexer.shards` reads the shards back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from warehouse import Catalog, ImageError, Workdir, atomic_write_npy

from .config import EmbedConfig
from .data import _decode_many, worker_pool
from .devices import autocast, precision_uses_bf16
from .shards import next_shard_name

if TYPE_CHECKING:  # the model classes import open_clip: not needed to read embeddings
    from .models import GroundexModel

_logger = logging.getLogger(__name__)


@dataclass
class EmbedReport:
    images: int = 0
    captions: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # decode / model / write


def _decoded_batches(paths: Sequence[str], size: int, batch_size: int, pool: ProcessPoolExecutor | None,
                     resize: str = "squash") -> Iterator[np.ndarray]:
    """(b, 3, size, size) uint8 batches resized by `resize` (the model's), in order; decoding runs ahead on the pool."""
    jobs = [(list(paths[s:s + batch_size]), size, resize) for s in range(0, len(paths), batch_size)]
    results = pool.map(_decode_many, jobs) if pool is not None else map(_decode_many, jobs)
    for job, out in zip(jobs, results, strict=True):
        bad = [(p, e) for p, e in zip(job[0], out, strict=True) if isinstance(e, str)]
        if bad:
            raise ImageError(bad[0][1])
        yield np.stack(out)


@torch.no_grad()
def embed_images(workdir: Workdir, model: GroundexModel, model_id: str, items: Sequence[tuple[int, str]],
                 config: EmbedConfig | None = None, report: EmbedReport | None = None) -> EmbedReport:
    """Embed the (image id, path) items not yet embedded by this model."""
    config = config or EmbedConfig()
    report = report or EmbedReport()
    with Catalog.open(workdir, read_only=True) as catalog:
        done = set(catalog.embedded_ids(model_id, "image"))
    todo = [(i, p) for i, p in items if i not in done]
    if not todo:
        return report
    model.eval()
    bf16 = precision_uses_bf16(config.precision, model.device)
    image_dir, patch_dir = workdir.shards_dir(model_id, "image"), workdir.shards_dir(model_id, "patch")
    image_dir.mkdir(parents=True, exist_ok=True)
    patch_dir.mkdir(parents=True, exist_ok=True)
    stages = report.stage_seconds
    started = time.perf_counter()
    batch = config.batch_for(model.device.type)
    pool = worker_pool(config.workers) if config.workers > 1 and len(todo) > batch else None
    try:
        with tqdm(total=len(todo), desc="embed images", unit="img", disable=not config.progress) as bar:
            for s in range(0, len(todo), config.shard_size):
                shard = todo[s:s + config.shard_size]
                globals_, patches = [], []
                t = time.perf_counter()
                for pixels in _decoded_batches([p for _, p in shard], model.image_size, batch, pool,
                                               model.resize):
                    t_model = time.perf_counter()
                    stages["decode"] = stages.get("decode", 0.0) + t_model - t
                    pixels = torch.from_numpy(pixels)
                    with autocast(model.device, bf16):
                        if config.patches:
                            g, p = model.encode_image_and_patches(pixels)
                            patches.append(p.half().cpu().numpy())
                        else:
                            g = model.encode_image(pixels)
                    globals_.append(g.half().cpu().numpy())
                    t = time.perf_counter()
                    stages["model"] = stages.get("model", 0.0) + t - t_model
                    bar.update(len(pixels))
                name = next_shard_name(image_dir)
                if config.patches:
                    atomic_write_npy(patch_dir / name, np.concatenate(patches))
                atomic_write_npy(image_dir / name, np.concatenate(globals_))  # (n, D) float16
                with Catalog.open(workdir) as catalog:
                    catalog.record_embedding_set(model_id, "image", model.embed_dim)
                    if config.patches:
                        catalog.record_embedding_set(model_id, "patch", model.embed_dim, model.patch_grid)
                    catalog.add_embedding_rows(model_id, "image", [i for i, _ in shard], name)
                t_end = time.perf_counter()
                stages["write"] = stages.get("write", 0.0) + t_end - t
                t = t_end
                report.images += len(shard)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    report.seconds += time.perf_counter() - started
    return report


@torch.no_grad()
def embed_captions(workdir: Workdir, model: GroundexModel, model_id: str, rows: Sequence[tuple[int, int, str]],
                   config: EmbedConfig | None = None, report: EmbedReport | None = None) -> EmbedReport:
    """Embed the (caption id, image id, text) rows not yet embedded by this model."""
    config = config or EmbedConfig()
    report = report or EmbedReport()
    with Catalog.open(workdir, read_only=True) as catalog:
        done = set(catalog.embedded_ids(model_id, "caption"))
    todo = [(c, t) for c, _, t in rows if c not in done]
    if not todo:
        return report
    model.eval()
    bf16 = precision_uses_bf16(config.precision, model.device)
    folder = workdir.shards_dir(model_id, "caption")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tqdm(total=len(todo), desc="embed captions", unit="cap", disable=not config.progress) as bar:
        for s in range(0, len(todo), config.shard_size):
            shard = todo[s:s + config.shard_size]
            out = []
            batch = config.batch_for(model.device.type)
            for b in range(0, len(shard), batch):
                texts = [t for _, t in shard[b:b + batch]]
                with autocast(model.device, bf16):
                    out.append(model.encode_text(texts).half().cpu().numpy())
                bar.update(len(texts))
            name = next_shard_name(folder)
            atomic_write_npy(folder / name, np.concatenate(out))
            with Catalog.open(workdir) as catalog:
                catalog.record_embedding_set(model_id, "caption", model.embed_dim)
                catalog.add_embedding_rows(model_id, "caption", [c for c, _ in shard], name)
            report.captions += len(shard)
    report.seconds += time.perf_counter() - started
    return report
