"""Nearest training images of a batch of queries, from a FAISS index restricted to the training ids.

Both heads read neighbours: the kNN tagger votes with their labels and the captioner reads their
captions. A query that is itself a training image never gets itself back (`exclude_ids`), so what a
head learns from or is evaluated on never contains an image's own labels or captions.
"""

from __future__ import annotations

import faiss
import numpy as np
from tqdm import tqdm

from indexer.index import configure_search


def training_neighbours(index: faiss.Index, queries: np.ndarray, gallery_ids: np.ndarray, k: int,
                        exclude_ids: np.ndarray | None = None, gallery_vectors: np.ndarray | None = None,
                        batch_size: int = 2048, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(rows (N, k) into the sorted `gallery_ids`, cosines (N, k)), nearest first; -1 where there is none.

    `index` holds the collection's image vectors under their catalog ids (any FAISS type); the search
    is restricted to `gallery_ids` with an id selector. `exclude_ids` (N,): each query's own image id,
    or -1. Where an approximate index returns fewer than k, `gallery_vectors` (when given) fill in
    exactly."""
    gallery_ids = np.asarray(gallery_ids, dtype=np.int64)
    if len(gallery_ids) == 0 or np.any(np.diff(gallery_ids) <= 0):
        raise ValueError("gallery_ids must be non-empty, sorted and unique")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    exclude_ids = np.full(len(queries), -1, dtype=np.int64) if exclude_ids is None else np.asarray(exclude_ids)
    search_k = min(k + 1, len(gallery_ids))
    params = configure_search(index, search_k) or faiss.SearchParameters()
    params.sel = faiss.IDSelectorBatch(gallery_ids)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    starts = range(0, len(queries), batch_size)
    for s in tqdm(starts, desc="neighbours", unit="batch", disable=not progress):
        block = np.ascontiguousarray(queries[s:s + batch_size], dtype=np.float32)
        found_sims, found_ids = index.search(block, search_k, params=params)
        own = exclude_ids[s:s + len(block), None]
        keep = (found_ids >= 0) & (found_ids != own)
        for r in range(len(block)):  # at most k + 1 per row: drop the query's own image, keep k
            ids_r, sims_r = found_ids[r][keep[r]][:k], found_sims[r][keep[r]][:k]
            rows[s + r, :len(ids_r)] = np.searchsorted(gallery_ids, ids_r)
            sims[s + r, :len(ids_r)] = sims_r
    short = np.flatnonzero((rows < 0).any(axis=1))
    if len(short) and gallery_vectors is not None and len(gallery_ids) > k:
        exact_rows, exact_sims = exact_neighbours(queries[short], gallery_vectors, k,
                                                  _rows_of(gallery_ids, exclude_ids[short]))
        rows[short], sims[short] = exact_rows, exact_sims
    return rows, sims


def exact_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_rows: np.ndarray | None = None,
                     batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact (rows (N, k), cosines (N, k)) by brute force over `gallery` (M, D); `exclude_rows` (N,) a
    gallery row to leave out per query, or -1."""
    rows = np.empty((len(queries), k), dtype=np.int64)
    sims = np.empty((len(queries), k), dtype=np.float32)
    for s in range(0, len(queries), batch_size):
        block = queries[s:s + batch_size] @ gallery.T  # (b, M)
        if exclude_rows is not None:
            own = exclude_rows[s:s + batch_size]
            block[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1)
        rows[s:s + len(block)] = np.take_along_axis(top, order, axis=1)
        sims[s:s + len(block)] = np.take_along_axis(block, rows[s:s + len(block)], axis=1)
    return rows, sims


def _rows_of(gallery_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in the sorted gallery, or -1 where it is not in it."""
    rows = np.searchsorted(gallery_ids, ids).clip(0, len(gallery_ids) - 1)
    return np.where(gallery_ids[rows] == ids, rows, -1)
