"""grounding: which part of which image shows a phrase.

    Grounder            ground a phrase in one image, or search regions across the collection
    GroundingConfig     heatmap -> point and boxes parameters (tuned on val per model)
    evaluate_grounding  pointing game and box accuracy on Flickr30k Entities annotations
    render_overlay      the heatmap and boxes drawn on the image
"""

from .config import GroundingConfig, load_config
from .evaluate import evaluate_grounding, metrics, split_maps, tune
from .ground import DEFAULT_SHORTLIST, Grounder, Grounding
from .heatmap import ScoredBox
from .overlay import render_overlay

__all__ = ["DEFAULT_SHORTLIST", "evaluate_grounding", "Grounder", "Grounding", "GroundingConfig", "load_config",
           "metrics", "render_overlay", "ScoredBox", "split_maps", "tune"]
