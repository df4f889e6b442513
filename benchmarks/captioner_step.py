"""Training step time of the default captioner decoder, fp32 against bf16 autocast, in one process.

    python benchmarks/captioner_step.py [--batch-size 64] [--steps 6] [--out docs/results/captioner_step.json]

Forward + backward + AdamW on a batch like the sample's (4 retrieved captions in the prompt, 65 image
tokens of width 256, a 4,000-entry vocabulary); median of the steps after 2 warm-up steps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from _report import emit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heads.caption_decoder import RACaptioner, encode_batch, train_tokenizer  # noqa: E402
from heads.config import CaptionerConfig  # noqa: E402

CAPTION = "a man in a red jacket walks his black dog along the busy street ."  # invented, 14 words


def step_seconds(bf16: bool, batch_size: int, steps: int) -> float:
    torch.manual_seed(0)
    config = CaptionerConfig()
    tokenizer = train_tokenizer([CAPTION] * 3, config.vocab_size)
    model = RACaptioner(config, config.vocab_size, image_dim=256)
    optimizer = torch.optim.AdamW(model.parameters(), config.lr)
    batch = encode_batch(tokenizer, [[CAPTION] * config.k] * batch_size, [CAPTION] * batch_size, config)
    features = torch.randn(batch_size, 65, 256)
    times = []
    for _ in range(steps + 2):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(features, **batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    fp32 = step_seconds(False, args.batch_size, args.steps)
    bf16 = step_seconds(True, args.batch_size, args.steps)
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "batch_size": args.batch_size, "fp32_step_s": round(fp32, 3), "bf16_step_s": round(bf16, 3),
              "bf16_speedup": round(fp32 / bf16, 2)}
    emit(result, args.out)


if __name__ == "__main__":
    main()
