"""The settings of training, embedding and the Ray engine, and the one error for missing embeddings.

They live apart from the code that uses them so that the command line can build its parser (and show the
defaults in `--help`) without importing torch, open_clip or faiss; each validates its own fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from warehouse import InputError

__all__ = ["EMBED_BATCH", "EmbedConfig", "MissingEmbeddingError", "MODES", "PRECISIONS", "RayEmbedConfig",
           "TrainConfig"]

PRECISIONS = ("auto", "fp32", "bf16")
# Images or captions per forward pass when embedding, by device type: on CPUs smaller batches run faster (they stay
# in cache: 1.2x to 1.7x over 256 for tiny, ViT-S-32 and ViT-B-32, docs/indexer.md), GPUs want large ones.
EMBED_BATCH = {"cpu": 64, "cuda": 256}
MODES = ("full", "locked-image", "lora")


@dataclass
class TrainConfig:
    base: str = "tiny"                 # what to start from: a preset ('tiny', from scratch), a recorded model (label or
    #                                    hash prefix), an open_clip name, or a checkpoint folder
    pretrained: str | None = None      # with an open_clip name: its pretrained tag or a .safetensors file
    mode: str = "full"                 # full | locked-image (LiT: image tower frozen) | lora (peft adapters)
    epochs: int = 20                   # upper bound on passes over the training images
    minutes: float | None = None       # wall-clock budget; when set, the schedule follows elapsed time
    batch_size: int = 128              # images per micro-batch (each brings `captions_per_image` captions)
    accumulate: int = 1                # micro-batches per optimizer step (each has its own negatives)
    captions_per_image: int = 1        # captions drawn per image per step (all are positives of the image)
    lr: float = 1e-3                   # peak learning rate (AdamW)
    weight_decay: float = 0.1          # on weight matrices only (not norms, biases, embeddings, temperature)
    warmup_fraction: float = 0.05      # of the schedule spent warming up linearly
    min_lr_ratio: float = 0.02         # cosine floor as a fraction of lr
    crop_scale: float = 0.6            # random resized crop keeps this fraction of the area or more (1: off)
    jitter: float = 0.2                # brightness/contrast jitter amplitude (0: off); no hue: captions name colours
    hflip: bool = False                # off by default: captions say "left" and "right"
    patch_dropout: float = 0.5         # FLIP: drop this fraction of image tokens while training (faster, regularizes)
    unmasked_fraction: float = 0.0     # the last fraction of the schedule trains without patch dropout (FLIP's
    #                                    unmasked tuning: evaluation sees every patch)
    grounding_weight: float = 1.0      # weight of the phrase-region objective (indexer/phrase_region_loss.py), used
    #                                    when the split has phrases with boxes; 0: global only (docs/grounding.md)
    grounding_phrases: int = 4         # entities sampled per image per step for that objective
    box_head_epochs: int = 20          # after the contrastive epochs, fit the grounding head (indexer/box_fit.py) on
    #                                    the kept checkpoint's frozen embeddings for this many epochs, when the split
    #                                    has phrases with boxes; 0: no head (boxes come from the heatmap)
    box_head_minutes: float = 2.0      # with a time budget (`minutes`), the head's share of it, by time (at most
    #                                    half the budget); the contrastive epochs get the rest
    precision: str = "auto"            # auto (bf16 where fast: AVX512-BF16/AMX CPUs, bf16 GPUs) | bf16 | fp32
    train_split: str = "train"
    max_train_images: int | None = None  # train on the first N images of the split (by id): quick runs, experiments
    val_split: str | None = "val"      # None: no validation (the last epoch's model is kept)
    val_max_images: int = 1000         # validate on at most this many val images (first by id)
    vocab_min_count: int = 2           # word tokenizer: words seen fewer times map to <unk>
    lora_rank: int = 8
    seed: int = 0
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))  # image decoding processes
    device: str | None = None          # default: cuda when available, else cpu
    progress: bool = True

    def head_seconds(self) -> float | None:
        """The box head's share of the time budget in seconds (None: no budget, or no head)."""
        if self.minutes is None or self.box_head_epochs == 0:
            return None
        return 60 * min(self.box_head_minutes, self.minutes / 2)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("epochs", "batch_size", "accumulate", "captions_per_image"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.minutes is not None and self.minutes <= 0:
            raise InputError(f"minutes must be > 0, got {self.minutes}")
        if not 0 <= self.patch_dropout < 1:
            raise InputError(f"patch_dropout must be in [0, 1), got {self.patch_dropout}")
        if not 0 <= self.unmasked_fraction <= 1:
            raise InputError(f"unmasked_fraction must be in [0, 1], got {self.unmasked_fraction}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0 < self.crop_scale <= 1:
            raise InputError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if self.box_head_epochs < 0 or self.box_head_minutes <= 0:
            raise InputError(f"box_head_epochs must be >= 0 and box_head_minutes > 0, got {self.box_head_epochs} and "
                             f"{self.box_head_minutes}")
        if self.grounding_weight < 0 or self.grounding_phrases < 1:
            raise InputError(f"grounding_weight must be >= 0 and grounding_phrases >= 1, got "
                             f"{self.grounding_weight} and {self.grounding_phrases}")


@dataclass
class EmbedConfig:
    batch_size: int | None = None  # images or captions per forward pass (default: EMBED_BATCH for the device)
    shard_size: int = 4096     # items per shard file: the most an interrupted run can lose
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))  # decoding processes
    patches: bool = True       # also store patch embeddings (grounding needs them)
    precision: str = "auto"    # auto (bf16 autocast where fast: AVX512-BF16/AMX CPUs, bf16 GPUs) | bf16 | fp32; stored
    #                            as float16 either way (docs/indexer.md: the same recall and pointing game as fp32)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_size", "workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def batch_for(self, device_type: str) -> int:
        """The batch size on a device of this type ('cpu', 'cuda', ...)."""
        return self.batch_size or EMBED_BATCH.get(device_type, EMBED_BATCH["cuda"])


@dataclass
class RayEmbedConfig:
    address: str | None = None        # a Ray cluster ("auto", "ray://host:10001"); None: a local Ray on this machine
    num_cpus: int | None = None       # local Ray only: cores to use (default: all)
    actors: int = 1                   # encoder actors (one model copy each; a GPU each where there are GPUs)
    batch_size: int | None = None     # images per encoder call (default: EMBED_BATCH, GPU's when the cluster has GPUs)
    decode_batch_size: int = 64       # images per decoding task
    patches: bool = True
    precision: str = "auto"           # as EmbedConfig.precision, decided on each actor's device
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0
    torch_threads: int | None = None  # CPU encoder: torch threads per actor (default: the cores / actors)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # passed to ray.init

    def __post_init__(self) -> None:
        for name in ("actors", "batch_size", "decode_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


class MissingEmbeddingError(KeyError):
    """Items asked for have no stored embedding (a KeyError, so lookups that fall back on embedding anew still
    catch it); its message is fit for a user."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
