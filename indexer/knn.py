"""k nearest neighbours in a FAISS index restricted to allowed ids: the one filtered-search policy.

Every filtered search in groundex goes through `search_allowed`: text/image search with a `where` filter
(`indexer.search`), the heads' nearest training images (`heads.neighbours`) and the phrase -> region
candidates in the patch index (`grounding.ground`).

- The filter is an id selector inside FAISS (`faiss.IDSelectorBatch`), so k hits come back whenever at least
  k allowed items exist, however selective the filter.
- The index's accuracy knobs come from `configure_search` (IVF nprobe, HNSW efSearch; overridable).
- An index of approximate codes (PQ, SQ: `needs_rerank`) can fetch RERANK_FACTOR x k candidates and score them
  exactly with the stored vectors (`rerank=True`).
- Where an approximate index returns fewer hits than the allowed items could give (IVF probes lists the filter
  left nearly empty; a selective filter cuts HNSW's graph), the allowed items are scored exactly from their
  vectors, when the caller gives them (`vectors`).
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np
from tqdm import tqdm

from .index import RERANK_FACTOR, configure_search, needs_rerank
from .index import rerank as exact_top_k

# The vectors of the allowed items: an (M, D) array aligned with `allowed`, or a function ids -> (ids, vectors)
# that reads them (e.g. `indexer.shards.load_embeddings` from the stored shards; any order of the ids it returns).
VectorSource = np.ndarray | Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def search_allowed(index: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, *,
                   vectors: VectorSource | None = None, exclude_ids: np.ndarray | None = None, rerank: bool = False,
                   nprobe: int | None = None, ef_search: int | None = None, batch_size: int = 2048,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, k), scores (N, k)) of each query's k nearest items in `index`, nearest first; -1 and -inf where
    there are fewer.

    `queries` (N, D); `allowed`: the ids the search is restricted to (None: all the index holds); `vectors`: the
    items' vectors, for re-ranking and the exact fallback (None: neither; the fallback needs `allowed`);
    `exclude_ids` (N,): an id each query must not get back (its own image), or -1; `rerank`: fetch
    RERANK_FACTOR x k from an index of approximate codes and score them with `vectors`; `nprobe`, `ef_search`:
    see `configure_search`."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)  # (N, D)
    if queries.ndim != 2 or int(k) < 1:
        raise ValueError(f"need queries (N, D) and k >= 1, got shape {queries.shape} and k={k}")
    k = int(k)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    allowed = None if allowed is None else np.asarray(allowed, dtype=np.int64)
    available = index.ntotal if allowed is None else len(allowed)
    if available == 0 or len(queries) == 0:
        return ids, scores
    exclude = None if exclude_ids is None else np.asarray(exclude_ids, dtype=np.int64)
    read = _reader(vectors, allowed)
    approximate = rerank and read is not None and needs_rerank(index)
    wanted = k + (exclude is not None)  # one more: the query's own item is dropped
    fetch = min(RERANK_FACTOR * wanted if approximate else wanted, available)
    knobs = configure_search(index, fetch, nprobe, ef_search)  # sets them on the index, for an unfiltered search
    params = None
    if allowed is not None:
        params = knobs or faiss.SearchParameters()
        params.sel = faiss.IDSelectorBatch(allowed)
    for s in tqdm(range(0, len(queries), batch_size), desc="neighbours", unit="batch", disable=not progress):
        block = queries[s:s + batch_size]  # (b, D)
        found_scores, found_ids = index.search(block, fetch, params=params)  # (b, fetch)
        for r in range(len(block)):
            keep = found_ids[r] >= 0
            if exclude is not None:
                keep &= found_ids[r] != exclude[s + r]
            ids_r, scores_r = found_ids[r][keep], found_scores[r][keep]
            if approximate and len(ids_r):
                ids_r, scores_r = exact_top_k(block[r], *read(ids_r), k)
            n = min(k, len(ids_r))
            ids[s + r, :n], scores[s + r, :n] = ids_r[:n], scores_r[:n]
    if allowed is not None and vectors is not None:
        _exact_fallback(queries, allowed, vectors, exclude, ids, scores)
    return ids, scores


def _reader(vectors: VectorSource | None, allowed: np.ndarray | None
            ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """`vectors` as a function ids -> (ids, vectors)."""
    if vectors is None or callable(vectors):
        return vectors
    if allowed is None or len(vectors) != len(allowed):
        raise ValueError("vectors given as an array must be aligned with `allowed`")
    order = np.argsort(allowed, kind="stable")
    return lambda wanted: (wanted, vectors[order[np.searchsorted(allowed[order], wanted)]])


def _exact_fallback(queries: np.ndarray, allowed: np.ndarray, vectors: VectorSource, exclude: np.ndarray | None,
                    ids: np.ndarray, scores: np.ndarray) -> None:
    """Score the allowed items exactly for the queries the index gave fewer hits than it could (in place)."""
    excluded = np.zeros(len(queries), dtype=bool) if exclude is None else np.isin(exclude, allowed)
    possible = np.minimum(ids.shape[1], len(allowed) - excluded)  # (N,) hits the allowed items can give
    short = np.flatnonzero((ids >= 0).sum(axis=1) < possible)
    if not len(short):
        return
    all_ids, all_vectors = (allowed, vectors) if isinstance(vectors, np.ndarray) else vectors(allowed)
    all_ids = np.asarray(all_ids, dtype=np.int64)
    exclude_rows = None
    if exclude is not None:
        exclude_rows = np.full(len(short), -1, dtype=np.int64)
        position = {int(i): p for p, i in enumerate(all_ids.tolist())}
        for j, own in enumerate(exclude[short].tolist()):
            exclude_rows[j] = position.get(own, -1)
    rows, exact = exact_neighbours(queries[short], all_vectors, min(ids.shape[1], len(all_ids)), exclude_rows)
    width = rows.shape[1]
    ids[short, :width] = np.where(rows >= 0, all_ids[rows], -1)
    scores[short, :width] = exact


def exact_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_rows: np.ndarray | None = None,
                     batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact (rows (N, k), cosines (N, k)) by brute force over `gallery` (M, D), k <= M, nearest first (ties:
    the lower row first); `exclude_rows` (N,): a gallery row to leave out per query, or -1. A row left without
    k items (k = M and one excluded) ends in -1 and -inf."""
    rows = np.empty((len(queries), k), dtype=np.int64)
    sims = np.empty((len(queries), k), dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    for s in range(0, len(queries), batch_size):
        block = np.asarray(queries[s:s + batch_size], dtype=np.float32) @ gallery.T  # (b, M)
        if exclude_rows is not None:
            own = exclude_rows[s:s + batch_size]
            block[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf
        top = np.sort(np.argpartition(-block, k - 1, axis=1)[:, :k], axis=1)
        order = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1, kind="stable")
        rows[s:s + len(block)] = np.take_along_axis(top, order, axis=1)
        sims[s:s + len(block)] = np.take_along_axis(block, rows[s:s + len(block)], axis=1)
    rows[np.isneginf(sims)] = -1
    return rows, sims
