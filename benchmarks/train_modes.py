"""Fine-tuning modes from a base checkpoint: full vs locked-image (LiT) vs LoRA, on the real sample.

    python benchmarks/train_modes.py --workdir /tmp/groundex-sample [--base-minutes 5] [--minutes 5]
                                     [--out docs/results/train_modes.json]

With no pretrained weights reachable here, the base is the tiny model trained from scratch on the first
half of the sample's train split (`--base-minutes`); each mode then fine-tunes that base on the whole
train split for the same time (`--minutes`). Reported per mode: val recall, trainable parameters,
minutes, checkpoint size; and the base itself, un-fine-tuned, on the same val split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch
from _report import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import warehouse  # noqa: E402
from indexer.config import TrainConfig  # noqa: E402
from indexer.train import train  # noqa: E402
from warehouse import Catalog, IngestConfig, Workdir  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "flickr30k-sample"
# the defaults of TrainConfig are the recipe, less the box head: the modes are compared on retrieval, in minutes of
# tower training
RECIPE = {"progress": False, "box_head_epochs": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/groundex-sample"))
    parser.add_argument("--base-minutes", type=float, default=5.0)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workdir = Workdir(args.workdir)
    with Catalog.open(workdir) as catalog:
        if catalog.counts()["images"] == 0:
            warehouse.ingest_flickr30k(workdir, SAMPLE, config=IngestConfig(progress=False))
        n_train = catalog.counts()["splits"]["train"]
    base = train(workdir, TrainConfig(minutes=args.base_minutes, epochs=1000, max_train_images=n_train // 2,
                                      **RECIPE))
    rows = {"base (half of train, from scratch)": {
        "val": base.best["val"], "trainable_params": base.trainable_params, "minutes": round(base.seconds / 60, 2),
        "checkpoint_mb": round((Path(base.model_path) / "model.safetensors").stat().st_size / 2**20, 2)}}
    for mode in ("full", "locked-image", "lora"):
        result = train(workdir, TrainConfig(base=base.model_path, mode=mode, minutes=args.minutes, epochs=1000,
                                            **RECIPE))
        rows[mode] = {"val": result.best["val"], "trainable_params": result.trainable_params,
                      "total_params": result.total_params, "minutes": round(result.seconds / 60, 2),
                      "checkpoint_mb": round((Path(result.model_path) / "model.safetensors").stat().st_size / 2**20, 2),
                      "model_id": result.model_id}
        print(mode, json.dumps(rows[mode]), flush=True)
    out = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "recipe": RECIPE,
           "base_minutes": args.base_minutes, "minutes": args.minutes, "modes": rows,
           "config": dataclasses.asdict(TrainConfig(**RECIPE))}
    emit(out, args.out)


if __name__ == "__main__":
    main()
