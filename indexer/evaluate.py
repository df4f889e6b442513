"""Retrieval recall@K, standard Flickr30k protocol, and `groundex eval retrieval` (`evaluate_retrieval`).

Gallery = the split's images. Text->image: each caption's own image is its only positive. Image->text:
an image is a hit at K when any of its captions is among the top K captions. Exact (brute force), in
chunks, on L2-normalized embeddings, so figures do not depend on an ANN index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from warehouse import Catalog, InputError, Workdir, recorded_run

from .shards import load_embeddings

KS = (1, 5, 10)


def _ranks_of_positive(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """For each row, how many entries score strictly higher than its positive column."""
    pos_scores = scores[np.arange(len(scores)), positive][:, None]
    return (scores > pos_scores).sum(axis=1)


def recall_at_k(image_embeddings: np.ndarray, image_ids: Sequence[int], text_embeddings: np.ndarray,
                text_image_ids: Sequence[int], ks: Sequence[int] = KS, chunk: int = 1024
                ) -> dict[str, dict[str, float]]:
    """{"text_to_image": {"R@1": %, ...}, "image_to_text": {...}} for normalized (N, D) and (M, D) embeddings."""
    images = torch.as_tensor(np.asarray(image_embeddings, dtype=np.float32))  # (N, D)
    texts = torch.as_tensor(np.asarray(text_embeddings, dtype=np.float32))    # (M, D)
    column = {int(i): c for c, i in enumerate(image_ids)}
    try:
        positive = np.array([column[int(i)] for i in text_image_ids])       # (M,)
    except KeyError as e:
        raise ValueError(f"caption of image {e.args[0]}, which is not in the gallery") from None
    t2i_ranks = np.concatenate([
        _ranks_of_positive((texts[s:s + chunk] @ images.T).numpy(), positive[s:s + chunk])
        for s in range(0, len(texts), chunk)])
    # Image -> text: the best rank among the image's own captions.
    own_by_image: dict[int, list[int]] = {}
    for caption_row, image_col in enumerate(positive.tolist()):
        own_by_image.setdefault(image_col, []).append(caption_row)
    best = np.full(len(images), np.iinfo(np.int64).max)
    for s in range(0, len(images), chunk):
        scores = (images[s:s + chunk] @ texts.T).numpy()                      # (n, M)
        for row in range(scores.shape[0]):
            own = own_by_image.get(s + row, [])
            if own:
                higher = (scores[row][None, :] > scores[row, own][:, None]).sum(axis=1)
                best[s + row] = higher.min()
    has_captions = best < np.iinfo(np.int64).max
    return {
        "text_to_image": {f"R@{k}": round(100.0 * float((t2i_ranks < k).mean()), 2) for k in ks},
        "image_to_text": {f"R@{k}": round(100.0 * float((best[has_captions] < k).mean()), 2) for k in ks},
    }


def evaluate_retrieval(workdir: Workdir, split: str, model_id: str | None = None) -> dict[str, Any]:
    """Recall@K on `split` from the stored embeddings (run `groundex index` for the split first)."""
    with Catalog.open(workdir, read_only=True) as catalog:
        info = catalog.model(model_id)
        images = catalog.image_rows(split)
        captions = catalog.caption_rows(split)
    if not images or not captions:
        raise InputError(f"split {split!r} has {len(images)} images and {len(captions)} captions: nothing to evaluate")
    try:
        image_ids, image_vectors = load_embeddings(workdir, info.id, "image", [i for i, _ in images])
        caption_ids, caption_vectors = load_embeddings(workdir, info.id, "caption", [c for c, _, _ in captions])
    except KeyError as e:
        raise InputError(f"{e.args[0]} (try `groundex index --split {split}`)") from None
    owner = {c: i for c, i, _ in captions}
    metrics = recall_at_k(image_vectors, image_ids, caption_vectors, [owner[c] for c in caption_ids.tolist()])
    result = {"split": split, "model_id": info.id, "images": len(image_ids), "queries": len(caption_ids),
              **metrics}
    with recorded_run(workdir, "eval retrieval", {"split": split}, info.id) as (_, record):
        record.update(result)
    return result
