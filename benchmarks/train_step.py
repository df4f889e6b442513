"""Training step throughput of the tiny model under the CPU speed options (bf16, patch dropout, captions).

    python benchmarks/train_step.py [--batch-size 128] [--steps 6] [--out docs/results/train_step.json]

Times forward + backward + AdamW on synthetic tokens and pixels (median of the steps after 2 warm-up
steps), batch augmentation included, for each setting; reports images/s and captions/s and the ratio to
the fp32 baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from _report import emit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from open_clip.transformer import PatchDropout  # noqa: E402

from indexer.models import create_model  # noqa: E402
from indexer.tokenizer import WordTokenizer  # noqa: E402
from indexer.train import augment, clip_loss  # noqa: E402

SETTINGS = [
    {}, {"bf16": True}, {"patch_dropout": 0.5}, {"patch_dropout": 0.5, "bf16": True},
    {"per_image": 2}, {"per_image": 2, "patch_dropout": 0.5, "bf16": True},
    {"per_image": 5, "patch_dropout": 0.5, "bf16": True},
]


def step_rate(tokenizer, batch_size: int, steps: int, per_image: int = 1, patch_dropout: float = 0.0,
              bf16: bool = False) -> float:
    torch.manual_seed(0)
    model = create_model("tiny", tokenizer=tokenizer, device="cpu")
    if patch_dropout:
        model.clip.visual.patch_dropout = PatchDropout(patch_dropout)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    pixels = torch.randint(0, 256, (batch_size, 3, 80, 80), dtype=torch.uint8)
    tokens = torch.randint(4, tokenizer.vocab_size, (batch_size * per_image, tokenizer.context_length))
    tokens[:, 0], tokens[:, 20], tokens[:, 21:] = tokenizer.SOT, tokenizer.EOT, tokenizer.PAD
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        x, _ = augment(pixels, model.image_size, 0.6, 0.2, False, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            image, text, scale = model(x, tokens)
        loss = clip_loss(image.float(), text.float(), scale.float(), per_image)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    timed = sorted(times[2:])
    return batch_size / timed[len(timed) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tokenizer = WordTokenizer(list(WordTokenizer.SPECIALS) + [f"w{i}" for i in range(5000)], 32)
    rows = []
    for setting in SETTINGS:
        rate = step_rate(tokenizer, args.batch_size, args.steps, **setting)
        rows.append({"setting": setting or {"fp32": True}, "images_per_s": round(rate, 1),
                     "captions_per_s": round(rate * setting.get("per_image", 1), 1)})
        print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        row["ratio_to_fp32"] = round(row["images_per_s"] / rows[0]["images_per_s"], 2)
    result = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {torch.get_num_threads()} threads",
              "batch_size": args.batch_size, "rows": rows}
    emit(result, args.out)


if __name__ == "__main__":
    main()
