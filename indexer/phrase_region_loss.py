"""Fine-grained contrastive training: phrases against the patches inside their boxes.

Global InfoNCE teaches the pooled image token; nothing in it asks a patch token to mean what lies
under it. This objective uses Flickr30k Entities phrases and boxes (any dataset in that format):

- **Region-pooled InfoNCE.** Each sampled phrase gets a region embedding: the mean of its image's
  patch embeddings weighted by how much of each patch cell its box(es) cover (after the batch's random
  crops), L2-normalized. Regions and phrase texts of the whole batch are contrasted symmetrically;
  the same text elsewhere in the batch ("a man") also counts as a positive, so duplicates are not
  pushed apart.
- **Patch localization.** Within its image, a phrase's similarities to the patches are a softmax;
  the loss is -log of the probability mass on the covered patches (multiple-instance: some patch of
  the box must win). This is what the pointing game measures.

Phrases of entities without boxes are handled by kind: `notvisual` phrases (entity 0) and `nobndbox`
entities are left out; `scene` entities ("the beach") take the whole frame as their region, so they
join the InfoNCE but not the localization term (a uniform target teaches nothing about where).
Regions whose boxes a crop cut away (less than `min_cover` of a patch left) are dropped for that step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from warehouse import GroundingRow

from .data import PixelCache
from .models import GroundexModel

WHOLE_FRAME = (0.0, 0.0, 1.0, 1.0)


@dataclass
class RegionBatch:
    """The phrases sampled for one batch of images."""

    image_index: torch.Tensor  # (R,) row of each region's image in the batch
    text_ids: torch.Tensor     # (R,) index into RegionTable.tokens (equal ids: equal texts)
    boxes: torch.Tensor        # (NB, 4) x1, y1, x2, y2 in [0, 1] of the (uncropped) image
    box_region: torch.Tensor   # (NB,) the region each box belongs to
    localize: torch.Tensor     # (R,) bool: take part in the localization term (False for scene regions)


class RegionTable:
    """Groundable entities of the training images: per image, per entity, its boxes and phrase texts."""

    def __init__(self, rows: Sequence[GroundingRow], tokenize: Callable[[list[str]], torch.Tensor]):
        texts: dict[str, int] = {}
        entities: dict[tuple[int, int], dict] = {}
        for row in rows:
            if row.entity_id == 0 or not (row.boxes or row.scene):
                continue  # notvisual, or an entity that cannot be localized
            key = (row.image_id, row.entity_id)
            entry = entities.setdefault(key, {"boxes": row.boxes or [WHOLE_FRAME], "scene": not row.boxes,
                                              "texts": []})
            entry["texts"].append(texts.setdefault(row.text.strip().lower(), len(texts)))
        self.texts = list(texts)
        self.tokens = tokenize(self.texts) if self.texts else torch.zeros(0, 1, dtype=torch.long)
        self.by_image: dict[int, list[dict]] = {}
        for (image_id, _), entry in sorted(entities.items()):
            self.by_image.setdefault(image_id, []).append(entry)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_image.values())

    def sample(self, image_ids: Sequence[int], per_image: int, rng: np.random.Generator) -> RegionBatch:
        """Up to `per_image` distinct entities per image, each with one of its phrase texts at random."""
        image_index, text_ids, boxes, box_region, localize = [], [], [], [], []
        for b, image_id in enumerate(np.asarray(image_ids).tolist()):
            entries = self.by_image.get(image_id, [])
            chosen = rng.choice(len(entries), size=min(per_image, len(entries)), replace=False) if entries else []
            for e in chosen:
                entry = entries[int(e)]
                r = len(image_index)
                image_index.append(b)
                text_ids.append(int(rng.choice(entry["texts"])))
                boxes.extend(entry["boxes"])
                box_region.extend([r] * len(entry["boxes"]))
                localize.append(not entry["scene"])
        return RegionBatch(torch.tensor(image_index, dtype=torch.long), torch.tensor(text_ids, dtype=torch.long),
                           torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                           torch.tensor(box_region, dtype=torch.long), torch.tensor(localize, dtype=torch.bool))


def boxes_in_crop(boxes: torch.Tensor, crops: torch.Tensor, box_image: torch.Tensor, clip: bool = True
                  ) -> torch.Tensor:
    """Boxes (NB, 4) in [0, 1] of their image, seen through their image's crop (`crops` (B, 4), x1, y1, x2, y2 in the
    image's units; a flip is a crop with x2 < x1), as x1 <= x2, y1 <= y2 in the crop's frame; `clip`: cut to it (a
    box the crop cut away becomes empty)."""
    crop = crops[box_image]  # (NB, 4)
    x1 = (boxes[:, 0] - crop[:, 0]) / (crop[:, 2] - crop[:, 0])
    x2 = (boxes[:, 2] - crop[:, 0]) / (crop[:, 2] - crop[:, 0])
    y1 = (boxes[:, 1] - crop[:, 1]) / (crop[:, 3] - crop[:, 1])
    y2 = (boxes[:, 3] - crop[:, 1]) / (crop[:, 3] - crop[:, 1])
    out = torch.stack([torch.minimum(x1, x2), y1, torch.maximum(x1, x2), y2], dim=1)  # a flipped crop mirrors it
    return out.clamp(0, 1) if clip else out


def patch_coverage(boxes: torch.Tensor, box_region: torch.Tensor, n_regions: int, crops: torch.Tensor,
                   box_image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each patch cell covered by each region's boxes, seen through its image's crop.

    boxes (NB, 4) in [0, 1] of the image; crops (B, 4) the crop of each image in the same units
    (x1, y1, x2, y2; a flip is a crop with x2 < x1); box_image (NB,) image row of each box.
    Returns (R, gh * gw) in [0, 1], row-major like the patch tokens; several boxes of a region: max."""
    gh, gw = grid
    x1, y1, x2, y2 = boxes_in_crop(boxes, crops, box_image, clip=False).unbind(dim=1)
    xs = torch.arange(gw + 1, dtype=boxes.dtype, device=boxes.device) / gw  # cell edges
    ys = torch.arange(gh + 1, dtype=boxes.dtype, device=boxes.device) / gh
    cover_x = (torch.minimum(x2[:, None], xs[None, 1:]) - torch.maximum(x1[:, None], xs[None, :-1])).clamp(min=0) * gw
    cover_y = (torch.minimum(y2[:, None], ys[None, 1:]) - torch.maximum(y1[:, None], ys[None, :-1])).clamp(min=0) * gh
    per_box = (cover_y[:, :, None] * cover_x[:, None, :]).reshape(len(boxes), gh * gw)  # (NB, P)
    out = torch.zeros(n_regions, gh * gw, dtype=boxes.dtype, device=boxes.device)
    return out.scatter_reduce_(0, box_region[:, None].expand_as(per_box), per_box, reduce="amax", include_self=True)


def region_losses(patches: torch.Tensor, kept: torch.Tensor | None, coverage: torch.Tensor,
                  image_index: torch.Tensor, texts: torch.Tensor, text_ids: torch.Tensor, localize: torch.Tensor,
                  logit_scale: torch.Tensor, min_cover: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(region InfoNCE, patch localization, regions used).

    patches (B, K, D) L2-normalized patch embeddings of the kept patches, kept (B, K) their cell
    indices (None: all P cells, K = P); coverage (R, P); image_index (R,); texts (R, D) L2-normalized
    phrase embeddings; text_ids (R,) equal for equal texts; localize (R,) bool."""
    region_patches = patches[image_index]  # (R, K, D)
    if kept is not None:
        coverage = coverage.gather(1, kept[image_index])  # (R, K): coverage of the patches that were kept
    valid = coverage.sum(dim=1) >= min_cover
    zero = patches.sum() * 0  # keeps the graph when nothing in the batch can be used
    if int(valid.sum()) < 2:
        return zero, zero, int(valid.sum())
    coverage, region_patches = coverage[valid], region_patches[valid]
    texts, text_ids, localize = texts[valid], text_ids[valid], localize[valid]

    regions = F.normalize(torch.einsum("rk,rkd->rd", coverage, region_patches), dim=-1)  # (R, D)
    logits = logit_scale * regions @ texts.T  # (R, R)
    positive = text_ids[:, None] == text_ids[None, :]
    nce = (_multi_positive(logits, positive) + _multi_positive(logits.T, positive.T)) / 2

    # a region covering (nearly) every kept patch says nothing about where: no localization term
    localize = localize & (coverage < 0.5).any(dim=1)
    if localize.any():
        sims = logit_scale * torch.einsum("rkd,rd->rk", region_patches[localize], texts[localize])  # (L, K)
        inside = coverage[localize].clamp(min=1e-6).log()
        loc = -(torch.logsumexp(sims.log_softmax(dim=1) + inside, dim=1)).mean()
    else:
        loc = zero
    return nce, loc, int(valid.sum())


def _multi_positive(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """-log of the softmax mass on each row's positives."""
    log_probs = logits.log_softmax(dim=1)
    return -torch.logsumexp(log_probs.masked_fill(~positive, float("-inf")), dim=1).mean()


def phrase_maps(model: GroundexModel, cache: PixelCache, rows: Sequence[GroundingRow], batch_size: int = 256
                ) -> np.ndarray:
    """Cosine similarity of each row's phrase with every patch of its image: (N, gh, gw) float32."""
    return phrase_maps_and_boxes(model, cache, rows, batch_size, boxes=False)[0]


@torch.no_grad()
def phrase_maps_and_boxes(model: GroundexModel, cache: PixelCache, rows: Sequence[GroundingRow],
                          batch_size: int = 256, boxes: bool = True
                          ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """`phrase_maps`, and (when the model has a box head and `boxes`) the head's outputs for each row's phrase:
    its scores (N, gh, gw) (where it points) and every cell's box (N, gh * gw, 4) in [0, 1] of the model's input
    (indexer/box_head.py); else None, None.

    Images and distinct phrase texts are embedded once each; the model's train/eval modes are restored."""
    head = model.box_head if boxes else None
    if not rows:
        return np.zeros((0, *model.patch_grid), dtype=np.float32), None, None
    modes = [m.training for m in model.modules()]
    model.eval()
    image_ids = sorted({r.image_id for r in rows})
    patches = torch.cat([model.encode_patches(torch.from_numpy(cache.get(image_ids[s:s + batch_size]))).float()
                         for s in range(0, len(image_ids), batch_size)])  # (I, P, D)
    texts = sorted({r.text for r in rows})
    phrases = torch.cat([model.encode_text(texts[s:s + batch_size]).float()
                         for s in range(0, len(texts), batch_size)])  # (T, D)
    for module, mode in zip(model.modules(), modes, strict=True):
        module.training = mode
    image_row = {i: k for k, i in enumerate(image_ids)}
    text_row = {t: k for k, t in enumerate(texts)}
    out = np.empty((len(rows), *model.patch_grid), dtype=np.float32)
    with_head = head is not None
    scores = np.empty_like(out) if with_head else None
    cell_boxes = np.empty((len(rows), out.shape[1] * out.shape[2], 4), dtype=np.float32) if with_head else None
    for s in range(0, len(rows), 4096):  # (chunk, P, D) at a time: a whole split's would not fit
        chunk = rows[s:s + 4096]
        chunk_patches = patches[[image_row[r.image_id] for r in chunk]]
        chunk_phrases = phrases[[text_row[r.text] for r in chunk]]
        sims = torch.einsum("rpd,rd->rp", chunk_patches, chunk_phrases)
        out[s:s + len(chunk)] = sims.reshape(len(chunk), *model.patch_grid).cpu().numpy()
        if with_head:
            head_scores, head_boxes = head.predict(chunk_patches, chunk_phrases)
            scores[s:s + len(chunk)] = head_scores.reshape(len(chunk), *model.patch_grid).numpy()
            cell_boxes[s:s + len(chunk)] = head_boxes.numpy()
    return out, scores, cell_boxes


def pointing_for_eval(model: GroundexModel, cache: PixelCache, rows: Sequence[GroundingRow]) -> float:
    """A quick validation figure while training: the percentage of phrases (with boxes) whose most
    similar patch cell has its centre inside one of the phrase's boxes. `groundex eval grounding`
    is the full evaluation (upsampled heatmaps, boxes, baselines)."""
    rows = [r for r in rows if r.boxes]
    if not rows:
        return 0.0
    maps = phrase_maps(model, cache, rows)
    gh, gw = model.patch_grid
    best = maps.reshape(len(rows), -1).argmax(axis=1)
    x, y = (best % gw + 0.5) / gw, (best // gw + 0.5) / gh
    hits = [any(b[0] <= px <= b[2] and b[1] <= py <= b[3] for b in r.boxes)
            for r, px, py in zip(rows, x.tolist(), y.tolist(), strict=True)]
    return round(100.0 * sum(hits) / len(hits), 2)
