"""heads: what can be said of an image beyond its embedding: keyword tags, captions and their grounded phrases.

    mine_vocabulary    keyword vocabulary from the training phrases or captions, with counts
    Vocabulary         the vocabulary; `labels` gives each image's keyword labels from its captions
    tag_workdir        fit a tagger (knn, probe, zeroshot, fusion; choices on val) and store tags in the catalog
    evaluate_tags      micro/macro-F1 and mAP of every tagger against the prior
    load_tagger        a fitted tagger and its data, to tag new images
    train_captioner    the retrieval-augmented BLIP decoder, trained with the Hugging Face Trainer
    Captioner          a trained captioner: captions for catalog images or image files
    caption_workdir    caption images and store the captions in the catalog
    evaluate_captions  BLEU-1..4, ROUGE-L, CIDEr: with retrieval, without, and the nearest caption
    caption_metrics    the metrics alone
    train_workdir_chunker, open_chunker  the phrase chunker learned from the Entities markup (heads.chunker)
    ground_caption     a caption's phrases with their types and boxes; evaluate_chunks scores chunks and boxes
    TaggingConfig, CaptionerConfig, ...  the settings (heads.config: no torch or transformers to read them)

Names load on first use (PEP 562), so `import heads` costs nothing until one is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {  # public name -> the module that defines it
    "CaptionerConfig": "config", "METHODS": "config", "ProbeConfig": "config", "PROMPT": "config",
    "TaggingConfig": "config", "VocabularyConfig": "config",
    "caption_metrics": "caption_metrics",
    "Captioner": "captioning", "caption_workdir": "captioning", "evaluate_captions": "captioning",
    "find_captioner": "captioning", "train_captioner": "captioning",
    "best_threshold": "tag_methods", "KNN_KS": "tag_methods", "knn_scores": "tag_methods",
    "LinearProbe": "tag_methods", "prior_scores": "tag_methods", "tag_metrics": "tag_methods",
    "evaluate_tags": "tagging", "load_tagger": "tagging", "Tagger": "tagging", "tag_workdir": "tagging",
    "keywords": "vocabulary", "lemma": "vocabulary", "mine_vocabulary": "vocabulary", "Vocabulary": "vocabulary",
    "Chunker": "chunker", "ChunkerConfig": "chunker", "open_chunker": "chunker", "RuleChunker": "chunker",
    "evaluate_chunks": "phrases", "ground_caption": "phrases", "ground_captions": "phrases",
    "train_workdir_chunker": "phrases",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'heads' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
