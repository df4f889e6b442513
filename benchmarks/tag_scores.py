"""Can a different kNN weighting, or kNN mixed with the probe, lift tag micro-F1 toward 1.5x the prior? (issue 21)

    python benchmarks/tag_scores.py --workdir W [--model M] [--repeats 5] [--out docs/results/x.json]

On val, every variant's threshold is chosen on one random half and scored on the other (then the reverse; averaged
over --repeats halvings, `tag_thresholds.held_out` with one global threshold), against the prior scored the same
way in the same run:
- `knn_K`: the default kNN scores (votes weighted by cosine + 1) for K = 11 ... 101;
- `knn_K_tauT`: votes weighted by exp((cosine - best cosine) / T), sharper the smaller T;
- `probe`: the linear probe (fitted on train as `groundex eval tags` fits it);
- `mix_A`: A x the best kNN row + (1 - A) x the probe.
A variant's K, T or A is not chosen on held-out images, so the best row carries that choice's optimism (small next
to the ratios asked for). docs/heads.md, "Thresholds".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tag_thresholds import _global, held_out, val_tag_data  # noqa: E402

from heads.tag_methods import (  # noqa: E402
    knn_scores,
    mean_average_precision,
    prior_scores,
    train_probe,
    weighted_votes,
)

KS = (11, 21, 31, 51, 101)
TAUS = (0.1, 0.05, 0.02)


def sharp_knn_scores(rows: np.ndarray, sims: np.ndarray, labels: np.ndarray, k: int, tau: float) -> np.ndarray:
    """Votes of the k nearest weighted by exp((cosine - the nearest one's) / tau). `rows` / `sims` as
    `heads.neighbours` gives them (-1 / -inf: no neighbour); a query without neighbours gets no votes."""
    if not 1 <= k <= rows.shape[1] or tau <= 0:
        raise ValueError(f"k must be in [1, {rows.shape[1]}] and tau > 0, got {k}, {tau}")
    r, s = rows[:, :k], sims[:, :k]
    present = r >= 0
    nearest = np.where(present[:, :1], s[:, :1], 0.0)
    return weighted_votes(r, np.where(present, np.exp((np.where(present, s, nearest) - nearest) / tau), 0.0), labels)


def main() -> None:
    args, data, val = val_tag_data(__doc__)
    train = data.train
    rows, sims = data.neighbours(val.vectors, val.image_ids, max(KS))
    scores = {"prior": prior_scores(data.vocabulary.prior(), len(val.image_ids))}
    for k in KS:
        scores[f"knn_{k}"] = knn_scores(rows, sims, train.labels, k)
        for tau in TAUS:
            scores[f"knn_{k}_tau{tau}"] = sharp_knn_scores(rows, sims, train.labels, k, tau)
    scores["probe"] = train_probe(train.vectors, train.labels, data.config.probe).scores(val.vectors)
    report: dict = {"model_id": data.model_id, "val_images": int(len(val.image_ids)),
                    "keywords": len(data.vocabulary), "repeats": args.repeats, "variants": {}}
    prior = held_out(_global, scores["prior"], val.labels, args.repeats)[0]

    def add(name: str, s: np.ndarray) -> None:
        micro, macro = held_out(_global, s, val.labels, args.repeats)
        report["variants"][name] = {"micro_f1": micro, "macro_f1": macro, "mAP": mean_average_precision(s, val.labels),
                                    "micro_vs_prior": round(micro / max(prior, 1e-9), 3)}
        print(f"{name:<20} micro-F1 {micro:5.1f} ({micro / max(prior, 1e-9):.2f}x the prior)  macro-F1 {macro:5.1f}  "
              f"mAP {report['variants'][name]['mAP']:5.1f}", flush=True)

    for name, s in scores.items():
        add(name, s)
    best = max((n for n in scores if n.startswith("knn")), key=lambda n: report["variants"][n]["micro_f1"])
    report["best_knn"] = best
    for a in (0.25, 0.5, 0.75):
        add(f"mix_{a}", a * scores[best] + (1 - a) * scores["probe"])
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
