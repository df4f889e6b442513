"""The heatmap -> point and boxes parameters of grounding (`GroundingConfig`), chosen on val per model by
`groundex eval grounding --tune` and kept in the workdir (`load_config`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from warehouse import InputError, Workdir, atomic_write_json

DEFAULT_SHORTLIST = 200  # region search, two-stage: images shortlisted by the image index


@dataclass
class GroundingConfig:
    upsample: int = 4            # heatmap cells per patch cell per side (bilinear)
    center_prior: float = 0.0    # weight of the Gaussian centre prior added to the normalized heatmap (0: off)
    prior_sigma: float = 0.3     # the prior's standard deviation, as a fraction of the image's width / height
    threshold: float = 0.5       # box cells: normalized heat >= threshold (0..1)
    max_boxes: int = 3           # boxes per phrase and image
    min_box_area: float = 0.01   # extra boxes smaller than this fraction of the image are dropped
    head_threshold: float = 0.8  # box head: cells at or above this (normalized, with the prior) also draw boxes
    nms_iou: float = 0.5         # box head: a box overlapping a better one this much (IoU) is dropped
    boxes: str = "auto"          # head | heatmap | auto (the box head when the model has one): what points and draws
    #                              the boxes; tuning serves the one whose boxes score higher on val (the mean of
    #                              any-box and merged-box box acc@0.5)
    rank_global: float = 0.25    # region search ranks images by best patch cosine + rank_global x the image's global
    #                              cosine (0: the best patch alone); benchmarks/region_rank.py, docs/grounding.md
    tuned_on: str | None = None  # the split the parameters were chosen on (None: defaults)

    def __post_init__(self) -> None:
        if self.upsample < 1 or self.max_boxes < 1:
            raise InputError(f"upsample and max_boxes must be >= 1, got {self.upsample} and {self.max_boxes}")
        if self.boxes not in ("auto", "head", "heatmap"):
            raise InputError(f"boxes must be auto, head or heatmap, got {self.boxes!r}")
        for name in ("threshold", "head_threshold", "nms_iou"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        check_rank_global(self.rank_global)
        if self.center_prior < 0 or self.prior_sigma <= 0:
            raise InputError("center_prior must be >= 0 and prior_sigma > 0")

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> GroundingConfig:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise InputError(f"{path}: unreadable grounding config ({e})") from None


def check_rank_global(weight: float) -> float:
    """`weight` as a `rank_global` (a finite number >= 0), else an InputError naming it."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"rank_global must be a finite number >= 0, got {weight!r}")
    return value


def load_config(workdir: Workdir, model_id: str) -> GroundingConfig:
    """The parameters tuned for this model (`groundex eval grounding --tune`), else the defaults."""
    path = workdir.grounding_config_path(model_id)
    return GroundingConfig.load(path) if path.is_file() else GroundingConfig()
