"""grounding: which part of which image shows a phrase.

    Grounder            ground a phrase in one image, or search regions across the collection
    GroundingConfig     heatmap -> point and boxes parameters (tuned on val per model)
    evaluate_grounding  pointing game and box accuracy on Flickr30k Entities annotations
    render_overlay      the heatmap and boxes drawn on the image

Names load on first use (PEP 562), so `import grounding` costs nothing until one is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {  # public name -> the module that defines it
    "DEFAULT_SHORTLIST": "config", "GroundingConfig": "config", "load_config": "config",
    "evaluate_grounding": "evaluate", "metrics": "evaluate", "split_maps": "evaluate", "tune": "evaluate",
    "Grounder": "ground", "Grounding": "ground",
    "iou": "heatmap", "ScoredBox": "heatmap",
    "render_overlay": "overlay",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'grounding' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
