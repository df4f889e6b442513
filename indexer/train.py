"""Contrastive training: symmetric InfoNCE with a learned temperature, over a workdir's catalog.

Pixels come from the uint8 cache (decoded once); augmentation is done on whole batches on the model's
device (random resized crops in one `roi_align` call, mild brightness/contrast), so the model's step is
the bottleneck. Each step pairs every image with one of its captions drawn at random (or several,
`captions_per_image`, whose texts all count as positives of the image).

With phrases and boxes (Flickr30k Entities, synthetic scenes) a second objective teaches the patch tokens to
match the phrases of their boxes (`grounding_weight`, indexer/phrase_region_loss.py); the random crops move the
boxes with the pixels, and patch dropout reports which cells it kept.

The learning rate warms up then follows a cosine; with a time budget (`minutes`) the schedule runs on
elapsed time instead of steps. After every epoch: val recall, a resumable state in
`training/model/run-<id>/last/`, and, when val text->image R@10 improves, a content-addressed checkpoint
in `models/` recorded in the catalog (warehouse.ArtefactStore). The best one is the run's result.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.ops import roi_align
from tqdm.auto import tqdm

from warehouse import (
    ArtefactStore,
    Catalog,
    GroundingRow,
    InputError,
    RunState,
    Workdir,
    atomic_write_json,
    content_hash,
    missing_files,
    recorded_run,
)

from .box_fit import BoxFitConfig, fit_box_head
from .config import TrainConfig
from .data import PixelCache, pixel_cache
from .devices import default_device, precision_uses_bf16
from .evaluate import recall_at_k
from .model_store import store_model
from .models import GroundexModel, TrackedPatchDropout, create_model
from .phrase_region_loss import RegionTable, patch_coverage, pointing_for_eval, region_losses
from .schedule import lr_factor
from .tokenizer import WordTokenizer, tokenizer_from_json

_logger = logging.getLogger(__name__)
@dataclass
class TrainResult:
    run_id: int
    model_id: str            # the best checkpoint's hash
    model_path: str
    epochs: int
    steps: int
    seconds: float
    best: dict[str, Any]     # val metrics of the kept checkpoint
    history: list[dict[str, Any]]
    trainable_params: int
    total_params: int
    box_head: dict[str, Any] | None = None  # what fitting the grounding head measured (None: no head)


# -- data -----------------------------------------------------------------------------------------


class CaptionTable:
    """Tokenized captions grouped by image: tokens (M, L), and per image the rows of its captions."""

    def __init__(self, rows: list[tuple[int, int, str]], tokenize):
        self.caption_ids = np.array([r[0] for r in rows], dtype=np.int64)
        self.image_ids = np.array([r[1] for r in rows], dtype=np.int64)
        self.texts = [r[2] for r in rows]
        self.tokens = tokenize(self.texts) if rows else torch.zeros(0, 1, dtype=torch.long)
        self.by_image: dict[int, np.ndarray] = {}
        for row, image_id in enumerate(self.image_ids.tolist()):
            self.by_image.setdefault(image_id, []).append(row)
        self.by_image = {k: np.array(v) for k, v in self.by_image.items()}

    def sample(self, image_ids: np.ndarray, per_image: int, rng: np.random.Generator) -> np.ndarray:
        """(B * per_image,) caption rows, `per_image` per image, drawn without replacement when possible."""
        out = []
        for i in image_ids.tolist():
            rows = self.by_image[i]
            out.append(rng.choice(rows, size=per_image, replace=len(rows) < per_image))
        return np.concatenate(out)


def augment(pixels: torch.Tensor, out_size: int, crop_scale: float, jitter: float, hflip: bool,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, 3, S, S) -> float [0, 1] (B, 3, out, out): random resized crop, jitter, optional flip.

    Also returns each image's crop (B, 4) as x1, y1, x2, y2 in [0, 1] of the input (x1 > x2 when flipped),
    so that boxes can follow the pixels."""
    x = pixels.float().div_(255)
    b, _, s, _ = x.shape
    crops = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(b, 1)
    if crop_scale < 1:
        area = torch.empty(b).uniform_(crop_scale, 1.0, generator=generator)
        aspect = torch.exp(torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator))
        w = (torch.sqrt(area * aspect) * s).clamp(max=s)
        h = (torch.sqrt(area / aspect) * s).clamp(max=s)
        x0 = torch.rand(b, generator=generator) * (s - w)
        y0 = torch.rand(b, generator=generator) * (s - h)
        boxes = torch.stack([torch.arange(b, dtype=torch.float), x0, y0, x0 + w, y0 + h], dim=1).to(x.device)
        crops = boxes[:, 1:].cpu() / s
        x = roi_align(x, boxes, output_size=out_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    elif s != out_size:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)
    if jitter > 0:
        brightness = 1 + torch.empty(b, 1, 1, 1).uniform_(-jitter, jitter, generator=generator).to(x.device)
        contrast = 1 + torch.empty(b, 1, 1, 1).uniform_(-jitter, jitter, generator=generator).to(x.device)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean * brightness).clamp_(0, 1)
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        crops[flip] = crops[flip][:, [2, 1, 0, 3]]
    return x, crops


# -- loss, optimizer, schedule --------------------------------------------------------------------


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              per_image: int = 1) -> torch.Tensor:
    """Symmetric InfoNCE. image (B, D), text (B * per_image, D) with text j belonging to image j // per_image."""
    logits = logit_scale * image_features @ text_features.T  # (B, B * per_image)
    b = image_features.shape[0]
    owner = torch.arange(b, device=logits.device).repeat_interleave(per_image)  # (B * per_image,)
    text_to_image = F.cross_entropy(logits.T, owner)
    if per_image == 1:
        image_to_text = F.cross_entropy(logits, owner)
    else:  # every caption of the image is a positive: log of the summed positive probability
        log_probs = logits.log_softmax(dim=1)
        positive = owner[None, :] == torch.arange(b, device=logits.device)[:, None]
        image_to_text = -torch.logsumexp(log_probs.masked_fill(~positive, float("-inf")), dim=1).mean()
    return (text_to_image + image_to_text) / 2


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight matrices with decay, the rest without."""
    groups: dict[bool, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("bias")
        groups.setdefault(plain, []).append(p)
    return [{"params": params, "weight_decay": 0.0 if plain else weight_decay}
            for plain, params in sorted(groups.items())]


def apply_mode(model: GroundexModel, mode: str, lora_rank: int) -> None:
    """Set what trains: everything, the text tower (+ temperature) only, or LoRA adapters."""
    if mode == "locked-image":
        for p in model.clip.visual.parameters():
            p.requires_grad_(False)
    elif mode == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                            target_modules=["c_fc", "c_proj", "out_proj"])
        model.clip = get_peft_model(model.clip, config)
        model.clip.base_model.model.logit_scale.requires_grad_(True)


def set_train_mode(model: GroundexModel, mode: str) -> None:
    """Train mode, except what is frozen: the image tower in locked-image mode, and every BatchNorm whose
    parameters are all frozen (LoRA), so that frozen layers keep their running statistics too."""
    model.train()
    if mode == "locked-image":
        model.clip.visual.eval()
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in params):
            module.eval()


def merge_lora(model: GroundexModel) -> None:
    if hasattr(model.clip, "merge_and_unload"):
        model.clip = model.clip.merge_and_unload()


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# -- embedding a split for validation -------------------------------------------------------------


@torch.no_grad()
def embed_for_eval(model: GroundexModel, cache: PixelCache, image_ids: np.ndarray, captions: CaptionTable,
                   batch_size: int = 256) -> dict[str, dict[str, float]]:
    modes = [m.training for m in model.modules()]  # restored per module: a locked image tower stays in eval
    model.eval()
    images = torch.cat([model.encode_image(torch.from_numpy(cache.get(image_ids[s:s + batch_size])))
                        for s in range(0, len(image_ids), batch_size)]).cpu().numpy()
    texts = torch.cat([model.encode_text(captions.tokens[s:s + batch_size])
                       for s in range(0, len(captions.tokens), batch_size)]).cpu().numpy()
    for module, mode in zip(model.modules(), modes, strict=True):
        module.training = mode
    return recall_at_k(images, image_ids, texts, captions.image_ids)


# -- resumable state --------------------------------------------------------------------------------


@dataclass(kw_only=True)
class _LoopState:
    """What the loop carries from epoch to epoch. `last/state.json` holds these fields under their own names (with
    the optimizer's param groups and the tokenizer), so that an interrupted run resumes after its last epoch."""
    epoch: int = 0                               # epochs done
    step: int = 0                                # optimizer steps done
    elapsed: float = 0.0                         # seconds trained, counting those before a resume
    best: dict[str, Any] | None = None           # the best epoch's history entry, with its "score"
    best_model: tuple[str, str] | None = None    # (id, path) of that epoch's checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch done
    run_id: int                                  # the run whose folder holds the state (the first one, when resumed)


def _state_dir(workdir: Workdir, run_id: int) -> Path:
    return ArtefactStore(workdir).training_dir("model", f"run-{run_id}")


def _save_state(folder: Path, model: GroundexModel, optimizer: torch.optim.Optimizer, state: _LoopState) -> None:
    """Resumable state: model weights, optimizer tensors, counters; swapped in atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.clip.state_dict().items()},
              str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.contiguous().cpu() for i, s in opt["state"].items() for k, v in s.items()}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    atomic_write_json(tmp / "state.json", {**asdict(state), "param_groups": opt["param_groups"],
                                           "tokenizer": model.tokenizer.to_json()})
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_state(folder: Path, model: GroundexModel, optimizer: torch.optim.Optimizer, state: _LoopState
                ) -> _LoopState:
    """Restore weights and optimizer from `folder`; returns `state` with the saved loop counters (a field the file
    lacks keeps its value in `state`)."""
    saved = json.loads((folder / "state.json").read_text())
    model.clip.load_state_dict(load_file(str(folder / "model.safetensors")))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": saved["param_groups"]})
    counters = {f.name: saved[f.name] for f in fields(_LoopState) if f.name in saved}
    if counters.get("best_model") is not None:  # a JSON list
        counters["best_model"] = tuple(counters["best_model"])
    return replace(state, **counters)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(workdir: Workdir, config: TrainConfig, resume: bool | None = None) -> TrainResult:
    """Train on `config.train_split`; returns the best checkpoint (recorded in the catalog's `models`).

    `resume`: True continues the last training run (whatever its config), False starts a new one, None (the
    default) continues the last run only when it was interrupted and has this very config, so running the same
    command again after a crash loses at most the epoch in progress."""
    device = torch.device(config.device) if config.device else default_device()
    _seed_everything(config.seed)
    with Catalog.open(workdir, read_only=True) as catalog:
        train_rows = catalog.caption_rows(config.train_split)
        val_rows = catalog.caption_rows(config.val_split) if config.val_split else []
        image_items = catalog.image_rows(config.train_split) + (catalog.image_rows(config.val_split)
                                                                if config.val_split else [])
        datasets = catalog.datasets_of_split(config.train_split)
    if not train_rows:
        raise InputError(no_captions_message(workdir, config.train_split))
    base, parent = resolve_base(workdir, config.base)
    previous = _find_resumable(workdir) if resume is not False else None
    if resume and previous is None:
        raise FileNotFoundError(f"nothing to resume in {_state_dir(workdir, 0).parent}")
    if previous is not None and not RunState(previous.parent).should_resume(asdict(config), resume):
        previous = None
    elif previous is not None and resume is None:
        _logger.warning("resuming the interrupted training run %s (pass resume=False, or `groundex train --restart`, "
                        "to start over)", previous.parent.name)
    if previous is not None:  # the resumed weights index this tokenizer's vocabulary
        tokenizer = tokenizer_from_json(json.loads((previous / "state.json").read_text())["tokenizer"])
    elif parent is None:  # from scratch (a preset); checkpoints and open_clip names bring their own
        tokenizer = WordTokenizer.build((t for _, _, t in train_rows), min_count=config.vocab_min_count)
    else:
        tokenizer = None
    # Training sees the whole frame: the phrase-region objective's boxes and the random crops are over the whole image,
    # so a model fine-tuned here is a "squash" model whatever its base was (docs/indexer.md, "Resizing").
    model = create_model(base, config.pretrained, tokenizer=tokenizer, device=device, resize="squash")
    if config.patch_dropout > 0:  # active in train mode only; remembers which patches it kept
        model.clip.visual.patch_dropout = TrackedPatchDropout(config.patch_dropout)
    apply_mode(model, config.mode, config.lora_rank)

    train_captions = CaptionTable(train_rows, model.tokenize)
    regions = None
    with Catalog.open(workdir, read_only=True) as catalog:  # val pointing game is reported whenever it can be
        val_regions = catalog.grounding_rows(config.val_split) if config.val_split else None
        train_grounding = catalog.grounding_rows(config.train_split)
        if config.grounding_weight > 0:
            regions = RegionTable(train_grounding, model.tokenize)
    if regions is not None and not len(regions):
        _logger.warning("split %r has no phrases with boxes: training the global objective only (the grounding "
                        "objective needs Flickr30k Entities-style annotations)", config.train_split)
        regions = None
    # A base's box head read its old embeddings: this run fits a new one on its own (or grounds with the heatmap).
    model.box_head = None
    set_train_mode(model, config.mode)
    trainable, total = count_params(model)
    val_captions = CaptionTable(val_rows, model.tokenize) if val_rows else None
    train_images = np.array(sorted(train_captions.by_image), dtype=np.int64)[: config.max_train_images]
    val_images = None
    if val_captions is not None:
        val_images = np.array(sorted(val_captions.by_image), dtype=np.int64)[: config.val_max_images]
        keep = np.isin(val_captions.image_ids, val_images)
        val_captions = CaptionTable([r for r, k in zip(val_rows, keep, strict=True) if k], model.tokenize)
    train_size = int(round(model.image_size * 1.25))
    needed = set(train_images.tolist()) | (set(val_images.tolist()) if val_images is not None else set())
    items = [(i, p) for i, p in image_items if i in needed]
    train_cache = pixel_cache(workdir.cache_dir, items, train_size, config.workers, config.progress)
    eval_cache = pixel_cache(workdir.cache_dir, items, model.image_size, config.workers, config.progress)

    if val_regions is not None:  # phrases with boxes of the validated images
        wanted = set(val_images.tolist()) if val_images is not None else set()
        val_regions = [r for r in val_regions if r.boxes and r.image_id in wanted]
    head_rows = None
    if config.box_head_epochs > 0:
        chosen = set(train_images.tolist())
        head_rows = [r for r in train_grounding if r.boxes and r.image_id in chosen] or None
    data = _TrainData(train_images, train_captions, train_cache, val_images, val_captions, eval_cache,
                      regions, val_regions, head_rows)

    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    use_bf16 = precision_uses_bf16(config.precision, device)
    with recorded_run(workdir, "train", {"train": asdict(config), "resume": resume}) as (run_id, record):
        data_summary = {"train_split": config.train_split, "train_images": int(len(train_images)),
                        "train_captions": int(np.isin(train_captions.image_ids, train_images).sum()),
                        "datasets": datasets}
        run = _TrainRun(workdir, config, model, optimizer, data, device, use_bf16, parent, trainable, total,
                        data_summary)
        result = _loop(run, previous, run_id)
        record.update(asdict(result))
    return result


@dataclass
class _TrainData:
    train_images: np.ndarray
    train_captions: CaptionTable
    train_cache: PixelCache                  # at 1.25x the model's input size, for random crops
    val_images: np.ndarray | None
    val_captions: CaptionTable | None
    eval_cache: PixelCache                   # at the model's input size
    regions: RegionTable | None = None       # phrases with boxes, when training with the grounding objective
    val_regions: list[GroundingRow] | None = None
    head_rows: list[GroundingRow] | None = None  # train phrases with boxes the grounding head is fitted on (None: no
    #                                              head; eval_cache holds their images)


@dataclass
class _TrainRun:
    """What stays fixed while the loop runs: the model and optimizer, the data, the settings, and what each
    checkpoint records besides its weights."""
    workdir: Workdir
    config: TrainConfig
    model: GroundexModel
    optimizer: torch.optim.Optimizer
    data: _TrainData
    device: torch.device
    use_bf16: bool                     # autocast to bfloat16
    parent: str | None                 # the base model's id (None: a preset or an open_clip name)
    trainable: int                     # parameter counts
    total: int
    data_summary: dict[str, Any]       # what it trained on

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.data.train_images) // (self.config.batch_size * self.config.accumulate))


@dataclass
class _Clock:
    """Training time, counting the time trained before a resume, and the time budget."""
    started: float                     # time.perf_counter() at which an uninterrupted run would have started
    budget_s: float | None             # the contrastive epochs' share of config.minutes, in seconds; None: no budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.elapsed() >= self.budget_s


@dataclass
class _EpochStats:
    """What an epoch's steps measured: for the progress bar and the epoch's history entry."""
    started: float = field(default_factory=time.perf_counter)
    images: int = 0
    losses: list[float] = field(default_factory=list)                         # one per micro-batch
    region_losses: list[tuple[float, float]] = field(default_factory=list)  # (nce, loc) per micro-batch

    def images_per_s(self) -> float:
        return self.images / (time.perf_counter() - self.started)


def _loop(run: _TrainRun, previous: Path | None, run_id: int) -> TrainResult:
    """Epochs until `config.epochs` or the time budget, each ending with a resumable state (continued from
    `previous`, when given); returns the best checkpoint."""
    config = run.config
    state = _LoopState(run_id=run_id)
    if previous is not None:
        state = _load_state(previous, run.model, run.optimizer, state)
        _logger.info("resuming %s at epoch %d, step %d", previous, state.epoch, state.step)
    folder = _state_dir(run.workdir, state.run_id) / "last"
    if previous is None:
        RunState(folder.parent).start(asdict(config))
    head_s = config.head_seconds() if run.data.head_rows else None
    budget = config.minutes * 60 - (head_s or 0) if config.minutes else None
    clock = _Clock(time.perf_counter() - state.elapsed, budget)
    generator = torch.Generator()
    out_of_time = False
    # (a run resumed after its budget ran out, e.g. while fitting the head, trains no further epoch)
    while state.epoch < config.epochs and not out_of_time and not clock.out_of_time():
        stats, out_of_time = _train_epoch(run, state, clock, generator)
        state.epoch += 1
        _end_epoch(run, state, clock, stats)
        state.elapsed = clock.elapsed()
        _save_state(folder, run.model, run.optimizer, state)
    model_id, model_path = state.best_model
    head_stats = None
    if run.data.head_rows:  # an interrupted fit is redone on resume: the epochs' state is saved above
        model_id, model_path, head_stats = _fit_box_head(run, state, head_s)
    RunState(folder.parent).finish(model_id=model_id)
    seconds = round(clock.elapsed(), 1)
    return TrainResult(run_id, model_id, model_path, state.epoch, state.step, seconds, state.best, state.history,
                       run.trainable, run.total, head_stats)


def _fit_box_head(run: _TrainRun, state: _LoopState, seconds: float | None) -> tuple[str, str, dict[str, Any] | None]:
    """The kept checkpoint with a grounding head fitted to its frozen embeddings (indexer/box_fit.py), stored as a
    model of its own (the head is one of the model's hashed files); returns its id, its path and the fit's figures
    (the kept checkpoint itself and None when the budget left no time to fit one)."""
    from .model_store import remove_model
    from .models import load_checkpoint

    config = run.config
    if not Path(state.best_model[1]).is_dir():  # a resumed run whose head was stored before it was interrupted
        with Catalog.open(run.workdir, read_only=True) as catalog:
            latest = catalog.model(None)
        return latest.id, str(latest.path), None
    model = load_checkpoint(Path(state.best_model[1]), run.device)
    fit = BoxFitConfig(epochs=max(config.box_head_epochs, 1), seconds=seconds, seed=config.seed,
                       progress=config.progress)
    model.box_head, stats = fit_box_head(model, run.data.eval_cache, run.data.head_rows, fit, run.device)
    if model.box_head is None:
        return *state.best_model, None
    if config.progress:
        tqdm.write(f"box head: {stats['epochs']} epochs over {stats['images']:,} images and {stats['phrases']:,} "
                   f"phrases in {stats['seconds']:.0f} s")
    model.spec.extra = {**(model.spec.extra or {}), "box_head_steps": stats["steps"]}
    artefact = store_model(run.workdir, model, source="trained", parent_id=run.parent, run_id=state.run_id,
                           metrics=(state.best or {}).get("val", {}), mode=config.mode,
                           trainable_params=run.trainable, total_params=run.total, data=run.data_summary,
                           box_head=stats)
    if artefact.id != state.best_model[0]:  # the checkpoint without the head is an intermediate: one model a run
        remove_model(run.workdir, state.best_model[0])
    return artefact.id, str(artefact.path), stats


def _train_epoch(run: _TrainRun, state: _LoopState, clock: _Clock, generator: torch.Generator
                 ) -> tuple[_EpochStats, bool]:
    """The optimizer steps of epoch `state.epoch` (counted in `state.step`); returns what they measured and
    whether the time budget ran out before the epoch's end."""
    config = run.config
    # Every random draw of an epoch (order, captions, crops, patch dropout) follows from (seed, epoch): a run
    # resumed from an epoch's saved state goes on exactly as the uninterrupted run would have.
    epoch_seed = config.seed * 100_003 + state.epoch
    rng = np.random.default_rng([config.seed, state.epoch])
    generator.manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed)
    order = rng.permutation(run.data.train_images)
    images_per_step = config.batch_size * config.accumulate
    bar = tqdm(range(run.steps_per_epoch), desc=_epoch_label(config, state.epoch + 1, clock.elapsed()), unit="step",
               disable=not config.progress, dynamic_ncols=True)
    stats = _EpochStats()
    out_of_time = False
    for k in bar:
        lr = _apply_schedule(run, _progress(run, state, clock))
        _optimizer_step(run, order[k * images_per_step:(k + 1) * images_per_step], rng, generator, stats)
        state.step += 1
        if clock.budget_s:
            bar.set_description_str(_epoch_label(config, state.epoch + 1, clock.elapsed()), refresh=False)
        bar.set_postfix(loss=f"{np.mean(stats.losses[-20:]):.3f}", lr=f"{lr:.1e}",
                        img_s=f"{stats.images_per_s():.0f}")
        if clock.out_of_time():
            out_of_time = True
            break
    bar.close()
    return stats, out_of_time


def _epoch_label(config: TrainConfig, epoch: int, elapsed_s: float = 0.0) -> str:
    """The progress bar's description: the epoch out of `epochs`, or the minutes used of the time budget when there
    is one (`epochs` is then only an upper bound, often a large one)."""
    if config.minutes is not None:
        return f"epoch {epoch} ({elapsed_s / 60:.1f} of {config.minutes:g} min)"
    return f"epoch {epoch}/{config.epochs}"


def _progress(run: _TrainRun, state: _LoopState, clock: _Clock) -> float:
    """How far the schedule is, in [0, 1]: by steps, or by elapsed time when that is further (time budget)."""
    by_steps = state.step / (run.steps_per_epoch * run.config.epochs)
    return max(by_steps, clock.elapsed() / clock.budget_s) if clock.budget_s else by_steps


def _apply_schedule(run: _TrainRun, progress: float) -> float:
    """Set the learning rate and the patch dropout for `progress`; returns the learning rate."""
    config = run.config
    factor = lr_factor(progress, config.warmup_fraction, config.min_lr_ratio)
    dropout = run.model.clip.visual.patch_dropout
    if isinstance(dropout, TrackedPatchDropout):
        dropout.prob = 0.0 if progress >= 1 - config.unmasked_fraction else config.patch_dropout
    for group in run.optimizer.param_groups:
        group["lr"] = config.lr * factor
    return config.lr * factor


def _optimizer_step(run: _TrainRun, images: np.ndarray, rng: np.random.Generator, generator: torch.Generator,
                    stats: _EpochStats) -> None:
    """One optimizer step over `images`: gradients accumulated over micro-batches of `batch_size` images."""
    config, optimizer = run.config, run.optimizer
    optimizer.zero_grad(set_to_none=True)
    for micro in range(config.accumulate):
        batch = images[micro * config.batch_size:(micro + 1) * config.batch_size]
        loss = _batch_loss(run, batch, rng, generator, stats)
        (loss / config.accumulate).backward()
        stats.losses.append(loss.item())
        stats.images += len(batch)
    optimizer.step()
    with torch.no_grad():  # CLIP's cap on the temperature: logit scale <= 100
        _logit_scale(run.model).clamp_(0, math.log(100))


def _batch_loss(run: _TrainRun, batch: np.ndarray, rng: np.random.Generator, generator: torch.Generator,
                stats: _EpochStats) -> torch.Tensor:
    """The loss of one micro-batch of image ids: augmented pixels against sampled captions, plus the
    phrase-region objective when training with it (its parts recorded in `stats`)."""
    config, model, data = run.config, run.model, run.data
    pixels, crops = augment(torch.from_numpy(data.train_cache.get(batch)).to(run.device), model.image_size,
                            config.crop_scale, config.jitter, config.hflip, generator)
    tokens = data.train_captions.tokens[data.train_captions.sample(batch, config.captions_per_image, rng)]
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        if data.regions is None:
            image_features, text_features, scale = model(pixels, tokens)
        else:
            image_features, patches = model.encode_image_and_patches(pixels)
            text_features, scale = model.encode_text(tokens), model.logit_scale.exp()
    loss = clip_loss(image_features.float(), text_features.float(), scale.float(), config.captions_per_image)
    if data.regions is not None:
        nce, loc = _grounding_step(run, batch, patches, crops, scale, rng)
        stats.region_losses.append((nce.item(), loc.item()))
        loss = loss + config.grounding_weight * (nce + loc)
    return loss


def _end_epoch(run: _TrainRun, state: _LoopState, clock: _Clock, stats: _EpochStats) -> None:
    """After epoch `state.epoch`: its history entry (loss, speed, val recall and pointing game), and a checkpoint
    when its val text->image R@10 is the best so far (without validation: every epoch's)."""
    config, data = run.config, run.data
    entry = {"epoch": state.epoch, "step": state.step, "loss": round(float(np.mean(stats.losses)), 4),
             "images_per_s": round(stats.images_per_s(), 1), "seconds": round(clock.elapsed(), 1)}
    if stats.region_losses:
        entry["region_nce"], entry["region_loc"] = (
            round(float(v), 4) for v in np.mean(stats.region_losses, 0))
    if data.val_captions is not None:
        entry["val"] = embed_for_eval(run.model, data.eval_cache, data.val_images, data.val_captions)
        if data.val_regions:
            entry["val"]["pointing_game"] = pointing_for_eval(run.model, data.eval_cache, data.val_regions)
    state.history.append(entry)
    _logger.info("epoch %d: %s", state.epoch, entry)
    if config.progress:
        tqdm.write(f"epoch {state.epoch}: loss {entry['loss']:.3f}, {entry['images_per_s']:.0f} img/s"
                   + (f", val t2i R@10 {entry['val']['text_to_image']['R@10']:.1f}" if "val" in entry else "")
                   + (f", pointing {entry['val']['pointing_game']:.1f}" if "pointing_game" in entry.get("val", {})
                      else ""))
    score = entry["val"]["text_to_image"]["R@10"] if "val" in entry else state.epoch
    if state.best is None or score > state.best["score"]:
        state.best = {"score": score, **entry}
        state.best_model = _save_best(run, state.run_id, entry)


def _grounding_step(run: _TrainRun, batch: np.ndarray, patches: torch.Tensor, crops: torch.Tensor,
                    scale: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The phrase-region losses of one micro-batch (see indexer/phrase_region_loss.py)."""
    model, regions, use_bf16 = run.model, run.data.regions, run.use_bf16
    sampled = regions.sample(batch, run.config.grounding_phrases, rng)
    device = patches.device
    if len(sampled.image_index) < 2:
        zero = patches.float().sum() * 0
        return zero, zero
    coverage = patch_coverage(sampled.boxes.to(device), sampled.box_region.to(device), len(sampled.image_index),
                              crops.to(device), sampled.image_index[sampled.box_region].to(device),
                              model.patch_grid)
    unique, inverse = torch.unique(sampled.text_ids, return_inverse=True)  # each distinct text encoded once
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        phrase_features = model.encode_text(regions.tokens[unique])[inverse.to(device)]
    dropout = model.clip.visual.patch_dropout
    kept = getattr(dropout, "kept", None)
    nce, loc, _ = region_losses(patches.float(), kept, coverage, sampled.image_index.to(device),
                                phrase_features.float(), sampled.text_ids.to(device), sampled.localize.to(device),
                                scale.float())
    return nce, loc


def _logit_scale(model: GroundexModel) -> torch.Tensor:
    clip = model.clip
    return clip.base_model.model.logit_scale if hasattr(clip, "base_model") else clip.logit_scale


def _save_best(run: _TrainRun, run_id: int, entry: dict[str, Any]) -> tuple[str, str]:
    """Write the current weights as a checkpoint (LoRA merged into a copy) and record it with run `run_id` and the
    epoch's history `entry`; returns its (id, path)."""
    import copy

    config, parent = run.config, run.parent
    to_save = run.model
    if config.mode == "lora":
        to_save = copy.deepcopy(run.model)
        merge_lora(to_save)
    to_save.spec.parent = parent
    # What made the weights, not which run: the hash stays a content hash (the catalog row records the run), so an
    # interrupted and resumed run stores the same checkpoint as an uninterrupted one.
    to_save.spec.extra = {"mode": config.mode, "epoch": entry["epoch"]}
    artefact = store_model(run.workdir, to_save, source="trained", parent_id=parent, run_id=run_id,
                           metrics=entry.get("val", {}), mode=config.mode, trainable_params=run.trainable,
                           total_params=run.total, data=run.data_summary)
    return artefact.id, str(artefact.path)


def _find_resumable(workdir: Workdir) -> Path | None:
    runs = sorted(_state_dir(workdir, 0).parent.glob("run-*/last"), key=lambda p: int(p.parent.name.split("-")[1]))
    return runs[-1] if runs else None


def resolve_base(workdir: Workdir, base: str) -> tuple[str, str | None]:
    """What `create_model` builds from `base`, and the parent model's id: a checkpoint folder or a recorded model
    (label or hash prefix) is the parent; a preset or an open_clip name has none."""
    folder = Path(base).expanduser()
    if folder.is_dir():
        return str(folder), (None if missing_files("model", folder) else content_hash("model", folder))
    with Catalog.open(workdir, read_only=True) as catalog:
        recorded = catalog.find_artefact("model", base)
    return (str(recorded.path), recorded.id) if recorded is not None else (base, None)


def no_captions_message(workdir: Workdir, split: str) -> str:
    """What to do when the split has nothing to train on."""
    with Catalog.open(workdir, read_only=True) as catalog:
        images = len(catalog.image_rows(split))
        total = catalog.counts()["images"]
    if total == 0:
        return "the workdir has no images: ingest some first (`groundex ingest --help`)"
    return (f"split {split!r} has no captioned images to train on ({images:,} images in it, {total:,} in the workdir). "
            "To search images without captions, record a pretrained model instead of training one: "
            "`groundex model add ViT-B-32 --pretrained laion2b_s34b_b79k` (or a .safetensors file, or a folder "
            "written by `groundex model export`), then `groundex index`. To train, ingest captions "
            "(`groundex ingest --help`) or pass --train-split")
