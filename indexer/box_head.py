"""A grounding head on the patch tokens: the phrase picks the patch, the patch draws the box.

A heatmap thresholded on an 8 x 8 grid cannot draw a box tighter than a cell, nor separate two people side by
side. Following OWL-ViT (Minderer et al., 2022), each patch cell predicts the box of the thing it belongs to: its
centre as an offset from the cell's own centre, and its width and height, through sigmoids whose biases put an
untrained head's box on the cell. The head also re-scores the cells (which one the phrase points at).

Two streams, so that the per-phrase work stays small:
- the image stream reads the patch embeddings once per image (a linear map, a learned position per cell, and
  residual 3 x 3 convolutions over the grid): what is where, whatever the phrase;
- the phrase stream modulates those features with the phrase (FiLM: a scale and a shift per channel from the phrase
  embedding), adds the phrase's similarity map (raw, and relative to its maximum), and runs two more residual
  3 x 3 convolutions. Its outputs per cell: a score added to the scaled cosine similarity (so an untrained head
  points where the heatmap does) and the box. Flickr30k's entities nest ("a man" and "his shirt" share cells), so
  the box depends on the phrase, not only on the cell.

The head reads the same L2-normalized patch embeddings that `groundex index` stores, so region search draws boxes
from stored vectors without the image tower. It is fitted after contrastive training, on the frozen embeddings
(`indexer/box_fit.py`), and stored as `box_head.safetensors` beside the checkpoint's weights; a model without it
(added, not trained here) grounds with the heatmap alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from warehouse import InputError

_logger = logging.getLogger(__name__)

__all__ = ["BoxHead", "BOX_HEAD_FILE", "box_targets", "cell_centres", "generalized_iou", "head_losses",
           "load_box_head"]

BOX_HEAD_FILE = "box_head.safetensors"
META_KEY = "groundex_box_head"  # the metadata: one JSON string (see BoxHead.save)
FORMAT = "2"  # format 1 (a per-cell MLP trained jointly with the backbone) is no longer read: retrain


def cell_centres(grid: tuple[int, int]) -> torch.Tensor:
    """(gh * gw, 2) the centre (x, y) of each patch cell in [0, 1], row-major like the patch tokens."""
    gh, gw = grid
    ys, xs = torch.meshgrid((torch.arange(gh) + 0.5) / gh, (torch.arange(gw) + 0.5) / gw, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


class BoxHead(nn.Module):
    """(patch embeddings of images, phrase embeddings) -> (a score per cell, a box per cell) for each phrase.

    Boxes are (x1, y1, x2, y2) in [0, 1] of the model's input frame; scores are logits over the cells (the largest
    is where the phrase points)."""

    def __init__(self, dim: int, grid: tuple[int, int], hidden: int = 64, layers: int = 3, phrase_hidden: int = 32,
                 phrase_layers: int = 2):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.sizes = {"hidden": int(hidden), "layers": int(layers), "phrase_hidden": int(phrase_hidden),
                      "phrase_layers": int(phrase_layers)}
        gh, gw = self.grid
        self.embed = nn.Linear(dim, hidden)
        self.position = nn.Parameter(torch.zeros(1, hidden, gh, gw))
        self.image_convs = nn.ModuleList([nn.Conv2d(hidden, hidden, 3, padding=1) for _ in range(layers)])
        self.film = nn.Linear(dim, 2 * hidden)
        self.phrase_in = nn.Conv2d(hidden + 2, phrase_hidden, 1)
        self.phrase_convs = nn.ModuleList([nn.Conv2d(phrase_hidden, phrase_hidden, 3, padding=1)
                                           for _ in range(phrase_layers)])
        self.out = nn.Conv2d(phrase_hidden, 5, 1)
        nn.init.zeros_(self.out.weight)  # untrained: the heatmap's scores and each cell's own box
        nn.init.zeros_(self.out.bias)
        self.scale = nn.Parameter(torch.tensor(10.0))
        centres = cell_centres(self.grid)
        size = torch.tensor([1.0 / gw, 1.0 / gh]).expand_as(centres)
        anchor = torch.cat([torch.logit(centres), torch.logit(size)], dim=1).T.reshape(1, 4, gh, gw)
        self.register_buffer("_anchor", anchor, persistent=False)

    def image_features(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (I, P, D) -> (I, hidden, gh, gw)."""
        gh, gw = self.grid
        x = self.embed(patches).transpose(1, 2).reshape(len(patches), -1, gh, gw)
        x = F.gelu(x + self.position)
        for conv in self.image_convs:
            x = x + F.gelu(conv(x))
        return x

    def forward(self, patches: torch.Tensor, phrases: torch.Tensor, image_of: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """patches (I, P, D) L2-normalized, phrases (N, D) L2-normalized, image_of (N,) long: each phrase's image
        (None: I == N, one image per phrase). Returns scores (N, P) and boxes (N, P, 4)."""
        gh, gw = self.grid
        dtype = self.embed.weight.dtype
        patches, phrases = patches.to(dtype), phrases.to(dtype)
        features = self.image_features(patches)
        if image_of is not None:
            features, patches = features[image_of], patches[image_of]
        n = len(phrases)
        sims = torch.einsum("npd,nd->np", patches, phrases)  # (N, P) the heatmap
        gamma, beta = self.film(phrases).chunk(2, dim=-1)  # FiLM: a scale and a shift per channel
        x = features * (1 + gamma[..., None, None]) + beta[..., None, None]
        relative = sims - sims.max(dim=1, keepdim=True).values
        x = torch.cat([x, (10 * sims).reshape(n, 1, gh, gw), (10 * relative).reshape(n, 1, gh, gw)], dim=1)
        x = F.gelu(self.phrase_in(x))
        for conv in self.phrase_convs:
            x = x + F.gelu(conv(x))
        out = self.out(x).float()
        scores = sims.float() * self.scale.float() + out[:, 0].reshape(n, gh * gw)
        cxcywh = torch.sigmoid(out[:, 1:] + self._anchor).reshape(n, 4, gh * gw).transpose(1, 2)
        centre, half = cxcywh[..., :2], cxcywh[..., 2:] / 2
        return scores, torch.cat([centre - half, centre + half], dim=-1).clamp(0, 1)

    @torch.no_grad()
    def predict(self, patches: torch.Tensor, phrases: torch.Tensor, chunk: int = 2048
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image per phrase: patches (N, P, D), phrases (N, D) -> scores (N, P), boxes (N, P, 4), float32 on
        the CPU, in chunks (a split's phrases at once would not fit)."""
        device = self._anchor.device
        scores, boxes = [], []
        for s in range(0, len(phrases), chunk):
            sc, bx = self(patches[s:s + chunk].to(device, torch.float32),
                          phrases[s:s + chunk].to(device, torch.float32))
            scores.append(sc.cpu())
            boxes.append(bx.cpu())
        if not scores:
            cells = self.grid[0] * self.grid[1]
            return torch.zeros(0, cells), torch.zeros(0, cells, 4)
        return torch.cat(scores), torch.cat(boxes)

    def save(self, folder: Path) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"format": FORMAT, "grid": f"{self.grid[0]}x{self.grid[1]}", **self.sizes}
        # one key: safetensors writes its metadata map in an order that changes from process to process, and the
        # file's bytes are part of the model's hash (the same head must make the same model)
        save_file(tensors, str(Path(folder) / BOX_HEAD_FILE), metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def load_box_head(folder: Path, device: torch.device | str = "cpu") -> BoxHead | None:
    """The box head stored beside a checkpoint, or None when it has none (then grounding uses the heatmap)."""
    path = Path(folder) / BOX_HEAD_FILE
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        meta = json.loads(meta[META_KEY]) if META_KEY in meta else meta
    except (OSError, SafetensorError, ValueError) as e:
        raise InputError(f"{path}: not a box head this groundex can read ({e})") from None
    if meta.get("format") != FORMAT:  # the model stays usable: it grounds with the heatmap, as one without a head
        _logger.warning("%s: a box head from an earlier groundex (format %s; this one reads %s) is ignored: grounding "
                        "uses the heatmap. Train the model again for a head.", path, meta.get("format", "1"), FORMAT)
        return None
    try:
        gh, gw = (int(n) for n in meta["grid"].split("x"))
        state = load_file(str(path))
        head = BoxHead(state["embed.weight"].shape[1], (gh, gw), hidden=int(meta["hidden"]),
                       layers=int(meta["layers"]), phrase_hidden=int(meta["phrase_hidden"]),
                       phrase_layers=int(meta["phrase_layers"]))
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


def box_targets(boxes: list[list[tuple[float, float, float, float]]], grid: tuple[int, int], flip: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each phrase's training targets on the grid, from its boxes ((x1, y1, x2, y2) in [0, 1]; `flip`: of the
    mirrored image): (N, P) bool, the cells whose centre lies inside one of its boxes, and (N, P, 4) the box each
    such cell regresses (the smallest holding it: with two people, each cell draws its own person)."""
    centres = cell_centres(grid)
    most = max((len(b) for b in boxes), default=0)
    if most == 0:
        return torch.zeros(len(boxes), len(centres), dtype=torch.bool), torch.zeros(len(boxes), len(centres), 4)
    padded = torch.zeros(len(boxes), most, 4)  # (N, M, 4); padding is an empty box at the origin
    present = torch.zeros(len(boxes), most, dtype=torch.bool)
    for k, phrase_boxes in enumerate(boxes):
        if phrase_boxes:
            padded[k, :len(phrase_boxes)] = torch.tensor(phrase_boxes, dtype=torch.float32).reshape(-1, 4)
            present[k, :len(phrase_boxes)] = True
    if flip:
        padded = torch.stack([1 - padded[..., 2], padded[..., 1], 1 - padded[..., 0], padded[..., 3]], dim=-1)
    x, y = centres[None, :, None, 0], centres[None, :, None, 1]  # (1, P, 1)
    b = padded[:, None]  # (N, 1, M, 4)
    holds = (x >= b[..., 0]) & (x <= b[..., 2]) & (y >= b[..., 1]) & (y <= b[..., 3]) & present[:, None]  # (N, P, M)
    area = (padded[..., 2] - padded[..., 0]) * (padded[..., 3] - padded[..., 1])  # (N, M)
    smallest = torch.where(holds, area[:, None], torch.full_like(holds, float("inf"), dtype=area.dtype)).argmin(-1)
    targets = torch.gather(padded, 1, smallest[..., None].expand(-1, -1, 4))  # (N, P, 4)
    return holds.any(dim=-1), targets


def head_losses(scores: torch.Tensor, boxes: torch.Tensor, inside: torch.Tensor, targets: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pointing loss, box loss) of a batch: -log of the softmax mass on the cells inside the phrase's boxes (the
    pointing game, as a loss), and L1 + generalized IoU of the boxes drawn by those cells (DETR's pair)."""
    has = inside.any(dim=1)
    zero = scores.sum() * 0
    if not bool(has.any()):
        return zero, zero
    log_probs = scores.log_softmax(dim=1).masked_fill(~inside, float("-inf"))
    pointing = -torch.logsumexp(log_probs[has], dim=1).mean()
    per_cell = F.l1_loss(boxes, targets, reduction="none").sum(dim=-1) + (1 - generalized_iou(boxes, targets))
    return pointing, (per_cell * inside).sum() / inside.sum()
