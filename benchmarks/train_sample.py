"""Train on the real Flickr30k sample (train split) and report val recall: the recipe's quality figure.

    python benchmarks/train_sample.py --workdir /tmp/gw-sample --minutes 15 [--set lr=2e-3 --set batch_size=256]
                                      [--out docs/results/train_sample.json]

Ingests ../shared/data/flickr30k-sample into the workdir if needed, reports the untrained model's val
recall (the "base" row) and the trained model's, with the config, throughput and wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import warehouse  # noqa: E402
from indexer.config import TrainConfig  # noqa: E402
from indexer.models import PRESET_EXTRAS  # noqa: E402
from indexer.train import train  # noqa: E402
from warehouse import Catalog, IngestConfig, Workdir  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "flickr30k-sample"


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/groundex-sample"))
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="TrainConfig override")
    parser.add_argument("--out", type=Path, default=None, help="also write the result JSON here")
    parser.add_argument("--no-base", action="store_true", help="skip the untrained model's figures")
    parser.add_argument("--arch", action="append", default=[], metavar="KEY=JSON",
                        help="extra architecture key for the tiny preset, e.g. conv_stem=[32,64,128]")
    args = parser.parse_args()
    if not SAMPLE.is_dir():
        sys.exit(f"sample not found at {SAMPLE}")
    workdir = Workdir(args.workdir)
    with Catalog.open(workdir) as catalog:
        have = catalog.counts()["images"]
    if have == 0:
        warehouse.ingest_flickr30k(workdir, SAMPLE, config=IngestConfig(progress=False))
    overrides = dict(item.split("=", 1) for item in args.set)
    config = TrainConfig(minutes=args.minutes, epochs=1000, progress=False,
                         **{k: _value(v) for k, v in overrides.items()})
    base = TrainConfig(**{**dataclasses.asdict(config), "minutes": None, "epochs": 1, "lr": 0.0,
                          "box_head_epochs": 0})  # the init's recall only
    for item in args.arch:
        key, value = item.split("=", 1)
        PRESET_EXTRAS["groundex-tiny"][key] = json.loads(value)
    started = time.perf_counter()
    untrained = None if args.no_base else train(workdir, base)  # lr 0: changes nothing; val recall of the init
    trained = train(workdir, config)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "config": dataclasses.asdict(config),
        "arch": PRESET_EXTRAS["groundex-tiny"],
        "untrained_val": untrained.best["val"] if untrained else None,
        "trained_val": trained.best["val"],
        "model_id": trained.model_id,
        "epochs": trained.epochs, "steps": trained.steps, "train_seconds": trained.seconds,
        "best_epoch": trained.best["epoch"], "history": trained.history,
        "trainable_params": trained.trainable_params,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
