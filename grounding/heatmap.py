"""From patch-phrase similarities to a heatmap, a point and boxes.

The method (parameters in `GroundingConfig`, chosen on `val` by `grounding.tune`):

1. **Heatmap.** The cosine similarity of the phrase embedding with every patch embedding, on the
   model's patch grid (8 x 8 for `tiny`): (gh, gw).
2. **Upsampling.** Bilinear, `upsample` times per side, in the model input's normalized coordinates.
   A "squash" model sees the whole frame, so a cell maps linearly onto the image; a "center-crop"
   model sees only the central square, so points and boxes are then placed in that crop window of the
   image (`in_window`, `ScoredBox.in_window`; the window is `indexer.data.crop_window`).
3. **Centre prior.** Min-max normalize to [0, 1], then add `center_prior` times a Gaussian centred on the
   image (sd `prior_sigma` of its size). People photograph what they talk about near the middle; the
   weight says how much to believe that against the patches (0: off).
4. **Point.** The maximum of that map (the pointing game's answer).
5. **Boxes.** Cells at or above `threshold` (on the normalized map) form connected components; the
   component holding the maximum gives the top box (its bounding box), further components the next
   ones, by peak, up to `max_boxes`, ignoring those smaller than `min_box_area` of the image.
   Each box's score is the highest raw cosine similarity inside it, so scores compare across images.
6. **The box head** (fitted by `groundex train` when the data has boxes, `indexer/box_head.py`), in place of 1 to
   5: its scores of the cells replace the cosine map in steps 2 to 4 (the point); the cell holding the point draws
   the top box; every other cell at or above `head_threshold` on the cell-level normalized scores (with the prior)
   draws one too, best first; boxes overlapping a better one by `nms_iou` or more are dropped (non-maximum
   suppression), up to `max_boxes`. Several instances ("two men") get a box each. Each box's score is the cosine
   similarity of its cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .config import GroundingConfig


@dataclass
class ScoredBox:
    """A box in [0, 1] of the image, with the best raw similarity inside it."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float

    def scaled(self, width: int, height: int) -> ScoredBox:
        return ScoredBox(self.x1 * width, self.y1 * height, self.x2 * width, self.y2 * height, self.score)

    def in_window(self, window: tuple[float, float, float, float]) -> ScoredBox:
        """A box in [0, 1] of the model's input -> [0, 1] of the image, whose `window` (x1, y1, x2, y2
        fractions) the input showed."""
        (x1, y1), (x2, y2) = in_window(np.array([[self.x1, self.y1], [self.x2, self.y2]]), np.asarray(window))
        return ScoredBox(float(x1), float(y1), float(x2), float(y2), self.score)


def in_window(points: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(N, 2) x, y in [0, 1] of the model's input -> [0, 1] of the image, given the crop window that
    input showed: one (4,) for all points or one per point (N, 4), each (x1, y1, x2, y2) in [0, 1]."""
    windows = np.asarray(windows, dtype=np.float64)
    origin, span = windows[..., :2], windows[..., 2:] - windows[..., :2]  # (N, 2) or (2,)
    return origin + np.asarray(points, dtype=np.float64) * span


def upsample(maps: np.ndarray, factor: int) -> np.ndarray:
    """(N, gh, gw) -> (N, gh * factor, gw * factor), bilinear on cell centres."""
    if factor == 1:
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)[:, 0].numpy()


def _normalize(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return (maps - low) / np.where(span > 0, span, 1)


def center_prior(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """A Gaussian bump (h, w) peaking at 1 in the middle; sigma as a fraction of each side."""
    h, w = shape
    y = (np.arange(h) + 0.5) / h - 0.5
    x = (np.arange(w) + 0.5) / w - 0.5
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma ** 2)).astype(np.float32)


def score_maps(maps: np.ndarray, config: GroundingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Raw cosine maps (N, gh, gw) -> (upsampled raw maps, normalized maps with the prior), each (N, H, W)."""
    raw = upsample(maps, config.upsample)
    scored = _normalize(raw)
    if config.center_prior > 0:
        scored = _normalize(scored + config.center_prior * center_prior(raw.shape[1:], config.prior_sigma))
    return raw, scored


def points(scored: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, 2) x, y in [0, 1]: the centre of each map's maximal cell."""
    n, h, w = scored.shape
    flat = scored.reshape(n, -1).argmax(axis=1)
    return np.stack([(flat % w + 0.5) / w, (flat // w + 0.5) / h], axis=1)


def boxes_from_map(raw: np.ndarray, scored: np.ndarray, config: GroundingConfig) -> list[ScoredBox]:
    """One upsampled map (H, W) -> boxes in [0, 1], the one around the maximum first."""
    h, w = scored.shape
    labels, n = ndimage.label(scored >= config.threshold)
    if n == 0:  # a flat map: nothing stands out, the whole image is the answer
        return [ScoredBox(0.0, 0.0, 1.0, 1.0, float(raw.max()))]
    peak = np.unravel_index(int(scored.argmax()), scored.shape)
    first = labels[peak]
    slices = ndimage.find_objects(labels)
    peaks = ndimage.maximum(scored, labels, index=np.arange(1, n + 1))
    order = sorted(range(1, n + 1), key=lambda c: (c != first, -peaks[c - 1]))
    out: list[ScoredBox] = []
    for c in order:
        ys, xs = slices[c - 1]
        box = ScoredBox(xs.start / w, ys.start / h, xs.stop / w, ys.stop / h,
                  float(raw[ys, xs][labels[ys, xs] == c].max()))
        if out and (box.x2 - box.x1) * (box.y2 - box.y1) < config.min_box_area:
            continue
        out.append(box)
        if len(out) == config.max_boxes:
            break
    return out


def iou(box: tuple[float, float, float, float], boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each row of boxes (M, 4)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def cell_of(point: np.ndarray, grid: tuple[int, int]) -> int:
    """The row-major index of the patch cell holding `point` (x, y in [0, 1] of the model's input)."""
    gh, gw = grid
    return min(int(point[1] * gh), gh - 1) * gw + min(int(point[0] * gw), gw - 1)


def boxes_from_head(cell_boxes: np.ndarray, scores: np.ndarray, maps: np.ndarray, top: int, config: GroundingConfig
                    ) -> list[ScoredBox]:
    """The box head's boxes for one phrase on one image (step 6): cell_boxes (P, 4) each cell's box in [0, 1] of the
    model's input, scores (gh, gw) the head's scores of the cells, maps (gh, gw) the raw cosine map, `top` the cell
    holding the point. Best first."""
    raw = maps.reshape(-1)
    _, scored = score_maps(scores[None], GroundingConfig(**{**config.__dict__, "upsample": 1}))
    scored = scored.reshape(-1)
    others = [int(c) for c in np.argsort(-scored, kind="stable") if scored[c] >= config.head_threshold and c != top]
    out: list[ScoredBox] = []
    for cell in [top, *others]:
        box = cell_boxes[cell]
        if any(_overlap(box, (b.x1, b.y1, b.x2, b.y2)) >= config.nms_iou for b in out):
            continue
        out.append(ScoredBox(float(box[0]), float(box[1]), float(box[2]), float(box[3]), float(raw[cell])))
        if len(out) == config.max_boxes:
            break
    return out


def _overlap(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return float(ix * iy / union) if union > 0 else 0.0
