"""Grounding evaluation on Flickr30k Entities annotations, and the choice of parameters on `val`.

Protocol: every phrase occurrence of the split whose entity has at least one box, given its image.
- pointing game: the heatmap's maximum falls inside one of the phrase's boxes, with no pixel tolerance;
  `pointing_game_15px` also counts a point within 15 px of a box (Zhang et al., 2016, "Top-down neural attention
  by excitation backprop", whose protocol weakly supervised grounding papers follow);
- box accuracy at IoU 0.5 of the top predicted box, two ways (17% of Flickr30k phrases have several boxes):
  - `box_acc@0.5` ("any-box"): IoU >= 0.5 with any one of the phrase's boxes (MDETR's ANY-BOX protocol);
  - `box_acc@0.5_merged` ("merged-box"): IoU >= 0.5 with the box enclosing all of them (Plummer et al., 2015,
    the Flickr30k Entities protocol most phrase localization papers report; MDETR's MERGED-BOX).
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
from indexer.phrase_region_loss import phrase_maps_and_boxes
from warehouse import Catalog, GroundingRow, InputError, Workdir, recorded_run

from .config import GroundingConfig, load_config
from .heatmap import ScoredBox, boxes_from_map, cell_of, in_window, iou, points, score_maps

_logger = logging.getLogger(__name__)

# What `tune` tries: the prior by pointing game, then the box threshold by box accuracy.
PRIOR_GRID = {"center_prior": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0), "prior_sigma": (0.2, 0.3, 0.45)}
THRESHOLD_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


POINTING_TOLERANCE_PX = 15  # Zhang et al.'s pointing game: a point this close to a box is a hit


@dataclass
class SplitMaps:
    """Phrases with boxes of a split and their raw similarity maps (N, gh, gw)."""

    rows: list[GroundingRow]
    maps: np.ndarray
    windows: np.ndarray | None = None  # (N, 4) the part of each phrase's image its map covers; None: all of it
    sizes: np.ndarray | None = None    # (N, 2) each phrase's image width and height in pixels (the 15 px tolerance)
    head_scores: np.ndarray | None = None  # (N, gh, gw) the box head's scores of the cells for the row's phrase
    cell_boxes: np.ndarray | None = None   # (N, P, 4) the box head's box of every cell for the row's phrase; both None:
    #                                        a model without a box head (points and boxes come from the heatmap)


@dataclass
class Hits:
    """Per phrase, whether each figure counts it."""

    pointing: np.ndarray
    pointing_15px: np.ndarray | None = None  # needs the images' sizes
    box_any: np.ndarray | None = None        # needs the boxes
    box_merged: np.ndarray | None = None


def split_maps(workdir: Workdir, model: GroundexModel, split: str, progress: bool = True) -> SplitMaps:
    """Embed the split's images (patches) and phrases with `model` and score every phrase on its image."""
    with Catalog.open(workdir, read_only=True) as catalog:
        rows = [r for r in catalog.grounding_rows(split) if r.boxes]
        items = catalog.image_rows(ids=sorted({r.image_id for r in rows}))
        details = catalog.image_details([i for i, _ in items])
    if not rows:
        raise InputError(f"split {split!r} has no phrases with boxes to evaluate grounding on "
                         "(it needs Flickr30k Entities annotations; `groundex info` shows the splits)")
    cache = pixel_cache(workdir.cache_dir, items, model.image_size, progress=progress, resize=model.resize)
    sizes = np.array([(details[r.image_id]["width"], details[r.image_id]["height"]) for r in rows], dtype=np.float64)
    windows = None
    if model.resize != "squash":  # the maps cover each image's crop window only
        windows = np.array([crop_window(int(w), int(h), model.resize) for w, h in sizes])
    maps, head_scores, cell_boxes = phrase_maps_and_boxes(model, cache, rows)
    return SplitMaps(rows, maps, windows, sizes, head_scores, cell_boxes)


def _hits(data: SplitMaps, config: GroundingConfig, with_boxes: bool = True, head: bool = True) -> Hits:
    """Which phrases each figure counts: pointing (and within 15 px when the images' sizes are known), and (if
    `with_boxes`) the top box at IoU 0.5, any-box and merged-box. The point and the box come from the box head
    (its scores, and the box of the cell holding the point) when the model has one and `head`, else from the
    heatmap."""
    rows = data.rows
    use_head = head and data.cell_boxes is not None
    raw, scored = score_maps(data.head_scores if use_head else data.maps, config)
    pts = points(scored)
    if data.windows is not None:  # the part of each image its map covers (a center-crop model's)
        pts = in_window(pts, data.windows)
    hits = Hits(np.array([_inside(p, r.boxes) for p, r in zip(pts, rows, strict=True)]))
    if data.sizes is not None:
        hits.pointing_15px = np.array([_near(p, r.boxes, size) for p, r, size in zip(pts, rows, data.sizes,
                                                                                     strict=True)])
    if with_boxes and use_head:  # the top box is the box of the cell holding the point
        grid = data.maps.shape[1:]
        tops = [ScoredBox(*data.cell_boxes[k, cell_of(p, grid)].tolist(), 0.0) for k, p in enumerate(points(scored))]
    elif with_boxes:
        tops = [boxes_from_map(raw[k], scored[k], config)[0] for k in range(len(rows))]
    if with_boxes:
        if data.windows is not None:
            tops = [box.in_window(window) for box, window in zip(tops, data.windows, strict=True)]
        hits.box_any, hits.box_merged = _box_hits([_tuple(t) for t in tops], rows)
    return hits


def _box_hits(boxes: Sequence[tuple[float, float, float, float]], rows: Sequence[GroundingRow]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Whether each predicted box has IoU >= 0.5 with any of its phrase's boxes, and with their enclosing box."""
    any_box = np.array([iou(b, np.array(r.boxes)).max() >= 0.5 for b, r in zip(boxes, rows, strict=True)])
    merged = np.array([iou(b, np.array([merged_box(r.boxes)]))[0] >= 0.5 for b, r in zip(boxes, rows, strict=True)])
    return any_box, merged


def merged_box(boxes: Sequence[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """The box enclosing all of `boxes`: a phrase's ground truth in the merged-box protocol."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def _near(point: np.ndarray, boxes: Sequence[tuple[float, float, float, float]], size: np.ndarray,
          tolerance_px: float = POINTING_TOLERANCE_PX) -> bool:
    """Whether `point` (fractions of the image) lies within `tolerance_px` pixels of one of `boxes`."""
    w, h = float(size[0]), float(size[1])
    x, y = float(point[0]) * w, float(point[1]) * h
    for x1, y1, x2, y2 in boxes:
        dx = max(x1 * w - x, 0.0, x - x2 * w)
        dy = max(y1 * h - y, 0.0, y - y2 * h)
        if dx * dx + dy * dy <= tolerance_px * tolerance_px:
            return True
    return False


def _tuple(box) -> tuple[float, float, float, float]:
    return box.x1, box.y1, box.x2, box.y2


def _inside(point: np.ndarray, boxes: Sequence[tuple[float, float, float, float]]) -> bool:
    x, y = float(point[0]), float(point[1])
    return any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes)


def _percent(hits: np.ndarray) -> float:
    return round(100.0 * float(np.mean(hits)), 2) if len(hits) else 0.0


def metrics(data: SplitMaps, config: GroundingConfig) -> dict[str, Any]:
    """The evaluation's figures for one configuration, overall and by phrase type, with baselines."""
    has_head = data.cell_boxes is not None
    uses_head = has_head and config.boxes != "heatmap"
    hits = _hits(data, config, head=uses_head)
    rows = data.rows
    center_point = np.array([0.5, 0.5])
    center = Hits(np.array([_inside(center_point, r.boxes) for r in rows]))
    if data.sizes is not None:
        center.pointing_15px = np.array([_near(center_point, r.boxes, size) for r, size in zip(rows, data.sizes,
                                                                                             strict=True)])
    center.box_any, center.box_merged = _box_hits([(0.0, 0.0, 1.0, 1.0)] * len(rows), rows)  # the whole image

    def figures(h: Hits, mask: np.ndarray, prefix: str = "", points: bool = True, boxes: bool = True
                ) -> dict[str, float]:
        out = {}
        if points:
            out[f"{prefix}pointing_game"] = _percent(h.pointing[mask])
            if h.pointing_15px is not None:
                out[f"{prefix}pointing_game_15px"] = _percent(h.pointing_15px[mask])
        if boxes:
            out[f"{prefix}box_acc@0.5"] = _percent(h.box_any[mask])
            out[f"{prefix}box_acc@0.5_merged"] = _percent(h.box_merged[mask])
        return out

    other = _hits(data, config, head=not uses_head) if has_head else None  # the path not chosen, for comparison
    other_name = "heatmap_" if uses_head else "box_head_"  # with the same centre prior
    everything = np.ones(len(rows), dtype=bool)
    by_type: dict[str, dict[str, Any]] = {}
    for t in sorted({t for r in rows for t in r.types}):
        mask = np.array([t in r.types for r in rows])
        by_type[t] = {"phrases": int(mask.sum()), **figures(hits, mask),
                      **figures(center, mask, "center_", boxes=False),
                      **figures(center, mask, "whole_image_", points=False),
                      **(figures(other, mask, other_name) if other is not None else {})}
    return {"phrases": len(rows), "images": len({r.image_id for r in rows}),
            "phrases_with_several_boxes": sum(len(r.boxes) > 1 for r in rows),
            "boxes_from": "box head" if uses_head else "heatmap",
            **figures(hits, everything), "by_type": by_type,
            **({f"{other_name}path": figures(other, everything)} if other is not None else {}),
            "baselines": {"center": figures(center, everything, boxes=False),
                          "whole_image": figures(center, everything, points=False)}}


def tune(data: SplitMaps, base: GroundingConfig | None = None, split: str = "val") -> tuple[GroundingConfig,
                                                                                               dict[str, Any]]:
    """Choose the parameters on `data`: for the heatmap, the centre prior by pointing game, then the box threshold
    by box accuracy (any-box); for a model with a box head, its own centre prior by pointing game, then the path
    (head or heatmap) whose boxes score higher on the mean of any-box and merged-box. Returns the chosen config
    and every tried setting's figure."""
    base = base or GroundingConfig()
    trials: dict[str, Any] = {"pointing_game": [], "box_acc@0.5": []}

    def best_prior(head: bool, key: str) -> tuple[float, float]:
        best, best_pointing = (base.center_prior, base.prior_sigma), -1.0
        for weight, sigma in itertools.product(PRIOR_GRID["center_prior"], PRIOR_GRID["prior_sigma"]):
            if weight == 0 and sigma != PRIOR_GRID["prior_sigma"][0]:
                continue  # without a prior, its width does not matter
            config = GroundingConfig(**{**asdict(base), "center_prior": weight, "prior_sigma": sigma})
            value = _percent(_hits(data, config, with_boxes=False, head=head).pointing)
            trials[key].append({"center_prior": weight, "prior_sigma": sigma, "pointing_game": value})
            if value > best_pointing:
                best, best_pointing = (weight, sigma), value
        return best

    prior = best_prior(head=False, key="pointing_game")
    best_threshold, best_acc = base.threshold, -1.0
    for threshold in THRESHOLD_GRID:
        config = GroundingConfig(**{**asdict(base), "center_prior": prior[0], "prior_sigma": prior[1],
                                    "threshold": threshold})
        value = _percent(_hits(data, config, head=False).box_any)  # the threshold shapes the heatmap's boxes only
        trials["box_acc@0.5"].append({"threshold": threshold, "box_acc@0.5": value})
        if value > best_acc:
            best_threshold, best_acc = threshold, value
    chosen = GroundingConfig(**{**asdict(base), "center_prior": prior[0], "prior_sigma": prior[1],
                                "threshold": best_threshold, "boxes": "heatmap", "tuned_on": split})
    if data.cell_boxes is not None:  # a model with a box head: it serves where its boxes win on both protocols' mean
        trials["head_pointing_game"] = []
        head_prior = best_prior(head=True, key="head_pointing_game")
        with_head = GroundingConfig(**{**asdict(chosen), "center_prior": head_prior[0], "prior_sigma": head_prior[1],
                                       "boxes": "head"})
        head_hits, heat_hits = _hits(data, with_head, head=True), _hits(data, chosen, head=False)
        trials["boxes"] = {"box head": _percent(head_hits.box_any), "heatmap": _percent(heat_hits.box_any),
                           "box head merged": _percent(head_hits.box_merged),
                           "heatmap merged": _percent(heat_hits.box_merged)}
        head_mean = (_percent(head_hits.box_any) + _percent(head_hits.box_merged)) / 2
        heat_mean = (_percent(heat_hits.box_any) + _percent(heat_hits.box_merged)) / 2
        if head_mean > heat_mean:
            chosen = with_head
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
