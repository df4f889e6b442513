import numpy as np
import pytest

import warehouse
from indexer.index import build_index, configure_search, default_factory, patch_factory, patch_ids, update_index
from indexer.shards import load_embeddings
from warehouse import Catalog, IngestConfig, SyntheticConfig, Workdir
from warehouse.workdir import atomic_write_npy


def clustered(n: int, d: int, seed: int = 0, clusters: int = 50) -> np.ndarray:
    """Unit vectors in tight clusters: the structure real embeddings have (i.i.d. noise makes ANN look broken)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory, min_recall", [("Flat", 1.0), ("HNSW32", 0.9), ("IVF16,Flat", 0.9),
                                                 ("IVF16,PQ8", 0.5)])
def test_ann_results_against_exact_search(factory, min_recall):
    base, queries = clustered(3000, 32), clustered(50, 32, seed=1)
    ids = np.arange(1000, 4000, dtype=np.int64)
    index = build_index(base, ids, factory)
    configure_search(index, 10, nprobe=8)
    _, found = index.search(queries, 10)
    exact = ids[np.argsort(-(queries @ base.T), axis=1)[:, :10]]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= min_recall, (factory, recall)
    assert set(found.ravel()) <= set(ids.tolist())  # FAISS ids are the catalog ids


def test_default_factory_follows_collection_size():
    assert default_factory(1000, 256) == "Flat"
    assert default_factory(100_000, 256) == "HNSW32"
    big = default_factory(10_000_000, 256)
    assert big.startswith("IVF") and big.endswith("PQ64")
    with pytest.raises(ValueError, match="bad FAISS factory string"):
        build_index(clustered(10, 8), np.arange(10), "NoSuchIndex")


def _fake_embed(workdir: Workdir, model_id: str, image_ids: list[int], seed: int) -> None:
    folder = workdir.shards_dir(model_id, "image")
    folder.mkdir(parents=True, exist_ok=True)
    name = f"shard-{seed:05d}.npy"
    atomic_write_npy(folder / name, clustered(len(image_ids), 16, seed).astype(np.float16))
    with Catalog.open(workdir) as catalog:
        catalog.record_embedding_set(model_id, "image", 16)
        catalog.add_embedding_rows(model_id, "image", image_ids, name)


def test_index_updates_incrementally_and_drops_removed_images(tmp_path):
    workdir = Workdir(tmp_path / "w")
    warehouse.ingest_synthetic(workdir, SyntheticConfig(n=40), config=IngestConfig(progress=False))
    _fake_embed(workdir, "m1", list(range(1, 31)), seed=0)
    first = update_index(workdir, "m1", "image")
    assert (first.version, first.n, first.added, first.rebuilt) == (1, 30, 30, True)
    assert update_index(workdir, "m1", "image").version == 1  # nothing new: no new version

    _fake_embed(workdir, "m1", list(range(31, 41)), seed=1)
    second = update_index(workdir, "m1", "image")
    assert (second.version, second.n, second.added, second.rebuilt) == (2, 40, 10, False)

    with Catalog.open(workdir) as catalog:
        assert catalog.remove_images([3, 4, 5]) == 3
    third = update_index(workdir, "m1", "image")
    assert (third.version, third.n, third.removed) == (3, 37, 3)
    import faiss
    index = faiss.read_index(third.path)
    ids, vectors = load_embeddings(workdir, "m1", "image")
    assert 3 not in ids and len(ids) == 37
    _, found = index.search(vectors[:5], 1)
    assert found[:, 0].tolist() == ids[:5].tolist()  # each vector finds itself under its catalog id
    kept = sorted(p.name for p in (workdir.indexes_dir / "m1").glob("*.faiss"))
    assert kept == ["image-v2.faiss", "image-v3.faiss"]  # current and previous only
    hnsw = update_index(workdir, "m1", "image", factory="HNSW32")
    assert hnsw.rebuilt and hnsw.factory == "HNSW32" and hnsw.n == 37


def _fake_patches(workdir: Workdir, model_id: str, image_ids: list[int], seed: int, cells: int = 4) -> None:
    """Image and patch shards (patches row-aligned with the image shard), recorded like `embed_images` does."""
    for kind, shape in (("image", (len(image_ids), 16)), ("patch", (len(image_ids), cells, 16))):
        folder = workdir.shards_dir(model_id, kind)
        folder.mkdir(parents=True, exist_ok=True)
        vectors = clustered(int(np.prod(shape[:-1])), 16, seed).reshape(shape)
        atomic_write_npy(folder / f"shard-{seed:05d}.npy", vectors.astype(np.float16))
    with Catalog.open(workdir) as catalog:
        catalog.record_embedding_set(model_id, "image", 16)
        catalog.record_embedding_set(model_id, "patch", 16, (1, cells))
        catalog.add_embedding_rows(model_id, "image", image_ids, f"shard-{seed:05d}.npy")


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_patch_index_holds_every_cell_and_follows_the_catalog(tmp_path, factory):
    workdir = Workdir(tmp_path / "w")
    warehouse.ingest_synthetic(workdir, SyntheticConfig(n=40), config=IngestConfig(progress=False))
    _fake_patches(workdir, "m1", list(range(1, 31)), seed=0)
    first = update_index(workdir, "m1", "patch", factory=factory)
    assert (first.n, first.added, first.factory) == (30 * 4, 30, factory)
    _fake_patches(workdir, "m1", list(range(31, 41)), seed=1)
    with Catalog.open(workdir) as catalog:
        catalog.remove_images([3])
    second = update_index(workdir, "m1", "patch")
    assert (second.version, second.n, second.added, second.removed) == (2, 39 * 4, 10, 1)
    import faiss
    index = faiss.read_index(second.path)
    ids, patches = load_embeddings(workdir, "m1", "patch")
    configure_search(index, 1, nprobe=4)
    _, found = index.search(patches[:, 2], 1)  # cell 2 of every image finds itself
    assert found[:, 0].tolist() == patch_ids(ids, 4)[2::4].tolist()
    assert patch_factory(50_000, 256) == "Flat" and patch_factory(500_000, 256) == "IVF2048,PQ32"


def test_an_exact_patch_index_that_outgrows_its_size_is_rebuilt_compressed(tmp_path, monkeypatch):
    import indexer.index

    monkeypatch.setattr(indexer.index, "PATCH_EXACT_MAX", 500)
    workdir = Workdir(tmp_path / "w")
    warehouse.ingest_synthetic(workdir, SyntheticConfig(n=40), config=IngestConfig(progress=False))
    _fake_patches(workdir, "m1", list(range(1, 31)), seed=0, cells=16)
    assert update_index(workdir, "m1", "patch").factory == "Flat"  # 480 vectors
    _fake_patches(workdir, "m1", list(range(31, 41)), seed=1, cells=16)
    grown = update_index(workdir, "m1", "patch")  # 640 vectors
    assert grown.rebuilt and grown.factory.startswith("IVF") and grown.n == 640


def test_building_from_shards_reads_chunks_and_trains_on_a_sample(tmp_path, monkeypatch):
    import indexer.index
    import indexer.shards
    from indexer.index import build_index_from_shards

    workdir = Workdir(tmp_path / "w")
    warehouse.ingest_synthetic(workdir, SyntheticConfig(n=40), config=IngestConfig(progress=False))
    _fake_patches(workdir, "m1", list(range(1, 21)), seed=0)  # two shards
    _fake_patches(workdir, "m1", list(range(21, 41)), seed=1)
    ids, vectors = load_embeddings(workdir, "m1", "image")
    reads = []
    real_iter = indexer.shards.iter_embeddings

    def counting(*args, **kwargs):
        for chunk_ids, chunk in real_iter(*args, **kwargs):
            reads.append(len(chunk_ids))
            yield chunk_ids, chunk

    monkeypatch.setattr(indexer.index, "iter_embeddings", counting)
    streamed, held, factory = build_index_from_shards(workdir, "m1", "image", "Flat", chunk=7)
    assert factory == "Flat" and held.tolist() == ids.tolist() and max(reads) <= 7 and sum(reads) >= 40
    in_memory = build_index(vectors, ids, "Flat")
    assert streamed.search(vectors[:10], 5)[1].tolist() == in_memory.search(vectors[:10], 5)[1].tolist()
    # an IVF index is trained on a sample of at most TRAIN_SAMPLE vectors, drawn across the shards
    monkeypatch.setattr(indexer.index, "TRAIN_SAMPLE", 60)
    trained_on = []
    monkeypatch.setattr(indexer.index, "_train", lambda index, train, f: (trained_on.append(len(train)),
                                                                          index.train(train)))
    patches, held, factory = build_index_from_shards(workdir, "m1", "patch", "IVF4,Flat", chunk=9)
    assert trained_on == [60] and patches.ntotal == 40 * 4 and held.tolist() == ids.tolist()


def test_rerank_scores_candidates_exactly_and_ivfpq_searches_rerank(tmp_path):
    from indexer.index import needs_rerank, rerank
    from indexer.pipeline import index_workdir
    from indexer.search import Searcher
    from indexer.shards import load_embeddings
    from tests.helpers import built_workdir

    vectors = np.eye(4, dtype=np.float32)
    candidates = np.array([3, 0, 2, 1])
    query = np.array([0.1, 0.9, 0.5, 0], np.float32)
    ids, scores = rerank(query, candidates, vectors[candidates].astype(np.float16), 2)
    assert ids.tolist() == [1, 2] and np.allclose(scores, [0.9, 0.5], atol=1e-3)
    assert needs_rerank(build_index(np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32),
                                    np.arange(300), "IVF4,PQ4"))
    assert not needs_rerank(build_index(vectors, np.arange(4), "Flat"))

    workdir = built_workdir(tmp_path / "w", n=120, epochs=1, index=False)
    index_workdir(workdir, factory="IVF4,PQ8x4")  # coarse codes: alone they misorder near neighbours
    searcher = Searcher(workdir)
    assert needs_rerank(searcher.index("image"))
    image_ids, image_vectors = load_embeddings(workdir, searcher.model_id, "image")
    for query in ("a red dog on the grass", "two blue cars", "a green star"):
        exact = image_ids[np.argsort(-(image_vectors @ searcher.text_vector(query)), kind="stable")[:5]]
        assert [h.id for h in searcher.text_to_image(query, k=5)] == exact.tolist()
