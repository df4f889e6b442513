"""Caption decoding settings on one trained captioner: quality, repetition and time.

    python benchmarks/caption_decoding.py --workdir W [--captioner C] [--split val] [--out docs/results/x.json]

The captioner's val images are captioned with its retrieved captions under each setting: beam width, and
whether a caption may repeat a bigram ending in a content word (`CaptionerConfig.no_repeat_bigrams`: "a man is
to the right of a man"; a trigram never repeats in any setting). Per setting: BLEU-4, CIDEr, the share of
captions that repeat a content bigram (`repeats_content_bigram`, words outside `FUNCTION_WORDS`), the same
share among the split's human captions, and seconds. Ratios are against the first setting (beams 3, bigrams
allowed: the decoding before issue 21), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heads.caption_decoder import FUNCTION_WORDS  # noqa: E402
from heads.caption_metrics import caption_metrics  # noqa: E402
from heads.captioning import Captioner  # noqa: E402
from warehouse import Workdir  # noqa: E402

SETTINGS = [(3, False), (3, True), (5, True), (8, True)]  # (beams, no_repeat_bigrams)


def repeats_content_bigram(caption: str) -> bool:
    """Whether a bigram whose second word is not a function word occurs twice."""
    words = re.findall(r"[a-z]+", caption.lower())
    seen: set[tuple[str, str]] = set()
    for pair in zip(words, words[1:], strict=False):
        if pair[1] in FUNCTION_WORDS:
            continue
        if pair in seen:
            return True
        seen.add(pair)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--captioner", default=None)
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    captioner = Captioner(Workdir(args.workdir), args.captioner)
    image_ids, examples = captioner.data.split_examples(args.split)
    references: list[list[str]] = [[] for _ in image_ids]
    for row, text in examples:
        references[row].append(text)
    vectors, inputs = captioner.data.image_inputs(image_ids, captioner.config, captioner.image_processor)
    retrieved = captioner.data.retrieve(vectors, image_ids, captioner.config.k)
    human = float(np.mean([repeats_content_bigram(t) for refs in references for t in refs]))
    report: dict = {"captioner_id": captioner.id, "split": args.split, "images": int(len(image_ids)),
                    "human_repeats_content_bigram_pct": round(100 * human, 1), "settings": []}
    base = None
    for beams, no_repeat in SETTINGS:
        captioner.config.no_repeat_bigrams = no_repeat
        started = time.perf_counter()
        captions = captioner.caption_inputs(inputs, retrieved, beams=beams)
        seconds = time.perf_counter() - started
        metrics = caption_metrics(captions, references)
        row = {"beams": beams, "no_repeat_bigrams": no_repeat, "BLEU-4": metrics["BLEU-4"], "CIDEr": metrics["CIDEr"],
               "repeats_content_bigram_pct": round(100 * float(np.mean([repeats_content_bigram(c) for c in captions])),
                                                   1),
               "seconds": round(seconds, 1), "examples": captions[:5]}
        base = base or row
        row["CIDEr_ratio"] = round(row["CIDEr"] / max(base["CIDEr"], 1e-9), 3)
        row["time_ratio"] = round(row["seconds"] / max(base["seconds"], 1e-9), 2)
        report["settings"].append(row)
        print(f"beams {beams} no_repeat_bigrams {no_repeat!s:<5}  BLEU-4 {row['BLEU-4']:5.1f}  "
              f"CIDEr {row['CIDEr']:5.1f} "
              f"({row['CIDEr_ratio']:.3f}x)  repeats {row['repeats_content_bigram_pct']:4.1f}%  {seconds:5.1f} s "
              f"({row['time_ratio']:.2f}x)", flush=True)
    print(f"human captions of the split repeating a content bigram: {report['human_repeats_content_bigram_pct']}%")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
