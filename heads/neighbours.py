"""Nearest training images of a batch of queries, from a FAISS index restricted to the training ids.

Both heads read neighbours: the kNN tagger votes with their labels and the captioner reads their
captions. A query that is itself a training image never gets itself back (`exclude_ids`), so what a
head learns from or is evaluated on never contains an image's own labels or captions.
"""

from __future__ import annotations

import faiss
import numpy as np

from indexer.knn import search_allowed
from warehouse import InputError


def training_neighbours(index: faiss.Index, queries: np.ndarray, gallery_ids: np.ndarray, k: int,
                        exclude_ids: np.ndarray | None = None, gallery_vectors: np.ndarray | None = None,
                        batch_size: int = 2048, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(rows (N, k) into the sorted `gallery_ids`, cosines (N, k)), nearest first; -1 where there is none.

    `index` holds the collection's image vectors under their catalog ids (any FAISS type); the search
    is restricted to `gallery_ids` with an id selector. `exclude_ids` (N,): each query's own image id,
    or -1. Where an approximate index returns fewer than k, `gallery_vectors` (when given, aligned with
    `gallery_ids`) fill in exactly: the policy of `indexer.knn.search_allowed`."""
    gallery_ids = np.asarray(gallery_ids, dtype=np.int64)
    if len(gallery_ids) == 0 or np.any(np.diff(gallery_ids) <= 0):
        raise ValueError("gallery_ids must be non-empty, sorted and unique")
    k = int(k)
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    ids, sims = search_allowed(index, queries, k, gallery_ids, vectors=gallery_vectors, exclude_ids=exclude_ids,
                               batch_size=batch_size, progress=progress)
    rows = np.where(ids >= 0, np.searchsorted(gallery_ids, ids), -1)
    return rows, sims
