"""CLIP models over open_clip: our presets, any open_clip name, or a local checkpoint.

Presets are open_clip model configs (`model_configs/*.json`, registered with `open_clip.add_model_config`,
so `open_clip.list_models()` shows them). A preset is built with the vocabulary size of its word
tokenizer; an open_clip name is built by `open_clip.create_model` with its own tokenizer and optional
`pretrained` tag or `.safetensors` file.

Checkpoints are folders: `model.safetensors`, `config.json` (the ModelSpec), `tokenizer.json`. Their
content hash (of those three files) names the folder and is recorded by every embedding, index and
result made with the model. Nothing here unpickles anything.

How an image becomes the model's square input is a setting of the model, `ModelSpec.resize`, saved
in config.json and honoured everywhere pixels are made (`pixels_from_images`, `indexer.data`'s decoding
and pixel caches, embedding): "squash" resizes the whole frame without cropping, so every pixel maps to
a patch (grounding sees the whole frame; presets and checkpoints from before the setting use it);
"center-crop" is open_clip's own eval preprocessing (short side resized, central square cut out), what
a pretrained model was trained and evaluated with. Grounding maps a center-crop model's patch grid onto
the crop window of the image (`indexer.data.crop_window`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from warehouse import InputError, content_hash, place

from .box_head import BoxHead, load_box_head
from .data import check_resize, square_pixels
from .devices import default_device
from .model_spec import CHECKPOINT_FILES, OPENAI_MEAN, OPENAI_STD, ModelSpec, load_spec
from .tokenizer import OpenClipTokenizer, WordTokenizer, tokenizer_from_json

_logger = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(PRESETS_DIR)
PRESET_PREFIX = "groundex-"
HUB_PREFIX = "hf-hub:"
# What groundex adds to a preset beyond its open_clip config (which stays loadable by open_clip itself):
# tiny gets a convolutional stem (+0.6 val R@10 at 5 minutes on the sample, docs/indexer.md).
PRESET_EXTRAS: dict[str, dict[str, Any]] = {"groundex-tiny": {"conv_stem": [32, 64, 128]}}


def list_presets() -> list[str]:
    """Short names of our presets ('tiny', ...); `groundex-<name>` is the open_clip name."""
    return sorted(p.stem.removeprefix(PRESET_PREFIX) for p in PRESETS_DIR.glob(f"{PRESET_PREFIX}*.json"))


class GroundexModel(nn.Module):
    """An open_clip CLIP with a tokenizer, L2-normalized encoders and patch embeddings."""

    def __init__(self, clip: nn.Module, tokenizer: WordTokenizer | OpenClipTokenizer, spec: ModelSpec):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.spec = spec
        visual = clip.visual
        if hasattr(visual, "output_tokens"):
            visual.output_tokens = True  # forward returns (pooled, patch tokens)
        size = getattr(visual, "image_size", spec.config.get("vision_cfg", {}).get("image_size", 224))
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.register_buffer("_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.box_head: BoxHead | None = None  # patch -> box (indexer/box_head.py), when trained with boxes

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def embed_dim(self) -> int:
        return int(self.spec.config["embed_dim"])

    @property
    def patch_grid(self) -> tuple[int, int]:
        grid = getattr(self.clip.visual, "grid_size", None)
        if grid is None:
            raise NotImplementedError(f"{self.spec.name}: patch embeddings need a ViT image tower")
        return int(grid[0]), int(grid[1])

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def resize(self) -> str:
        """How images become this model's input: "squash" or "center-crop" (`ModelSpec.resize`)."""
        return self.spec.resize

    # -- pixels -----------------------------------------------------------------------------------

    def pixels_from_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> uint8 tensor (B, 3, S, S) at the model's input size, resized by `self.resize`."""
        arrays = [square_pixels(im.convert("RGB"), self.image_size, self.resize) for im in images]
        return torch.from_numpy(np.stack(arrays))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> normalized float on the model's device; float input is taken as [0, 1]."""
        pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype == torch.uint8:
            pixels = pixels.float().div_(255)
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        return (pixels - self._mean) / self._std

    # -- encoders ---------------------------------------------------------------------------------

    def _visual(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.clip.visual(self.normalize(pixels))
        if isinstance(out, tuple):
            pooled, tokens = out
            proj = getattr(self.clip.visual, "proj", None)
            patches = tokens @ proj if proj is not None else tokens  # (B, P, D)
            return pooled, patches
        return out, None

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D), L2-normalized."""
        return F.normalize(self._visual(pixels)[0].float(), dim=-1)

    def encode_image_and_patches(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: global (B, D) and patch (B, P, D) embeddings, each L2-normalized.

        Patches are the last layer's patch tokens after the final LayerNorm, through the same
        projection as the pooled token, so they live in the joint image-text space."""
        pooled, patches = self._visual(pixels)
        if patches is None:
            raise NotImplementedError(f"{self.spec.name}: patch embeddings need a ViT image tower")
        return F.normalize(pooled.float(), dim=-1), F.normalize(patches.float(), dim=-1)

    def encode_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, P, D), L2-normalized, P = grid_h * grid_w in row-major order."""
        return self.encode_image_and_patches(pixels)[1]

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_text(self, texts: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Strings or token ids (B, L) -> (B, D), L2-normalized."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        return F.normalize(self._encode_tokens(tokens.to(self.device)).float(), dim=-1)

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's `CLIP.encode_text`, run on the shortest prefix that holds every sequence's tokens.

        The text tower is causal and pools at the end-of-text token, so the padding after the longest
        text cannot change any output; leaving it out saves most of the tower's work on short texts
        (phrases have a handful of tokens in a context of 32 or 77). Other text towers run unchanged."""
        clip = self.clip.base_model.model if hasattr(self.clip, "base_model") else self.clip  # peft wraps it
        mask = getattr(clip, "attn_mask", None)
        used = torch.nonzero((tokens != 0).any(dim=0))  # token id 0 pads in our and open_clip's tokenizers
        length = int(used.max()) + 1 if len(used) else 1
        if (not isinstance(clip, open_clip.CLIP) or mask is None or length >= tokens.shape[1]
                or getattr(clip, "text_pool_type", None) not in ("eos", "argmax")):
            return self.clip.encode_text(tokens)
        tokens = tokens[:, :length]
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)
        x = clip.ln_final(clip.transformer(x, attn_mask=mask[:length, :length]))
        x = open_clip.transformer.text_global_pool(x, tokens, clip.text_pool_type,
                                                   eos_token_id=getattr(clip, "text_eos_id", None))
        if clip.text_projection is None:
            return x
        return clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(pixels), self.encode_text(tokens), self.clip.logit_scale.exp()


class TrackedPatchDropout(PatchDropout):
    """open_clip's PatchDropout (FLIP) that remembers which patches it kept: `kept` (B, K) cell indices
    in row-major grid order, or None when nothing was dropped, so patch outputs map back to their cells."""

    def __init__(self, prob: float):
        super().__init__(prob, exclude_first_token=True)
        self.kept: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = None
        if not self.training or self.prob == 0.0:
            return x
        cls_token, patches = x[:, :1], x[:, 1:]  # (B, 1, W), (B, P, W)
        b, p = patches.shape[:2]
        keep = max(1, int(p * (1 - self.prob)))
        kept = torch.randn(b, p, device=x.device).topk(keep, dim=-1).indices  # (B, K)
        self.kept = kept
        return torch.cat([cls_token, patches[torch.arange(b, device=x.device)[:, None], kept]], dim=1)


# -- construction ---------------------------------------------------------------------------------


class ConvStem(nn.Sequential):
    """Early convolutions for a ViT ("Early Convolutions Help Transformers See Better", Xiao et al. 2021):
    3x3 stride-2 convolutions down to the patch grid, then a 1x1 to the token width. Same output as the
    patchify conv it replaces, (B, width, grid, grid), but it trains much better from scratch on little data."""

    def __init__(self, channels: Sequence[int], width: int, patch_size: int):
        layers: list[nn.Module] = []
        c_in, stride = 3, 1
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]
            c_in, stride = c_out, stride * 2
        if stride != patch_size:
            raise ValueError(f"conv_stem of {len(channels)} stride-2 layers downsamples {stride}x, "
                             f"but the patch size is {patch_size}")
        layers.append(nn.Conv2d(c_in, width, 1))
        super().__init__(*layers)


def _build_clip(config: dict[str, Any]) -> nn.Module:
    """An open_clip model from its config; our extra key `conv_stem` (channels) swaps the ViT patchify conv."""
    config = dict(config)
    conv_stem = config.pop("conv_stem", None)
    custom_text = config.pop("custom_text", False) or "hf_model_name" in config.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    clip = cls(**config)
    if conv_stem:
        vision = config["vision_cfg"]
        clip.visual.conv1 = ConvStem(conv_stem, vision["width"], vision["patch_size"])
    return clip


def resolve_name(name: str) -> str:
    """'tiny' -> 'groundex-tiny'; other names pass through."""
    return PRESET_PREFIX + name if name in list_presets() else name


def create_model(name: str = "tiny", pretrained: str | None = None, tokenizer: WordTokenizer | None = None,
                 device: torch.device | str | None = None, resize: str | None = None) -> GroundexModel:
    """A model by preset ('tiny'), open_clip name (+ `pretrained` tag or .safetensors file) or checkpoint dir.

    Presets use a word tokenizer (`tokenizer`, built from the training captions); its vocabulary size
    and context length set the text tower's. `resize` ("squash" | "center-crop", see `ModelSpec.resize`)
    defaults to "squash" for presets and open_clip names; a checkpoint keeps its own unless one is given
    (saving the model then makes a new checkpoint, with its own hash).

    A local `.safetensors` file for an open_clip name is loaded by open_clip's loader into the model
    built empty, so open_clip's "initialized randomly" warning is not shown for it; a file that cannot
    be read or does not fit raises.
    """
    if resize is not None:
        check_resize(resize)
    device = torch.device(device) if device is not None else default_device()
    path = Path(name).expanduser()
    if path.is_dir():
        model = load_checkpoint(path, device)
        if resize is not None:
            model.spec.resize = resize
        return model
    full = resolve_name(name)
    if full.startswith(PRESET_PREFIX):
        if full.removeprefix(PRESET_PREFIX) not in list_presets():
            raise InputError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
        if tokenizer is None:
            raise ValueError(f"preset {name!r} needs a word tokenizer built from the training captions")
        config = {**open_clip.get_model_config(full), **PRESET_EXTRAS.get(full, {})}
        config["text_cfg"].update(vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length,
                                  eos_id=tokenizer.EOT, pad_id=tokenizer.PAD)
        spec = ModelSpec(name=full, config=config, pretrained=pretrained, resize=resize or "squash")
        clip = _build_clip(config)
        if pretrained:
            _logger.info("%s: weights loaded from %s", full, _load_weights(clip, Path(pretrained)))
        return GroundexModel(clip, tokenizer, spec).to(device).eval()
    if full.startswith(HUB_PREFIX):
        if pretrained:
            raise InputError(f"{full} brings its own weights from the hub: drop --pretrained")
        return _hub_model(full, resize, device)
    if full not in open_clip.list_models():
        raise InputError(f"unknown model {name!r}: not a preset ({', '.join(list_presets())}), "
                         "not a checkpoint folder, not an open_clip model name (open_clip.list_models()), "
                         f"not a {HUB_PREFIX}ORG/NAME id")
    if pretrained and Path(pretrained).suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise InputError(f"{pretrained}: pickle checkpoints are refused; convert the weights to .safetensors")
    if pretrained and _is_local_weights(pretrained):
        # open_clip would load the file itself, but build it empty and load it ourselves: our errors name
        # the file, and its "initialized randomly" warning (true of the empty build) is not shown for it
        with _no_random_init_warning(full):
            clip = open_clip.create_model(full, pretrained=None)
        _logger.info("%s: weights loaded from %s", full, _load_open_clip_weights(clip, Path(pretrained).expanduser()))
    else:
        try:
            clip = open_clip.create_model(full, pretrained=pretrained)
        except RuntimeError as e:  # open_clip's word for an unknown tag, or weights it could not fetch
            raise InputError(f"{full} with pretrained {pretrained!r}: {str(e).splitlines()[0]} (tags are fetched "
                             "from the hub or read from its local cache; offline, pass a .safetensors file)") from None
    config = open_clip.get_model_config(full)
    pp = getattr(clip.visual, "preprocess_cfg", {}) or {}
    spec = ModelSpec(name=full, config=config, mean=tuple(pp.get("mean", OPENAI_MEAN)),
                     std=tuple(pp.get("std", OPENAI_STD)), pretrained=pretrained, resize=resize or "squash")
    return GroundexModel(clip, OpenClipTokenizer(full), spec).to(device).eval()


def _hub_model(full: str, resize: str | None, device: torch.device) -> GroundexModel:
    """An open_clip model from a Hugging Face hub repository (`hf-hub:ORG/NAME`): its open_clip_config.json and
    open_clip_model.safetensors, fetched or read from the local hub cache (offline, HF_HUB_OFFLINE=1). The
    repository's pickle weights are never loaded."""
    from huggingface_hub import hf_hub_download

    repo = full.removeprefix(HUB_PREFIX)
    files = {}
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        try:
            files[name] = Path(hf_hub_download(repo, name))
        except Exception as e:  # offline without the file, no such repository or file, network errors
            raise InputError(f"{full}: could not get {name} from the hub or its local cache ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); offline, copy a hub cache that holds "
                             "it (HF_HOME) or add a folder written by `groundex model export`") from None
    try:
        hub = json.loads(files["open_clip_config.json"].read_text())
        config, preprocess = hub["model_cfg"], hub.get("preprocess_cfg", {})
    except (json.JSONDecodeError, KeyError) as e:
        raise InputError(f"{files['open_clip_config.json']}: not an open_clip config ({e})") from None
    clip = _build_clip(config)
    _load_open_clip_weights(clip, files["open_clip_model.safetensors"])
    clip.visual.preprocess_cfg = preprocess  # what open_clip records: `model add` reads its resize mode
    text = config.get("text_cfg", {})
    tokenizer = OpenClipTokenizer(full, context_length=text.get("context_length", 77),
                                  hf_tokenizer_name=text.get("hf_tokenizer_name"),
                                  tokenizer_kwargs=text.get("tokenizer_kwargs"),
                                  tokenizer_mode=text.get("tokenizer_mode"))
    spec = ModelSpec(name=full, config=config, mean=tuple(preprocess.get("mean", OPENAI_MEAN)),
                     std=tuple(preprocess.get("std", OPENAI_STD)), pretrained=full, resize=resize or "squash")
    return GroundexModel(clip, tokenizer, spec).to(device).eval()


def _is_local_weights(pretrained: str) -> bool:
    """A file or folder of weights (as opposed to an open_clip pretrained tag such as 'laion2b_s34b_b79k')."""
    path = Path(pretrained).expanduser()
    return path.suffix == ".safetensors" or path.exists()


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _no_random_init_warning(name: str) -> Iterator[None]:
    """Silence open_clip's "No pretrained weights loaded for model '<name>'" (a root-logger warning from
    `open_clip.create_model`) and nothing else, while the caller builds a model it loads weights into."""
    message = _DropMessage(f"No pretrained weights loaded for model '{name}'")
    root = logging.getLogger()
    root.addFilter(message)
    try:
        yield
    finally:
        root.removeFilter(message)


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: only .safetensors weights are loaded (no pickles)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    return path


def _load_open_clip_weights(clip: nn.Module, path: Path) -> Path:
    """open_clip's own loader (its key conversions and position-embedding resizing, strict), on a
    .safetensors file only, with errors that name the file. Returns the file loaded."""
    path = _weights_file(path)
    try:
        open_clip.load_checkpoint(clip, str(path), strict=True)
    except SafetensorError as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    except (RuntimeError, KeyError, ValueError, StopIteration) as e:  # StopIteration: no tensors at all
        raise InputError(f"{path}: weights do not fit the model: {(str(e) or 'empty').splitlines()[0]}") from None
    return path


def _load_weights(clip: nn.Module, path: Path) -> Path:
    """A .safetensors file (or a checkpoint folder's) into `clip`, strictly. Returns the file loaded."""
    path = _weights_file(path)
    try:
        state = load_file(str(path))
    except Exception as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        clip.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit the model: {str(e).splitlines()[0]}") from None
    return path


# -- checkpoints ----------------------------------------------------------------------------------


def checkpoint_hash(folder: Path) -> str:
    """sha256 over the checkpoint's files (first 16 hex digits): same weights and config, same hash."""
    return content_hash("model", folder)


def write_checkpoint(model: GroundexModel, folder: Path) -> None:
    """Write `model`'s files (weights, config, tokenizer) into `folder`, which must exist."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.clip.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(asdict(model.spec), indent=2, sort_keys=True, default=list))
    (folder / "tokenizer.json").write_text(json.dumps(model.tokenizer.to_json()))
    if model.box_head is not None:
        model.box_head.save(folder)


def save_checkpoint(model: GroundexModel, models_dir: Path) -> tuple[str, Path]:
    """Write `model` as `models_dir/<hash>/` (atomically: a temp folder renamed into place), unrecorded; a
    workdir's models are stored with `indexer.model_store.store_model`."""
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=models_dir))
    try:
        write_checkpoint(model, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return place("model", staging, models_dir)


def load_checkpoint(folder: Path, device: torch.device | str | None = None) -> GroundexModel:
    folder = Path(folder)
    missing = [n for n in CHECKPOINT_FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a groundex checkpoint (missing {', '.join(missing)})")
    spec = load_spec(folder)
    try:
        tokenizer = tokenizer_from_json(json.loads((folder / "tokenizer.json").read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise InputError(f"{folder}: unreadable checkpoint config ({e})") from None
    clip = _build_clip(spec.config)
    _load_weights(clip, folder / "model.safetensors")
    device = torch.device(device) if device is not None else default_device()
    model = GroundexModel(clip, tokenizer, spec)
    model.box_head = load_box_head(folder)
    if model.box_head is not None and model.box_head.grid != model.patch_grid:
        raise InputError(f"{folder}: its box head is for a {model.box_head.grid} patch grid, the model has "
                         f"{model.patch_grid}")
    return model.to(device).eval()
