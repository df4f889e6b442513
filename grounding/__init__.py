"""grounding: which part of which image shows a phrase.

    Grounder            ground a phrase in one image, or search regions across the collection
    GroundingConfig     heatmap -> point and boxes parameters (tuned on val per model)
    evaluate_grounding  pointing game and box accuracy on Flickr30k Entities annotations
    render_overlay      the heatmap and boxes drawn on the image
"""

from .evaluate import evaluate_grounding, load_config, metrics, split_maps, tune
from .ground import DEFAULT_SHORTLIST, Grounder, Grounding
from .heatmap import Box, GroundingConfig
from .overlay import render_overlay

__all__ = ["Box", "DEFAULT_SHORTLIST", "evaluate_grounding", "Grounder", "Grounding", "GroundingConfig",
           "load_config", "metrics", "render_overlay", "split_maps", "tune"]
