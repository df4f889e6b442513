"""Image embedding as a Ray Data job (`groundex index --engine ray`), for collections past one machine.

    catalog (id, path) -> ray.data.from_items -> decode/resize (map_batches, CPU tasks)
        -> encode (map_batches on a pool of encoder actors; a GPU each where the cluster has them)
        -> write_parquet: embeddings/<model>/ray/<run>/part-*.parquet  (id int64, embedding D x float16,
           patches P x D float16)

Locally it runs on `ray.init()` with the machine's cores; with `address` the same job runs on a Ray
cluster (the workdir must then be on storage every node reads, and the Parquet shards are written there).
The shards are then imported as the workdir's ordinary float16 shards and catalog rows (so indexing,
search and the heads read them as they read the local pipeline's), and they stay where they are for
DuckDB to read directly (`read_parquet`). The decoding and the model are the local path's
(`indexer.data.decode_square`, `GroundexModel.encode_image_and_patches`), so both give the same vectors
up to float16 rounding; a test checks it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from warehouse import Catalog, Workdir, atomic_write_npy

from .config import EMBED_BATCH, RayEmbedConfig
from .embed import EmbedReport
from .shards import next_shard_name

_logger = logging.getLogger(__name__)


def _decode(batch: dict[str, np.ndarray], size: int, resize: str = "squash") -> dict[str, np.ndarray]:
    """(id, path) rows -> (id, pixels uint8 (3, S, S)), as the local pipeline decodes them (Ray tasks)."""
    from .data import decode_square

    return {"id": batch["id"], "pixels": np.stack([decode_square(str(p), size, resize) for p in batch["path"]])}


class _Encode:
    """An actor holding one copy of the model: pixels -> float16 embeddings (and patch embeddings)."""

    def __init__(self, checkpoint: str, patches: bool, threads: int, precision: str = "fp32"):
        import os

        import torch

        from .devices import autocast, precision_uses_bf16
        from .models import load_checkpoint

        # Ray sets OMP_NUM_THREADS to the actor's 1 CPU; the forward pass is the job's heavy part, so on CPU
        # it gets the node's cores (shared among the node's actors; decoding tasks are light)
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1)))
        self.torch = torch
        self.model = load_checkpoint(Path(checkpoint), "cuda" if torch.cuda.is_available() else "cpu").eval()
        self.patches = patches
        self.bf16 = precision_uses_bf16(precision, self.model.device)
        self.autocast = autocast

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.torch.no_grad(), self.autocast(self.model.device, self.bf16):
            pixels = self.torch.from_numpy(np.ascontiguousarray(batch["pixels"]))
            if self.patches:
                vectors, patches = self.model.encode_image_and_patches(pixels)
                return {"id": batch["id"], "embedding": vectors.half().cpu().numpy(),
                        "patches": patches.half().cpu().numpy()}
            return {"id": batch["id"], "embedding": self.model.encode_image(pixels).half().cpu().numpy()}


def ray_embed_images(workdir: Workdir, checkpoint: Path, model_id: str, image_size: int,
                     items: list[tuple[int, str]], config: RayEmbedConfig | None = None,
                     report: EmbedReport | None = None) -> EmbedReport:
    """Embed the (image id, path) items not yet embedded by this model with a Ray Data job; write Parquet
    shards, then import them as the workdir's shards and catalog rows. Images are resized as the
    checkpoint's config says (`ModelSpec.resize`)."""
    import ray

    from .model_spec import load_spec, spec_patch_grid

    config = config or RayEmbedConfig()
    report = report or EmbedReport()
    with Catalog.open(workdir, read_only=True) as catalog:
        done = set(catalog.embedded_ids(model_id, "image"))
    todo = [(int(i), str(p)) for i, p in items if int(i) not in done]
    if not todo:
        return report
    resize = load_spec(checkpoint).resize  # decoding runs apart from the model: it needs the model's setting
    started = time.perf_counter()
    _quiet_ray(config.progress)
    own_ray = not ray.is_initialized()
    if own_ray:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **config.extra}
        if config.address is None and config.num_cpus is not None:
            options["num_cpus"] = config.num_cpus
        ray.init(address=config.address, **options)
    report.stage_seconds["ray_start"] = report.stage_seconds.get("ray_start", 0.0) + time.perf_counter() - started
    job_started = time.perf_counter()
    try:
        gpus = config.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        out_dir = workdir.model_embeddings_dir(model_id) / "ray" / time.strftime("%Y%m%d-%H%M%S")
        dataset = ray.data.from_items([{"id": i, "path": p} for i, p in todo])
        dataset = dataset.map_batches(_decode, fn_kwargs={"size": image_size, "resize": resize},
                                      batch_size=config.decode_batch_size)
        threads = config.torch_threads or (0 if gpus else max(1, int(ray.cluster_resources().get("CPU", 1))
                                                               // config.actors))
        dataset = dataset.map_batches(_Encode, fn_constructor_args=(str(checkpoint), config.patches, threads,
                                                                     config.precision),
                                      batch_size=config.batch_size or EMBED_BATCH["cuda" if gpus else "cpu"],
                                      num_gpus=gpus,
                                      compute=ray.data.ActorPoolStrategy(size=config.actors))
        dataset.write_parquet(str(out_dir))
        report.stage_seconds["ray_job"] = report.stage_seconds.get("ray_job", 0.0) + time.perf_counter() - job_started
    finally:
        if own_ray:
            ray.shutdown()
    t = time.perf_counter()
    grid = spec_patch_grid(load_spec(checkpoint)) if config.patches else None
    report.images += import_parquet_shards(workdir, model_id, out_dir, grid)
    report.stage_seconds["import"] = report.stage_seconds.get("import", 0.0) + time.perf_counter() - t
    report.seconds += time.perf_counter() - started
    return report


def _quiet_ray(progress: bool) -> None:
    """Ray Data logs each operator's state at INFO; keep its progress bars only when asked."""
    import ray.data

    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False


def import_parquet_shards(workdir: Workdir, model_id: str, folder: Path, patch_grid: tuple[int, int] | None) -> int:
    """Record the Parquet shards of a Ray job as the workdir's float16 shards and catalog rows (one shard
    per Parquet file, read one at a time); ids already embedded are skipped. `patch_grid`: the model's grid when
    the job stored patch embeddings, else None. Returns the images added."""
    patches = patch_grid is not None
    import pyarrow.parquet as pq

    image_dir, patch_dir = workdir.shards_dir(model_id, "image"), workdir.shards_dir(model_id, "patch")
    image_dir.mkdir(parents=True, exist_ok=True)
    patch_dir.mkdir(parents=True, exist_ok=True)
    added = 0
    for path in sorted(Path(folder).glob("*.parquet")):
        table = pq.read_table(path)
        if table.num_rows == 0:
            continue
        ids = table.column("id").to_numpy().astype(np.int64)
        with Catalog.open(workdir, read_only=True) as catalog:
            done = set(catalog.embedded_ids(model_id, "image"))
        keep = np.array([int(i) not in done for i in ids])
        if not keep.any():
            continue
        vectors = _tensor_column(table, "embedding")[keep]  # (n, D)
        name = next_shard_name(image_dir)
        if patches:  # (n, P, D)
            atomic_write_npy(patch_dir / name, _tensor_column(table, "patches")[keep].reshape(len(vectors), -1,
                                                                                            vectors.shape[1]))
        atomic_write_npy(image_dir / name, vectors)
        with Catalog.open(workdir) as catalog:
            catalog.record_embedding_set(model_id, "image", vectors.shape[1])
            if patches:
                catalog.record_embedding_set(model_id, "patch", vectors.shape[1], patch_grid)
            catalog.add_embedding_rows(model_id, "image", ids[keep].tolist(), name)
        added += int(keep.sum())
    return added


def _tensor_column(table: Any, name: str) -> np.ndarray:
    """A tensor column as float16 (rows, values per row). Ray stores each row's tensor flattened in a list
    (with its shape in an extension type that plain pyarrow does not know), so the flat values are read
    whatever the type says, and the caller restores the shape."""
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    if isinstance(column, pa.ExtensionArray):
        column = column.storage
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float16).reshape(len(column), -1)
