"""Fitting the grounding head (indexer/box_head.py) to a trained model's frozen embeddings.

`groundex train` runs this after its contrastive epochs, on the checkpoint it keeps: the train images' patch
embeddings are computed once (the image as grounding sees it, and mirrored, with its boxes mirrored too), every
phrase text once, and the head is fitted on those with AdamW. The backbone does not move, so the head learns
exactly the embeddings it will read at search time, and a step costs a few small convolutions instead of a pass
through the image and text towers.

Each step takes `batch_images` images of one view and up to `per_image` of each image's phrases (drawn anew every
epoch), so an epoch costs the same whatever the number of captions. The learning rate warms up then follows a
cosine, over the epochs or, with a time budget, over elapsed time (as `indexer.train` does).

On the real sample (docs/grounding.md, "The box head") the fit takes about two minutes of the 15-minute recipe.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from warehouse import GroundingRow, InputError

from .box_head import BoxHead, box_targets, head_losses
from .data import PixelCache
from .schedule import lr_factor

_logger = logging.getLogger(__name__)

__all__ = ["BoxFitConfig", "fit_box_head"]


@dataclass
class BoxFitConfig:
    epochs: int = 20                # passes over the images (each view); unused with `seconds`
    seconds: float | None = None    # wall-clock budget for the whole fit (embedding included); None: `epochs`
    per_image: int = 4              # phrases of an image per step, drawn anew each epoch
    batch_images: int = 64          # images per step
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: float = 0.05            # fraction of the schedule
    box_loss_weight: float = 1.0    # the box loss against the pointing loss
    max_images: int = 20_000        # images embedded (at random beyond that): memory stays bounded
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "per_image", "batch_images", "max_images"):
            if getattr(self, name) < 1:
                raise InputError(f"box head: {name} must be >= 1, got {getattr(self, name)}")
        if self.seconds is not None and self.seconds <= 0:
            raise InputError(f"box head: seconds must be > 0, got {self.seconds}")
        if self.lr <= 0 or self.box_loss_weight < 0:
            raise InputError(f"box head: lr must be > 0 and box_loss_weight >= 0, got {self.lr}, "
                             f"{self.box_loss_weight}")


# "his left hand" is the right hand of the mirrored image: such phrases train on the image as it is only
SIDED = re.compile(r"\b(left|right)\b", re.IGNORECASE)


@torch.no_grad()
def _embed(model, cache: PixelCache, image_ids: Sequence[int], texts: Sequence[str], batch_size: int = 256
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, I, P, D) float16 patch embeddings of each image and of its mirror image, and (T, D) float32 texts."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        views = []
        for flip in (False, True):
            chunks = []
            for s in range(0, len(image_ids), batch_size):
                pixels = torch.from_numpy(cache.get(image_ids[s:s + batch_size]))
                chunks.append(model.encode_patches(pixels.flip(-1) if flip else pixels).to("cpu", torch.float16))
            views.append(torch.cat(chunks))
        phrases = torch.cat([model.encode_text(list(texts[s:s + batch_size])).float().cpu()
                             for s in range(0, len(texts), batch_size)])
    finally:
        for module, mode in zip(model.modules(), modes, strict=True):
            module.training = mode
    return torch.stack(views), phrases


def fit_box_head(model, cache: PixelCache, rows: Sequence[GroundingRow], config: BoxFitConfig | None = None,
                 device: torch.device | str | None = None) -> tuple[BoxHead | None, dict[str, Any]]:
    """A head fitted to `model`'s embeddings of `rows` (phrases with boxes; scene phrases too: their boxes are
    what a person draws for "the street"); `cache` holds the rows' images at the model's input size.

    Returns the head (in eval mode, on `device`) and what the fit measured; with a time budget that embedding the
    images leaves no time to fit in, no head (None, with a warning) rather than an untrained one."""
    config = config or BoxFitConfig()
    started = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rows = [r for r in rows if r.boxes]
    if not rows:
        raise ValueError("no phrases with boxes to fit a box head on")
    rng = np.random.default_rng(config.seed)
    image_ids = sorted({r.image_id for r in rows})
    if len(image_ids) > config.max_images:
        image_ids = sorted(rng.choice(image_ids, config.max_images, replace=False).tolist())
        kept = set(image_ids)
        rows = [r for r in rows if r.image_id in kept]
    texts = sorted({r.text for r in rows})
    views, phrases = _embed(model, cache, image_ids, texts)
    embed_s = time.perf_counter() - started

    image_row = {i: k for k, i in enumerate(image_ids)}
    text_row = {t: k for k, t in enumerate(texts)}
    row_image = np.array([image_row[r.image_id] for r in rows])
    row_text = torch.tensor([text_row[r.text] for r in rows])
    order = np.argsort(row_image, kind="stable")
    starts = np.searchsorted(row_image[order], np.arange(len(image_ids)))
    ends = np.searchsorted(row_image[order], np.arange(len(image_ids)), side="right")
    targets = [box_targets([r.boxes for r in rows], model.patch_grid, flip=flip) for flip in (False, True)]
    sided = torch.tensor([bool(SIDED.search(r.text)) for r in rows])
    targets[1][0][sided] = False  # no loss on the mirrored view for them

    train_s = None if config.seconds is None else config.seconds - (time.perf_counter() - started)
    stats: dict[str, Any] = {"images": len(image_ids), "phrases": len(rows), "embed_seconds": round(embed_s, 1)}
    if train_s is not None and train_s < 0.1 * config.seconds:
        _logger.warning("no box head: embedding %d images took %.0f s of its %.0f s (give it more time: "
                        "--box-head-minutes)", len(image_ids), embed_s, config.seconds)
        return None, {**stats, "epochs": 0, "steps": 0, "seconds": round(time.perf_counter() - started, 1)}
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(config.seed)
        head = BoxHead(model.embed_dim, model.patch_grid).to(device)
    head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches_per_view = -(-len(image_ids) // config.batch_images)
    steps_per_epoch = 2 * batches_per_view
    total_steps = config.epochs * steps_per_epoch
    bar = tqdm(total=total_steps if train_s is None else round(train_s), unit="step" if train_s is None else "s",
               desc="box head", disable=not config.progress, leave=False)
    step, epoch, losses = 0, 0, []
    train_started = time.perf_counter()

    def progress() -> float:
        if train_s is None:
            return step / total_steps
        if step < 5:  # too early to tell how long an epoch takes
            return 0.0
        elapsed = time.perf_counter() - train_started
        # the schedule spans at least one epoch (estimated from the steps so far): a budget shorter than that
        # still ends with a decayed learning rate, one epoch late, rather than training most of it at zero
        return elapsed / max(train_s, elapsed / step * steps_per_epoch)

    out_of_time = False
    while (train_s is not None or epoch < config.epochs) and not out_of_time:
        plan = [(view, b) for view in (0, 1) for b in range(batches_per_view)]
        shuffled = rng.permutation(len(image_ids))
        for i in rng.permutation(len(plan)):
            view, b = plan[i]
            images = shuffled[b * config.batch_images:(b + 1) * config.batch_images]
            picked = [order[starts[k]:ends[k]] for k in images]
            picked = [p[rng.permutation(len(p))[:config.per_image]] for p in picked]
            chosen = np.concatenate(picked)
            image_of = torch.from_numpy(np.repeat(np.arange(len(images)), [len(p) for p in picked]))
            inside, cell_targets = (t[chosen] for t in targets[view])
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(min(progress(), 1.0), config.warmup, 0.0)
            scores, boxes = head(views[view, images].to(device).float(), phrases[row_text[chosen]].to(device),
                                 image_of.to(device))
            pointing, box = head_losses(scores, boxes, inside.to(device), cell_targets.to(device))
            loss = pointing + config.box_loss_weight * box
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append((pointing.item(), box.item()))
            if train_s is None:
                bar.update(1)
            else:
                bar.n = min(round(time.perf_counter() - train_started), bar.total)
                bar.refresh()
                if progress() >= 1.0 and step >= steps_per_epoch:  # the budget is spent (one epoch at least)
                    out_of_time = True
                    break
        epoch += 1
    bar.close()
    head.eval()
    tail = np.mean(losses[-max(1, steps_per_epoch // 2):], axis=0)
    stats.update(epochs=round(step / steps_per_epoch, 2), steps=step, seconds=round(time.perf_counter() - started, 1),
                 pointing_loss=round(float(tail[0]), 4), box_loss=round(float(tail[1]), 4))
    _logger.info("box head fitted: %s", stats)
    return head, stats
