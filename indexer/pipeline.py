"""`groundex index` as a function: embed a workdir with a model and bring its FAISS indexes up to date
(`groundex eval retrieval` is `indexer.evaluate.evaluate_retrieval`)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from warehouse import Catalog, InputError, Workdir, recorded_run

from .config import EmbedConfig
from .devices import precision_uses_bf16
from .embed import EmbedReport, embed_captions, embed_images
from .index import update_index
from .models import load_checkpoint


def _precision_used(precision: str, device: Any, engine: str, ray_config: Any) -> str:
    """What the images were embedded in: decided on this process's device, or (Ray) on each actor's."""
    if engine == "ray":
        wanted = ray_config.precision
        return f"{wanted} (decided on each Ray actor's device)" if wanted == "auto" else wanted
    return "bf16" if precision_uses_bf16(precision, device) else "fp32"


def index_workdir(workdir: Workdir, model_id: str | None = None, split: str | None = None,
                  factory: str | None = None, rebuild: bool = False, config: EmbedConfig | None = None,
                  device: str | None = None, engine: str = "local", ray_config: Any = None) -> dict[str, Any]:
    """Embed the images (global + patches) and captions of `split` (None: all) not yet embedded by the
    model (default: the newest), then bring its FAISS indexes up to date.

    `engine`: 'local' (this process and its decoding workers) or 'ray' (images as a Ray Data job,
    `indexer.distributed`, with `ray_config` a RayEmbedConfig; captions stay local, they are cheap)."""
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be local or ray, got {engine!r}")
    config = config or EmbedConfig()
    with Catalog.open(workdir, read_only=True) as catalog:
        info = catalog.model(model_id)
        images = catalog.image_rows(split)
        captions = catalog.caption_rows(split)
    if not images:
        raise InputError(f"no images in split {split!r}" if split else "the workdir has no images; ingest some first")
    model = load_checkpoint(info.path, device)
    run_config = {"model_id": info.id, "split": split, "factory": factory, "embed": asdict(config),
                  "engine": engine}
    with recorded_run(workdir, "index", run_config, info.id) as (_, result):
        started = time.perf_counter()
        report = EmbedReport()
        if engine == "ray":
            from .config import RayEmbedConfig
            from .distributed import ray_embed_images

            ray_config = ray_config or RayEmbedConfig(batch_size=config.batch_size, patches=config.patches,
                                                      precision=config.precision)
            ray_embed_images(workdir, info.path, info.id, model.image_size, images, ray_config, report)
        else:
            embed_images(workdir, model, info.id, images, config, report)
        embed_captions(workdir, model, info.id, captions, config, report)
        indexes = {}
        for kind in ("image", "caption", "patch") if config.patches else ("image", "caption"):
            built = update_index(workdir, info.id, kind, factory, rebuild)
            if built is not None:
                indexes[kind] = asdict(built)
        result.update(model_id=info.id, split=split, embedded_images=report.images,
                      precision=_precision_used(config.precision, model.device, engine, ray_config),
                      embedded_captions=report.captions, indexes=indexes,
                      stage_seconds={k: round(v, 2) for k, v in report.stage_seconds.items()},
                      seconds=round(time.perf_counter() - started, 2))
    workdir.update_manifest(artefacts={f"index:{info.id}:{k}": v for k, v in indexes.items()})
    return result
