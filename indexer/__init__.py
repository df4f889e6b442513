"""indexer: CLIP models, training, embeddings, FAISS indexes, search and their evaluation.

    create_model, load_checkpoint, GroundexModel   models (presets, open_clip names, checkpoints)
    add_model, export_model, remove_model, ...     models as artefacts of a workdir (`groundex model`)
    TrainConfig, EmbedConfig, RayEmbedConfig       the settings (indexer.config: no torch to read them)
    BoxHead, load_box_head, fit_box_head           the grounding head (the phrase picks a patch, the patch draws
                                                   the box), fitted to a trained model's frozen embeddings
    train                                          contrastive training (`groundex train`)
    index_workdir                                  embeddings and FAISS indexes (`groundex index`)
    Searcher, Where, search_allowed                search (and its filters), and the one filtered-kNN policy
    evaluate_retrieval, verify_workdir             `groundex eval retrieval`, `groundex verify`

Names load on first use (PEP 562), so `import indexer` costs nothing until one is needed: torch, open_clip
and faiss stay out of commands that do not use them.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {  # public name -> the module that defines it
    "add_model": "model_store", "check_model_label": "model_store", "export_model": "model_store",
    "label_model": "model_store", "model_records": "model_store", "remove_model": "model_store",
    "crop_window": "data", "FULL_FRAME": "data", "pixel_cache": "data",
    "EMBED_BATCH": "config", "EmbedConfig": "config", "MissingEmbeddingError": "config", "MODES": "config",
    "PRECISIONS": "config", "RayEmbedConfig": "config", "TrainConfig": "config",
    "load_embeddings": "shards",
    "evaluate_retrieval": "evaluate",
    "load_index": "index", "patch_ids": "index",
    "search_allowed": "knn",
    "default_device": "devices", "GroundexModel": "models", "load_checkpoint": "models",
    "precision_uses_bf16": "devices", "autocast": "devices", "ModelSpec": "model_spec", "load_spec": "model_spec",
    "spec_patch_grid": "model_spec", "load_text_tower": "text_tower", "TextTower": "text_tower",
    "phrase_maps": "phrase_region_loss", "phrase_maps_and_boxes": "phrase_region_loss",
    "BoxHead": "box_head", "load_box_head": "box_head", "BoxFitConfig": "box_fit", "fit_box_head": "box_fit",
    "index_workdir": "pipeline",
    "check_text_query": "search", "Hit": "search", "MAX_QUERY_CHARS": "search", "Searcher": "search",
    "Where": "search",
    "words": "tokenizer",
    "train": "train",
    "verify_workdir": "verify",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
