"""The one filtered-search policy (indexer.knn): FAISS with an id selector, exact fallback for selective filters."""

import numpy as np
import pytest

from indexer.index import build_index
from indexer.knn import exact_neighbours, search_allowed


def _clustered(n: int = 1000, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    vectors = (centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _exact(queries, vectors, ids, allowed, k, exclude=None):
    scores = queries @ vectors[np.searchsorted(ids, allowed)].T  # (N, M)
    if exclude is not None:
        scores[np.equal.outer(exclude, allowed)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return allowed[order], np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,Flat", "IVF64,PQ4"])
@pytest.mark.parametrize("n_allowed", [3, 40, 300])
def test_filtered_search_matches_exact_search_however_selective_the_filter(factory, n_allowed):
    vectors = _clustered()
    ids = np.arange(1000, 1000 + len(vectors), dtype=np.int64)
    index = build_index(vectors, ids, factory)
    rng = np.random.default_rng(1)
    allowed = np.sort(rng.choice(ids, n_allowed, replace=False))
    queries = vectors[rng.choice(len(vectors), 20, replace=False)]
    exclude = ids[np.searchsorted(ids, allowed[:20])] if n_allowed >= 20 else None  # some queries are allowed items

    def stored(wanted):
        return wanted, vectors[np.searchsorted(ids, wanted)]

    found, scores = search_allowed(index, queries, 10, allowed, vectors=stored, exclude_ids=exclude, rerank=True,
                                   nprobe=1)  # one probed list: an IVF search misses most allowed items
    expected, expected_scores = _exact(queries, vectors, ids, allowed, 10, exclude)
    width = min(10, n_allowed)
    assert np.isin(found[:, :width], allowed).all() and (found[:, width:] == -1).all()
    if exclude is not None:
        assert not (found == exclude[:, None]).any()
    if factory == "Flat" or n_allowed <= 10:  # exact search, or k >= the allowed items: all of them, exactly ranked
        assert (found[:, :width] == expected[:, :width]).all()
        assert np.allclose(scores[:, :width], expected_scores[:, :width], atol=1e-5)
    else:  # approximate but complete (k hits, never fewer), with exact scores (PQ codes re-ranked)
        own = np.einsum("nd,nkd->nk", queries, vectors[np.searchsorted(ids, found[:, :width])])
        assert np.allclose(scores[:, :width], own, atol=1e-5)


def test_unfiltered_and_empty_searches_and_vectors_given_as_an_array():
    vectors = _clustered(200)
    ids = np.arange(200, dtype=np.int64) * 3
    index = build_index(vectors, ids, "Flat")
    found, scores = search_allowed(index, vectors[:2], 5)
    assert found[:, 0].tolist() == [0, 3] and np.allclose(scores[:, 0], 1, atol=1e-5)
    found, scores = search_allowed(index, vectors[:2], 5, np.zeros(0, dtype=np.int64))
    assert (found == -1).all() and np.isneginf(scores).all()
    allowed = ids[10:13]
    found, _ = search_allowed(index, vectors[:1], 5, allowed, vectors=vectors[10:13], exclude_ids=np.array([33]))
    assert found[0].tolist()[2:] == [-1, -1, -1] and 33 not in found[0] and set(found[0][:2]) == {30, 36}
    with pytest.raises(ValueError):
        search_allowed(index, vectors[:1], 0)


def test_exact_neighbours_leave_a_row_empty_when_the_excluded_item_was_needed():
    gallery = _clustered(3)
    rows, sims = exact_neighbours(gallery[:1], gallery, 3, exclude_rows=np.array([0]))
    assert rows[0, 2] == -1 and np.isneginf(sims[0, 2]) and 0 not in rows[0]
