"""A checkpoint's description without its weights: `ModelSpec` (config.json) and what can be read from it
(the patch grid) without building the model, so callers that only need these never import open_clip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warehouse import InputError

from .data import RESIZE_MODES

__all__ = ["CHECKPOINT_FILES", "load_spec", "ModelSpec", "OPENAI_MEAN", "OPENAI_STD", "spec_patch_grid"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json")


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model, saved as a checkpoint's config.json."""

    name: str                                  # open_clip model name, e.g. 'groundex-tiny' or 'ViT-B-32'
    config: dict[str, Any]                     # open_clip model config (embed_dim, vision_cfg, text_cfg)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    pretrained: str | None = None              # where the first weights came from (tag, file); None: random
    parent: str | None = None                  # hash of the checkpoint this one was trained from
    extra: dict[str, Any] = field(default_factory=dict)  # training summary, free-form
    # How images become the square input ("squash" | "center-crop", indexer.data.square_pixels). "squash"
    # keeps the whole frame (grounding wants every pixel under a patch); "center-crop" is open_clip's eval
    # preprocessing, which pretrained weights expect for faithful retrieval. Absent in old config.json: squash.
    resize: str = "squash"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise InputError(f"{self.name}: resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")


def load_spec(folder: Path) -> ModelSpec:
    """A checkpoint's ModelSpec (its config.json) without loading the weights; old configs lack `resize`
    and read as "squash", which is how their models saw images."""
    path = Path(folder) / "config.json"
    try:
        spec = ModelSpec(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: not a groundex checkpoint (missing config.json)") from None
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as e:
        raise InputError(f"{folder}: unreadable checkpoint config ({e})") from None
    spec.mean, spec.std = tuple(spec.mean), tuple(spec.std)
    return spec


def spec_patch_grid(spec: ModelSpec) -> tuple[int, int] | None:
    """The patch grid (rows, cols) a spec's ViT image tower makes, or None for other towers."""
    vision = spec.config.get("vision_cfg", {})
    if "patch_size" not in vision or vision.get("timm_model_name"):
        return None
    size = vision.get("image_size", 224)
    rows, cols = (size, size) if isinstance(size, int) else size
    return int(rows) // int(vision["patch_size"]), int(cols) // int(vision["patch_size"])
