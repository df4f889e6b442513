"""The learning-rate schedule shared by contrastive training (indexer/train.py) and the box head's fit
(indexer/box_fit.py)."""

from __future__ import annotations

import math

__all__ = ["lr_factor"]


def lr_factor(progress: float, warmup: float, floor: float) -> float:
    """Linear warmup to 1, then cosine to `floor`; `progress` in [0, 1]."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    t = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
