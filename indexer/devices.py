"""Where and in what precision models run: the device, and the one bf16 decision (training, embedding, the
captioner). Needs torch only."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import PRECISIONS

__all__ = ["autocast", "bf16_is_fast", "default_device", "precision_uses_bf16"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 autocast pays off on GPUs that support it and on CPUs with AVX512-BF16 or AMX; elsewhere
    it is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bfloat16: 'bf16' always, 'fp32' never, 'auto' where `bf16_is_fast`.
    The one place this is decided (CLIP training, embedding and the captioner).

    Known cost of the policy, kept on purpose for now: on an H200, 'auto' picks bf16 for the `tiny` preset,
    which is launch-bound there and trains 1.5x (batch 128) to 1.8x (batch 512) slower in bf16 than in fp32,
    to the same accuracy (docs/scale.md, "GPU paths"). A larger model has not been measured."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and bf16_is_fast(device))


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bfloat16 autocast on `device` when `bf16`, else a context that changes nothing. Encoders return float32
    L2-normalized vectors either way (the normalization runs in float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
