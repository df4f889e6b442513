"""A box head on the patch tokens: the phrase picks the patch, the patch draws the box.

A heatmap thresholded on an 8 x 8 grid cannot draw a box tighter than a cell, nor separate two people side by
side. Following OWL-ViT (Minderer et al., 2022), each patch token predicts the box of the thing it belongs to:
its centre as an offset from the patch's own centre, and its width and height, through sigmoids whose biases put
an untrained head's box on the patch's cell. One difference: the head also reads the phrase (the patch embedding
times the phrase embedding, beside the patch embedding). Flickr30k's entities nest ("a man" and "his shirt" share
patches), and a class-agnostic head can draw only one box per patch.

Trained with the Entities boxes `groundex train` already uses (`indexer/phrase_region_loss.py`): for every phrase
of the batch, a few of the patches whose centre lies inside one of its boxes, after the random crop, each
regressing that box (the smallest when several contain it) with L1 plus generalized IoU (DETR's pair). The head
reads the same L2-normalized patch embeddings that `groundex index` stores, so region search can draw boxes from
stored vectors without the image tower.

Stored as `box_head.safetensors` beside a checkpoint's weights; a model without it (added, not trained here)
grounds with the heatmap alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from warehouse import InputError

__all__ = ["BoxHead", "BOX_HEAD_FILE", "box_losses", "cell_centres", "load_box_head", "window_cells"]

BOX_HEAD_FILE = "box_head.safetensors"


def cell_centres(grid: tuple[int, int]) -> torch.Tensor:
    """(gh * gw, 2) the centre (x, y) of each patch cell in [0, 1], row-major like the patch tokens."""
    gh, gw = grid
    ys, xs = torch.meshgrid((torch.arange(gh) + 0.5) / gh, (torch.arange(gw) + 0.5) / gw, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def window_cells(grid: tuple[int, int], radius: int) -> torch.Tensor:
    """(P, (2r+1)^2) the row-major indices of each cell's neighbours within `radius` (-1 past the grid's edge)."""
    gh, gw = grid
    offsets = torch.arange(-radius, radius + 1)
    ys = torch.arange(gh)[:, None, None, None] + offsets[None, None, :, None]
    xs = torch.arange(gw)[None, :, None, None] + offsets[None, None, None, :]
    inside = (ys >= 0) & (ys < gh) & (xs >= 0) & (xs < gw)
    return torch.where(inside, ys * gw + xs, torch.full_like(inside, -1, dtype=torch.long)).reshape(gh * gw, -1)


class BoxHead(nn.Module):
    """(patch embeddings, phrase embeddings, cell indices, the phrase's similarity map) -> boxes (x1, y1, x2, y2) in
    [0, 1] of the model's input frame. Besides the patch (and its product with the phrase), the head reads the
    phrase's similarities in the cell's neighbourhood (`radius` cells each way): how far the match extends is
    most of what a box is."""

    def __init__(self, dim: int, grid: tuple[int, int], hidden: int = 256, radius: int = 3):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.radius = int(radius)
        side = 2 * self.radius + 1
        self.mlp = nn.Sequential(nn.Linear(2 * dim + 2 * side * side, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, 4))
        nn.init.zeros_(self.mlp[-1].weight)  # untrained: the box of the patch's own cell
        nn.init.zeros_(self.mlp[-1].bias)
        gh, gw = self.grid
        centres = cell_centres(self.grid)
        size = torch.tensor([1.0 / gw, 1.0 / gh]).expand_as(centres)
        self.register_buffer("_anchor", torch.cat([torch.logit(centres), torch.logit(size)], dim=1), persistent=False)
        self.register_buffer("_window", window_cells(self.grid, self.radius), persistent=False)

    def forward(self, patches: torch.Tensor, phrases: torch.Tensor, cells: torch.Tensor, maps: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """patches (N, D), phrases (N, D), cells (N,) long, maps (N, P) the phrase's cosine similarity with every
        cell of the patch's image, present (N, P) bool which cells were seen (patch dropout; None: all): (N, 4)."""
        window = self._window[cells]  # (N, W)
        valid = window >= 0
        if present is not None:
            valid &= present.gather(1, window.clamp(min=0))
        sims = maps.float().gather(1, window.clamp(min=0))
        own = maps.float().gather(1, cells[:, None])
        local = torch.where(valid, (sims - own) * 10, torch.zeros_like(sims))  # the map's shape around the cell
        features = torch.cat([patches, patches * phrases, local, valid.float()], dim=-1)
        out = self.mlp(features.to(self.mlp[0].weight.dtype)).float()
        cxcywh = torch.sigmoid(out + self._anchor[cells])
        centre, half = cxcywh[..., :2], cxcywh[..., 2:] / 2
        return torch.cat([centre - half, centre + half], dim=-1).clamp(0, 1)

    @torch.no_grad()
    def cell_boxes(self, patches: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
        """Every cell's box: patches (N, P, D) and phrases (N, D) -> (N, P, 4)."""
        p = patches.to(self._anchor.device, torch.float32)
        t = phrases.to(p.device, torch.float32)
        n, cells = p.shape[0], p.shape[1]
        maps = torch.einsum("npd,nd->np", p, t)
        flat = torch.arange(cells, device=p.device).repeat(n)
        rows = torch.arange(n, device=p.device).repeat_interleave(cells)
        boxes = self(p.reshape(n * cells, -1), t[rows], flat, maps[rows])
        return boxes.reshape(n, cells, 4)

    def save(self, folder: Path) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(Path(folder) / BOX_HEAD_FILE),
                  metadata={"grid": f"{self.grid[0]}x{self.grid[1]}", "radius": str(self.radius)})


def load_box_head(folder: Path, device: torch.device | str = "cpu") -> BoxHead | None:
    """The box head stored beside a checkpoint, or None when it has none (then grounding uses the heatmap)."""
    path = Path(folder) / BOX_HEAD_FILE
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        gh, gw = (int(n) for n in meta["grid"].split("x"))
        radius = int(meta["radius"])
        state = load_file(str(path))
        first = state["mlp.0.weight"]  # (hidden, 2 * dim + 2 * (2r+1)^2)
        head = BoxHead((first.shape[1] - 2 * (2 * radius + 1) ** 2) // 2, (gh, gw), hidden=first.shape[0],
                       radius=radius)
        head.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, OSError, SafetensorError) as e:
        raise InputError(f"{path}: not a box head this groundex can read ({e})") from None
    return head.to(device).eval()


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise GIoU of boxes (..., 4) x1, y1, x2, y2."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(dim=-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def box_losses(head: BoxHead, patches: torch.Tensor, kept: torch.Tensor | None, boxes_in_crop: torch.Tensor,
               box_region: torch.Tensor, image_index: torch.Tensor, phrases: torch.Tensor, localize: torch.Tensor,
               per_region: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """(L1 + GIoU of the head's boxes, pairs used) for one batch.

    patches (B, K, D) the kept patches' embeddings, kept (B, K) their cell indices (None: all cells);
    boxes_in_crop (NB, 4) each region's boxes in its image's crop frame (x1 <= x2); box_region (NB,);
    image_index (R,) each region's image; phrases (R, D); localize (R,) bool (scene regions say nothing of boxes).
    Each region regresses from at most `per_region` of the patches whose centre lies inside one of its boxes."""
    B, K, _ = patches.shape
    device = patches.device
    cells = kept if kept is not None else torch.arange(K, device=device).expand(B, K)
    centres = cell_centres(head.grid).to(device)[cells]  # (B, K, 2)
    box_image = image_index[box_region]  # (NB,)
    c = centres[box_image]  # (NB, K, 2)
    b = boxes_in_crop[:, None, :]
    inside = (c[..., 0] >= b[..., 0]) & (c[..., 0] <= b[..., 2]) & (c[..., 1] >= b[..., 1]) & (c[..., 1] <= b[..., 3])
    area = (boxes_in_crop[:, 2] - boxes_in_crop[:, 0]) * (boxes_in_crop[:, 3] - boxes_in_crop[:, 1])
    inside &= localize[box_region][:, None] & (area[:, None] > 0)
    # a patch inside several boxes of one region regresses the smallest
    area_pairs = torch.where(inside, area[:, None], torch.full_like(inside, float("inf"), dtype=area.dtype))
    smallest = torch.full((len(image_index), K), float("inf"), device=device, dtype=area.dtype)
    smallest = smallest.scatter_reduce(0, box_region[:, None].expand(-1, K), area_pairs, reduce="amin")
    inside &= area_pairs <= smallest[box_region]
    box_idx, k_idx = inside.nonzero(as_tuple=True)
    zero = patches.sum() * 0
    if len(box_idx) == 0:
        return zero, 0
    # at most `per_region` pairs per region, chosen at random
    region = box_region[box_idx]
    order = torch.randperm(len(box_idx), generator=generator, device="cpu").to(device)
    region_sorted, position = torch.sort(region[order], stable=True)
    first = torch.searchsorted(region_sorted, region_sorted)  # index of each region's first pair in the sort
    rank = torch.arange(len(region_sorted), device=device) - first
    chosen = order[position[rank < per_region]]
    box_idx, k_idx, region = box_idx[chosen], k_idx[chosen], region[chosen]
    image = image_index[region]
    # each region's phrase against every cell of its image, once per region (cells dropped this step: absent)
    cells_total = head.grid[0] * head.grid[1]
    used, slot = torch.unique(region, return_inverse=True)
    sims = torch.einsum("rkd,rd->rk", patches[image_index[used]], phrases[used])  # (regions used, K)
    region_cells = cells[image_index[used]]
    maps = torch.zeros(len(used), cells_total, device=device, dtype=sims.dtype).scatter(1, region_cells, sims)
    present = torch.zeros(len(used), cells_total, device=device, dtype=torch.bool).scatter(
        1, region_cells, torch.ones_like(region_cells, dtype=torch.bool))
    predicted = head(patches[image, k_idx], phrases[region], cells[image, k_idx], maps[slot], present[slot])
    target = boxes_in_crop[box_idx]
    loss = F.l1_loss(predicted, target, reduction="none").sum(dim=-1) + (1 - generalized_iou(predicted, target))
    return loss.mean(), int(len(chosen))
