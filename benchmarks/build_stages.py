"""End-to-end build time per stage: a fresh workdir built the way `groundex demo` builds it.

    python benchmarks/build_stages.py --workdir /tmp/bs-demo                      # the synthetic demo (defaults)
    python benchmarks/build_stages.py --workdir /tmp/bs-sample --flickr30k ../shared/data/flickr30k-sample \\
                                      --minutes 15 [--out docs/results/suite/build_stages_sample.json]

Stages, each timed on its own (wall seconds): ingest, train (the epoch count or the time budget given),
index (embed images with patches and captions, build the FAISS indexes), eval retrieval (val), eval grounding
(val, choosing the heatmap parameters), tags (evaluate kNN / probe / zero-shot on val, then tag every image
with kNN), caption train, caption eval (val, k = 0 and 1), caption all. The workdir must not exist: every
stage does its full work. Rates per image are reported next to the seconds, so the figures scale to other
collection sizes (see docs/scale.md, "100M images").
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit  # noqa: E402

import warehouse  # noqa: E402
from warehouse import Catalog, IngestConfig, SyntheticConfig, Workdir  # noqa: E402


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}. {result['source']}: {result['images']:,} images "
             f"({result['train_images']:,} train). Train: {result['train']}.", "",
             "| stage | seconds | ms per image | share |", "| --- | ---: | ---: | ---: |"]
    total = sum(result["stages"].values())
    for stage, seconds in result["stages"].items():
        lines.append(f"| {stage} | {seconds:.1f} | {1000 * seconds / result['images']:.1f} "
                     f"| {100 * seconds / total:.0f}% |")
    lines.append(f"| **total** | **{total:.1f}** | {1000 * total / result['images']:.1f} | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a new workdir (must not exist)")
    parser.add_argument("--flickr30k", type=Path, default=None, help="a Flickr30k Entities folder (default: the demo)")
    parser.add_argument("--n", type=int, default=SyntheticConfig.n, help="synthetic images (demo only)")
    parser.add_argument("--epochs", type=int, default=25, help="CLIP epochs (the demo's default)")
    parser.add_argument("--minutes", type=float, default=None, help="train for this long instead of --epochs")
    parser.add_argument("--caption-epochs", type=int, default=10, help="captioner epochs (the demo's default)")
    parser.add_argument("--out", type=Path, help="write JSON here (and the markdown table next to it)")
    args = parser.parse_args()
    if args.workdir.exists():
        raise SystemExit(f"{args.workdir} exists: the stages must run from scratch")

    from grounding import evaluate_grounding
    from heads.captioning import caption_workdir, evaluate_captions, train_captioner
    from heads.config import CaptionerConfig
    from heads.tagging import evaluate_tags, tag_workdir
    from indexer.config import TrainConfig
    from indexer.evaluate import evaluate_retrieval
    from indexer.pipeline import index_workdir
    from indexer.train import train

    workdir = Workdir(args.workdir)
    stages: dict[str, float] = {}

    def stage(name: str, work):
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        out = work()
        stages[name] = round(time.perf_counter() - started, 2)
        print(f"== {name}: {stages[name]:.1f} s", flush=True)
        return out

    if args.flickr30k:
        stage("ingest", lambda: warehouse.ingest_flickr30k(workdir, args.flickr30k, config=IngestConfig()))
    else:
        stage("ingest", lambda: warehouse.ingest_synthetic(workdir, SyntheticConfig(n=args.n), IngestConfig()))
    config = TrainConfig(epochs=1000, minutes=args.minutes) if args.minutes else TrainConfig(epochs=args.epochs)
    trained = stage("train", lambda: train(workdir, config))
    stage("index", lambda: index_workdir(workdir))
    stage("eval retrieval", lambda: evaluate_retrieval(workdir, "val"))
    stage("eval grounding", lambda: evaluate_grounding(workdir, "val", tune_params=True, progress=False))
    stage("tags", lambda: (evaluate_tags(workdir, "val", methods=("knn", "probe", "zeroshot")),
                           tag_workdir(workdir, "knn")))
    captioner = stage("caption train", lambda: train_captioner(workdir, CaptionerConfig(epochs=args.caption_epochs)))
    stage("caption eval", lambda: evaluate_captions(workdir, "val", captioner["captioner_id"], ks=(0, 1)))
    stage("caption all", lambda: caption_workdir(workdir, captioner["captioner_id"]))
    with Catalog.open(workdir, read_only=True) as catalog:
        counts = catalog.counts()
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, no GPU"
                   if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "source": f"Flickr30k Entities folder {args.flickr30k.name}" if args.flickr30k else "synthetic demo",
        "images": counts["images"], "train_images": counts["splits"].get("train", 0),
        "train": (f"{args.minutes} min budget" if args.minutes else f"{args.epochs} epochs")
                 + f", {trained.epochs} epochs run, model {trained.model_id}",
        "stages": stages,
    }
    emit(result, args.out, markdown(result))


if __name__ == "__main__":
    main()
