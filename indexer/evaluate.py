"""Retrieval recall@K, standard Flickr30k protocol.

Gallery = the split's images. Text->image: each caption's own image is its only positive. Image->text:
an image is a hit at K when any of its captions is among the top K captions. Exact (brute force), in
chunks, on L2-normalized embeddings, so figures do not depend on an ANN index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

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
