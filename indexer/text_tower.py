"""A checkpoint's text tower run from its weights with torch alone: the query path of `search` and `ground`.

A one-off `groundex search` spends most of its time importing open_clip, which imports torchvision and
transformers (about 2.6 s of 4.3 s here), to encode one short text. For the text towers groundex trains (open_clip's
standard `TextTransformer` with our word tokenizer) this module computes the same function from
`model.safetensors` directly: token and position embeddings, pre-norm residual blocks (causal multi-head
attention, GELU MLP, optional LayerScale), the final LayerNorm, pooling at the end-of-text token, and the
projection, all in float32. `load_text_tower` returns None for anything else (open_clip's BPE tokenizer, HF or
custom text towers, options it does not know), and callers load the whole model as before.

tests/test_text_tower.py checks that it gives `GroundexModel.encode_text`'s vectors (cosine 1 to float32 rounding).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from warehouse import InputError

from .devices import default_device
from .model_spec import load_spec
from .tokenizer import WordTokenizer, tokenizer_from_json

__all__ = ["load_text_tower", "TextTower"]

# text_cfg keys of open_clip's CLIPTextCfg this module computes faithfully, with the values it supports (None:
# any value); a config with any other key, or another value, runs through open_clip instead
_SUPPORTED: dict[str, tuple[Any, ...] | None] = {
    "context_length": None, "vocab_size": None, "width": None, "heads": None, "layers": None, "mlp_ratio": None,
    "ls_init_value": None, "pad_id": None, "eos_id": None, "output_tokens": None,
    "pool_type": ("argmax", "eos", "first", "last"), "proj_type": ("linear",), "proj_bias": (False,),
    "embed_cls": (False,), "no_causal_mask": (False,), "final_ln_after_pool": (False,),
    "block_type": (None, "default"), "act_kwargs": (None,), "norm_kwargs": (None,), "hf_model_name": (None,),
    "qk_norm": (False,), "scaled_cosine_attn": (False,), "scale_heads": (False,), "scale_attn_inner": (False,),
    "scale_attn": (False,), "scale_fc": (False,),
}
_TOP_LEVEL = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "conv_stem"}  # conv_stem: image tower only


class TextTower:
    """`encode_text` of a checkpoint whose text tower is a standard open_clip CLIP text transformer."""

    def __init__(self, weights: dict[str, torch.Tensor], text_cfg: dict[str, Any], quick_gelu: bool,
                 tokenizer: WordTokenizer, device: torch.device):
        self.w = {k: v.to(device=device, dtype=torch.float32) for k, v in weights.items()}
        self.heads = int(text_cfg.get("heads", 8))
        self.layers = int(text_cfg.get("layers", 12))
        self.pool = text_cfg.get("pool_type", "argmax")
        self.eos_id = int(text_cfg.get("eos_id", 2))
        self.quick_gelu = quick_gelu
        self.tokenizer = tokenizer
        self.device = device

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    @torch.no_grad()
    def encode_text(self, texts: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Strings or token ids (B, L) -> (B, D), L2-normalized, float32 (as `GroundexModel.encode_text`)."""
        tokens = (texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)).to(self.device)
        used = torch.nonzero((tokens != 0).any(dim=0))  # token id 0 pads: the causal tower never looks past it
        tokens = tokens[:, : int(used.max()) + 1 if len(used) else 1] if self.pool != "last" else tokens
        w, length = self.w, tokens.shape[1]
        x = F.embedding(tokens, w["token_embedding.weight"]) + w["positional_embedding"][:length]
        for i in range(self.layers):
            x = self._block(x, f"transformer.resblocks.{i}.")
        x = F.layer_norm(x, x.shape[-1:], w["ln_final.weight"], w["ln_final.bias"])
        rows = torch.arange(len(tokens), device=self.device)
        if self.pool == "eos":
            x = x[rows, (tokens == self.eos_id).int().argmax(dim=-1)]
        elif self.pool == "argmax":
            x = x[rows, tokens.argmax(dim=-1)]
        else:
            x = x[:, 0] if self.pool == "first" else x[:, -1]
        x = x @ w["text_projection"]
        return F.normalize(x, dim=-1)

    def _block(self, x: torch.Tensor, p: str) -> torch.Tensor:
        w = self.w
        batch, length, width = x.shape
        h = F.layer_norm(x, (width,), w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = F.linear(h, w[p + "attn.in_proj_weight"], w[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, width)
        a = F.linear(a, w[p + "attn.out_proj.weight"], w[p + "attn.out_proj.bias"])
        x = x + (a * w[p + "ls_1.gamma"] if p + "ls_1.gamma" in w else a)
        h = F.layer_norm(x, (width,), w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = F.linear(h, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h) if self.quick_gelu else F.gelu(h)
        h = F.linear(h, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"])
        return x + (h * w[p + "ls_2.gamma"] if p + "ls_2.gamma" in w else h)


def load_text_tower(folder: Path, device: torch.device | str | None = None) -> TextTower | None:
    """The checkpoint's text tower without open_clip, or None when it is not one this module computes, or when
    anything about the files is off (then the caller's `load_checkpoint` reports it)."""
    folder = Path(folder)
    try:
        spec = load_spec(folder)
        tokenizer_spec = json.loads((folder / "tokenizer.json").read_text())
    except (OSError, ValueError, InputError):
        return None
    config = spec.config
    text_cfg = config.get("text_cfg", {})
    if set(config) - _TOP_LEVEL or any(
            key not in _SUPPORTED or (_SUPPORTED[key] is not None and value not in _SUPPORTED[key])
            for key, value in text_cfg.items()):
        return None
    if not isinstance(tokenizer_spec, dict) or tokenizer_spec.get("kind") != "word":  # open_clip's import open_clip
        return None
    try:
        tokenizer = tokenizer_from_json(tokenizer_spec)
        with safe_open(str(folder / "model.safetensors"), "pt") as f:  # the text tower's tensors only
            weights = {k: f.get_tensor(k) for k in f.keys()  # noqa: SIM118 (safe_open has no __iter__)
                       if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")}
    except (OSError, ValueError, KeyError, TypeError, InputError, SafetensorError):
        return None
    return TextTower(weights, text_cfg, bool(config.get("quick_gelu", False)), tokenizer,
                     torch.device(device) if device is not None else default_device()) \
        if _fits(weights, text_cfg, tokenizer) else None


def _fits(weights: dict[str, torch.Tensor], text_cfg: dict[str, Any], tokenizer: WordTokenizer) -> bool:
    """Whether the weights are exactly a standard text tower of this config: every key known, every block there,
    the shapes the forward pass assumes (a checkpoint whose weights and config disagree is left to open_clip's
    strict loading, which reports it)."""
    fixed = {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection"}
    block = {"ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
             "mlp.c_proj.bias"}
    layers, heads = int(text_cfg.get("layers", 12)), int(text_cfg.get("heads", 8))
    scale = {"ls_1.gamma", "ls_2.gamma"} if text_cfg.get("ls_init_value") is not None else set()
    expected = fixed | {f"transformer.resblocks.{i}.{name}" for i in range(layers) for name in block | scale}
    if set(weights) != expected:
        return False
    vocab, width = weights["token_embedding.weight"].shape
    return (width % heads == 0 and vocab >= tokenizer.vocab_size
            and weights["positional_embedding"].shape == (tokenizer.context_length, width)
            and weights["text_projection"].dim() == 2 and weights["text_projection"].shape[0] == width
            and all(weights[f"transformer.resblocks.{i}.attn.in_proj_weight"].shape == (3 * width, width)
                    for i in range(layers)))
