"""Embedding throughput: the pipeline (local and as a Ray Data job) vs the model's bare forward pass vs a
naive per-image loop.

    python benchmarks/embed_throughput.py --workdir W [--images 2000] [--out docs/results/embed_throughput.json]

All three use the same model (the workdir's newest) on the same images in one process:
- bare forward: pixels already decoded and resized in memory, batches of 256 through the model (the ceiling);
- pipeline: `indexer.embed.embed_images` from files (decode on worker processes, batches, float16 shards);
- ray: `indexer.distributed.ray_embed_images` on a local Ray with this machine's cores (Ray Data: decode
  tasks, one encoder actor, Parquet shards, then imported), timed with Ray's start-up and without it;
- naive: for each image, PIL open + resize + forward one at a time.
Figures are images/s and ratios to the bare forward pass.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _report import emit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.config import EmbedConfig, RayEmbedConfig  # noqa: E402
from indexer.data import decode_square  # noqa: E402
from indexer.embed import embed_images  # noqa: E402
from indexer.models import load_checkpoint  # noqa: E402
from warehouse import Catalog, Workdir, load_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--naive-images", type=int, default=300, help="the naive loop is slow: time fewer")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine (needs the [scale] extra)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workdir = Workdir(args.workdir)
    with Catalog.open(workdir, read_only=True) as catalog:
        info = catalog.model()
        items = catalog.image_rows()[: args.images]
    model = load_checkpoint(info.path)
    device = model.device
    n = len(items)

    pixels = torch.from_numpy(np.stack([decode_square(p, model.image_size, model.resize) for _, p in items]))
    with torch.no_grad():
        model.encode_image_and_patches(pixels[:8])  # warm up
        t = time.perf_counter()
        for s in range(0, n, 256):
            model.encode_image_and_patches(pixels[s:s + 256])
        if device.type == "cuda":
            torch.cuda.synchronize()
        bare = n / (time.perf_counter() - t)

    scratch = Workdir(Path(args.workdir) / ".bench-embed")
    shutil.rmtree(scratch.root, ignore_errors=True)
    shutil.copytree(workdir.root, scratch.root, ignore=shutil.ignore_patterns("embeddings", "indexes", "cache",
                                                                                 "training", "datasets"))
    try:
        t = time.perf_counter()
        # a fresh id: the copied catalog already records this model's embeddings, which would be skipped
        report = embed_images(scratch, model, f"bench-{info.id}", items, EmbedConfig(progress=False))
        assert report.images == n, f"embedded {report.images} of {n}"
        pipeline = n / (time.perf_counter() - t)
        ray_figures = None
        if not args.no_ray:
            from indexer.distributed import ray_embed_images

            t = time.perf_counter()
            ray_report = ray_embed_images(scratch, info.path, f"bench-ray-{info.id}", model.image_size,
                                          items, RayEmbedConfig(progress=False))
            assert ray_report.images == n, f"Ray embedded {ray_report.images} of {n}"
            ray_total = n / (time.perf_counter() - t)
            ray_figures = {"with_startup": round(ray_total, 1),
                           "job_only": round(n / ray_report.stage_seconds["ray_job"], 1)}
    finally:
        shutil.rmtree(scratch.root, ignore_errors=True)

    m = min(args.naive_images, n)
    with torch.no_grad():
        t = time.perf_counter()
        for _, path in items[:m]:
            model.encode_image_and_patches(model.pixels_from_images([load_image(path)]))
        naive = m / (time.perf_counter() - t)

    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {device}",
        "model": info.id, "model_name": info.info["name"], "images": n,
        "images_per_s": {"bare_forward": round(bare, 1), "pipeline": round(pipeline, 1), "naive_loop": round(naive, 1),
                         **({"ray": ray_figures} if ray_figures else {})},
        "ratio_to_bare": {"pipeline": round(pipeline / bare, 3), "naive_loop": round(naive / bare, 3),
                          **({"ray_with_startup": round(ray_figures["with_startup"] / bare, 3),
                              "ray_job_only": round(ray_figures["job_only"] / bare, 3)} if ray_figures else {})},
        "pipeline_stage_seconds": {k: round(v, 2) for k, v in report.stage_seconds.items()},
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
