"""Tag threshold rules on val, each scored on images it was not chosen on.

    python benchmarks/tag_thresholds.py --workdir W [--model M] [--repeats 5] [--out docs/results/x.json]

For the prior, kNN and the probe (fitted on train as `groundex eval tags` fits them), val is split in random
halves; a rule is chosen on one half and scored on the other, then the reverse, and micro-F1 / macro-F1 are
averaged over --repeats random halvings. Rules:
- `global`: one threshold for every tag (the default);
- `per_tag_N`: each tag with >= N positive images on the choosing half gets its own threshold (`per_tag_thresholds`),
  the others the global one, for N = 5, 15, 30;
- `top_n`: every image's n best-scoring tags, n chosen for micro-F1.
Ratios are against `global`, in the same run (docs/heads.md, "Thresholds").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heads.config import TaggingConfig  # noqa: E402
from heads.tag_methods import best_threshold, f1_scores, per_tag_thresholds, prior_scores  # noqa: E402
from heads.tagging import Labelled, TagData, fit_tagger  # noqa: E402
from warehouse import Workdir  # noqa: E402


def _global(scores: np.ndarray, labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    threshold, _ = best_threshold(scores, labels)
    return query >= threshold


def _per_tag(min_positives: int):
    def rule(scores: np.ndarray, labels: np.ndarray, query: np.ndarray) -> np.ndarray:
        threshold, _ = best_threshold(scores, labels)
        return query >= per_tag_thresholds(scores, labels, threshold, min_positives=min_positives)
    return rule


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    predicted = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(predicted, np.argsort(-scores, axis=1)[:, :n], True, axis=1)
    return predicted


def _top_n(scores: np.ndarray, labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    best = max(range(1, 16), key=lambda n: f1_scores(_top(scores, n), labels)[0])
    return _top(query, best)


RULES = {"global": _global, "per_tag_5": _per_tag(5), "per_tag_15": _per_tag(15), "per_tag_30": _per_tag(30),
         "top_n": _top_n}


def held_out(rule, scores: np.ndarray, labels: np.ndarray, repeats: int) -> tuple[float, float]:
    """(micro-F1, macro-F1) of `rule` chosen on one half of the images and scored on the other, averaged."""
    results = []
    for seed in range(repeats):
        order = np.random.default_rng(seed).permutation(len(scores))
        predicted = np.zeros(scores.shape, dtype=bool)
        for part in np.array_split(order, 2):
            rest = np.setdiff1d(order, part)
            predicted[part] = rule(scores[rest], labels[rest], scores[part])
        results.append(f1_scores(predicted, labels))
    micro, macro = np.mean(results, axis=0)
    return round(float(micro), 2), round(float(macro), 2)


def val_tag_data(description: str) -> tuple[argparse.Namespace, TagData, Labelled]:
    """The command line shared by the tag benchmarks (--workdir, --model, --repeats, --out), the workdir's tag data
    and its val split."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=5, help="random halvings of val")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    args = parser.parse_args()
    data = TagData(Workdir(args.workdir), args.model, TaggingConfig())
    return args, data, data.split("val")


def main() -> None:
    args, data, val = val_tag_data(__doc__)
    scores = {"prior": prior_scores(data.vocabulary.prior(), len(val.image_ids))}
    for method in ("knn", "probe"):
        scores[method] = fit_tagger(data, method, val).scores(data, val.vectors, val.image_ids, own_captions=False)
    report: dict = {"model_id": data.model_id, "val_images": int(len(val.image_ids)),
                    "keywords": len(data.vocabulary), "repeats": args.repeats, "methods": {}}
    for method, s in scores.items():
        rows = {name: held_out(rule, s, val.labels, args.repeats) for name, rule in RULES.items()}
        base = rows["global"]
        report["methods"][method] = {name: {"micro_f1": r[0], "macro_f1": r[1],
                                            "micro_ratio": round(r[0] / max(base[0], 1e-9), 3)}
                                     for name, r in rows.items()}
        print(f"{method:<6} " + "  ".join(f"{name} {r[0]:.1f}/{r[1]:.1f}" for name, r in rows.items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
