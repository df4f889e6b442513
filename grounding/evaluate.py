"""Grounding evaluation on Flickr30k Entities annotations, and the choice of parameters on `val`.

Protocol: every phrase occurrence of the split whose entity has at least one box, given its image.
- pointing game: the heatmap's maximum falls inside any of the phrase's boxes;
- box_acc@0.5: the top predicted box has IoU >= 0.5 with any of its boxes ("any-box").
Baselines on the same phrases: the image centre as the point, the whole image as the box.
Figures are percentages.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from indexer.data import crop_window, pixel_cache
from indexer.models import GroundexModel, load_checkpoint
from indexer.phrase_region_loss import phrase_maps
from warehouse import Catalog, GroundingRow, InputError, Workdir, recorded_run

from .config import GroundingConfig, load_config
from .heatmap import boxes_from_map, in_window, iou, points, score_maps

_logger = logging.getLogger(__name__)

# What `tune` tries: the prior by pointing game, then the box threshold by box accuracy.
PRIOR_GRID = {"center_prior": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0), "prior_sigma": (0.2, 0.3, 0.45)}
THRESHOLD_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class SplitMaps:
    """Phrases with boxes of a split and their raw similarity maps (N, gh, gw)."""

    rows: list[GroundingRow]
    maps: np.ndarray
    windows: np.ndarray | None = None  # (N, 4) the part of each phrase's image its map covers; None: all of it


def split_maps(workdir: Workdir, model: GroundexModel, split: str, progress: bool = True) -> SplitMaps:
    """Embed the split's images (patches) and phrases with `model` and score every phrase on its image."""
    with Catalog.open(workdir, read_only=True) as catalog:
        rows = [r for r in catalog.grounding_rows(split) if r.boxes]
        items = catalog.image_rows(ids=sorted({r.image_id for r in rows}))
        details = catalog.image_details([i for i, _ in items]) if model.resize != "squash" else {}
    if not rows:
        raise InputError(f"split {split!r} has no phrases with boxes to evaluate grounding on "
                         "(it needs Flickr30k Entities annotations; `groundex info` shows the splits)")
    cache = pixel_cache(workdir.cache_dir, items, model.image_size, progress=progress, resize=model.resize)
    windows = None
    if details:  # the maps cover each image's crop window only
        windows = np.array([crop_window(details[r.image_id]["width"], details[r.image_id]["height"], model.resize)
                            for r in rows])
    return SplitMaps(rows, phrase_maps(model, cache, rows), windows)


def _hits(rows: Sequence[GroundingRow], maps: np.ndarray, config: GroundingConfig, with_boxes: bool = True,
          windows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per phrase: pointing hit, and (if `with_boxes`) top-box hit at IoU 0.5. `windows` (N, 4): the part
    of each image its map covers (a center-crop model's), None: the whole image."""
    raw, scored = score_maps(maps, config)
    pts = points(scored)
    if windows is not None:
        pts = in_window(pts, windows)
    pointing = np.array([_inside(p, r.boxes) for p, r in zip(pts, rows, strict=True)])
    if not with_boxes:
        return pointing, None
    tops = [boxes_from_map(raw[k], scored[k], config)[0] for k in range(len(rows))]
    if windows is not None:
        tops = [box.in_window(window) for box, window in zip(tops, windows, strict=True)]
    box_hits = np.array([iou(_tuple(top), np.array(r.boxes)).max() >= 0.5 for top, r in zip(tops, rows, strict=True)])
    return pointing, box_hits


def _tuple(box) -> tuple[float, float, float, float]:
    return box.x1, box.y1, box.x2, box.y2


def _inside(point: np.ndarray, boxes: Sequence[tuple[float, float, float, float]]) -> bool:
    x, y = float(point[0]), float(point[1])
    return any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes)


def _percent(hits: np.ndarray) -> float:
    return round(100.0 * float(np.mean(hits)), 2) if len(hits) else 0.0


def metrics(data: SplitMaps, config: GroundingConfig) -> dict[str, Any]:
    """The evaluation's figures for one configuration, overall and by phrase type, with baselines."""
    pointing, box_hits = _hits(data.rows, data.maps, config, windows=data.windows)
    center = np.array([_inside(np.array([0.5, 0.5]), r.boxes) for r in data.rows])
    whole = np.array([iou((0.0, 0.0, 1.0, 1.0), np.array(r.boxes)).max() >= 0.5 for r in data.rows])
    by_type: dict[str, dict[str, Any]] = {}
    for t in sorted({t for r in data.rows for t in r.types}):
        mask = np.array([t in r.types for r in data.rows])
        by_type[t] = {"phrases": int(mask.sum()), "pointing_game": _percent(pointing[mask]),
                      "box_acc@0.5": _percent(box_hits[mask]),
                      "center_pointing_game": _percent(center[mask]), "whole_image_box_acc@0.5": _percent(whole[mask])}
    return {"phrases": len(data.rows), "images": len({r.image_id for r in data.rows}),
            "pointing_game": _percent(pointing), "box_acc@0.5": _percent(box_hits), "by_type": by_type,
            "baselines": {"center": {"pointing_game": _percent(center)},
                          "whole_image": {"box_acc@0.5": _percent(whole)}}}


def tune(data: SplitMaps, base: GroundingConfig | None = None, split: str = "val") -> tuple[GroundingConfig,
                                                                                               dict[str, Any]]:
    """Choose the centre prior by pointing game, then the box threshold by box accuracy, on `data`.
    Returns the chosen config and every tried setting's figure."""
    base = base or GroundingConfig()
    trials: dict[str, Any] = {"pointing_game": [], "box_acc@0.5": []}
    best_prior, best_pointing = (base.center_prior, base.prior_sigma), -1.0
    for weight, sigma in itertools.product(PRIOR_GRID["center_prior"], PRIOR_GRID["prior_sigma"]):
        if weight == 0 and sigma != PRIOR_GRID["prior_sigma"][0]:
            continue  # without a prior, its width does not matter
        config = GroundingConfig(**{**asdict(base), "center_prior": weight, "prior_sigma": sigma})
        value = _percent(_hits(data.rows, data.maps, config, with_boxes=False, windows=data.windows)[0])
        trials["pointing_game"].append({"center_prior": weight, "prior_sigma": sigma, "pointing_game": value})
        if value > best_pointing:
            best_prior, best_pointing = (weight, sigma), value
    best_threshold, best_acc = base.threshold, -1.0
    for threshold in THRESHOLD_GRID:
        config = GroundingConfig(**{**asdict(base), "center_prior": best_prior[0], "prior_sigma": best_prior[1],
                                    "threshold": threshold})
        value = _percent(_hits(data.rows, data.maps, config, windows=data.windows)[1])
        trials["box_acc@0.5"].append({"threshold": threshold, "box_acc@0.5": value})
        if value > best_acc:
            best_threshold, best_acc = threshold, value
    chosen = GroundingConfig(**{**asdict(base), "center_prior": best_prior[0], "prior_sigma": best_prior[1],
                                "threshold": best_threshold, "tuned_on": split})
    return chosen, trials


def evaluate_grounding(workdir: Workdir, split: str, model_id: str | None = None, tune_params: bool = False,
                       device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Pointing game and box accuracy on `split`. With `tune_params`, first choose the parameters on this
    split and save them for the model (refused on 'test': choose on val)."""
    if tune_params and split == "test":
        raise InputError("parameters are chosen on val, never on test: run with --split val --tune")
    with Catalog.open(workdir, read_only=True) as catalog:
        info = catalog.model(model_id)
    model = load_checkpoint(info.path, device)
    data = split_maps(workdir, model, split, progress=progress)
    config = load_config(workdir, info.id)
    trials = None
    if tune_params:
        config, trials = tune(data, config, split)
        config.save(workdir.grounding_config_path(info.id))
        _logger.info("grounding parameters for %s tuned on %s: %s", info.id, split, config)
    result = {"split": split, "model_id": info.id, **metrics(data, config), "config": asdict(config)}
    if trials is not None:
        result["tuning"] = trials
    with recorded_run(workdir, "eval grounding", {"split": split, "tune": tune_params}, info.id) as (_, record):
        record.update(result)
    return result
