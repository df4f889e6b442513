"""FAISS indexes over stored embeddings, with catalog ids as FAISS ids.

    indexes/<model_id>/<kind>-v<version>.faiss     the index (inner product on L2-normalized vectors)
    indexes/<model_id>/<kind>-v<version>.ids.npy   the ids it holds (int64), for incremental updates

A build writes a new version (temp file + rename), then records it in the catalog's `indexes` table,
which is the "current" pointer readers follow: a crash leaves the previous version current. Updates are
incremental: new embeddings are added and ids whose image or caption left the catalog are removed,
without re-training, unless the index type cannot remove (HNSW), in which case it is rebuilt.
The previous version's files are kept for readers that opened it; older ones are deleted.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from warehouse import Catalog, InputError, Workdir, atomic_write_npy

from .shards import iter_embeddings, sample_embeddings

_logger = logging.getLogger(__name__)
EXACT_MAX = 50_000     # below this many vectors, exact search is fast enough and needs no training
HNSW_MAX = 2_000_000   # up to here HNSW (recall ~0.99, fits in RAM); above, IVF-PQ for memory
PATCH_EXACT_MAX = 100_000  # patch vectors (images x cells); above, IVF-PQ with exact re-ranking by the caller
TRAIN_SAMPLE = 100_000     # vectors an IVF index is trained on (a random sample of the collection)
ADD_CHUNK = 65_536         # vectors read and added at a time (patch kind: images x cells) from the shards


def default_factory(n: int, d: int) -> str:
    """Exact below EXACT_MAX vectors, HNSW32 up to HNSW_MAX, IVF-PQ above (about 4 sqrt(n) lists, d/4 bytes
    a vector). Measured at 100k real-embedding-like vectors (docs/indexer.md): HNSW32 recall@10 0.99,
    IVF-PQ without re-ranking 0.33, so PQ is kept for collections too large for HNSW's memory."""
    if n < EXACT_MAX:
        return "Flat"
    if n <= HNSW_MAX:
        return "HNSW32"
    nlist = 2 ** int(round(math.log2(4 * math.sqrt(n))))
    m = max(m for m in (8, 16, 32, 48, 64, 96, 128) if d % m == 0 and m <= d // 4)
    return f"IVF{nlist},PQ{m}"


def patch_factory(n: int, d: int) -> str:
    """The patch index: exact for small collections, else IVF-PQ (about 4 sqrt(n) lists, d/8 bytes a vector).
    Patch vectors are many (64 per image for `tiny`) and the caller re-ranks the images found exactly, so
    compact codes win here: at the sample's 500k patches, IVF-PQ + re-ranking agrees 0.935 with exact
    search in 5.5 ms (docs/grounding.md)."""
    if n < PATCH_EXACT_MAX:
        return "Flat"
    nlist = 2 ** int(round(math.log2(4 * math.sqrt(n))))
    return f"IVF{nlist},PQ{d // 8}"


def patch_ids(image_ids: np.ndarray, cells: int) -> np.ndarray:
    """FAISS ids of the patch vectors of images: image id * cells + cell (row-major on the grid)."""
    return (np.asarray(image_ids, dtype=np.int64)[:, None] * cells + np.arange(cells, dtype=np.int64)).ravel()


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _is_ivf(index: faiss.Index) -> bool:
    return faiss.try_extract_index_ivf(index) is not None


def create_index(d: int, factory: str) -> faiss.Index:
    """An empty index for `factory` that accepts ids (IVF natively, others inside IDMap2)."""
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InputError(f"bad FAISS factory string {factory!r}: {str(e).strip().splitlines()[-1]}") from None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        # The factory turns on polysemous training, which orders the PQ codes for Hamming pre-filtering that
        # groundex never uses; it was most of IVF512,PQ128's training time (about 100 s of 130 at 20k x 512).
        faiss.downcast_index(ivf).do_polysemous_training = False
    if not _is_ivf(index) and not factory.startswith("IDMap"):
        index = faiss.IndexIDMap2(index)
    return index


def build_index(vectors: np.ndarray, ids: np.ndarray, factory: str, chunk: int = ADD_CHUNK) -> faiss.Index:
    """An index over vectors in memory, of any float dtype (trained on a sample of at most TRAIN_SAMPLE of
    them; added `chunk` rows at a time in float32, so a float16 collection is never held twice in float32)."""
    index = create_index(vectors.shape[1], factory)
    train = vectors
    if len(train) > TRAIN_SAMPLE:
        train = train[np.sort(np.random.default_rng(0).choice(len(train), TRAIN_SAMPLE, replace=False))]
    _train(index, np.ascontiguousarray(train, dtype=np.float32), factory)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    for s in range(0, len(vectors), chunk):
        index.add_with_ids(np.ascontiguousarray(vectors[s:s + chunk], dtype=np.float32), ids[s:s + chunk])
    return index


def build_index_from_shards(workdir: Workdir, model_id: str, kind: str, factory: str | None = None,
                            chunk: int = ADD_CHUNK) -> tuple[faiss.Index, np.ndarray, str]:
    """(index, item ids, factory) over this model's stored embeddings of `kind`, without loading them all:
    an IVF index is trained on a random sample of at most TRAIN_SAMPLE vectors, then the shards are read
    (memory-mapped) and added about `chunk` vectors at a time."""
    with Catalog.open(workdir, read_only=True) as catalog:
        n_items = len(catalog.embedded_ids(model_id, "image" if kind == "patch" else kind))
        stored = catalog.embedding_set(model_id, kind)
    if stored is None or not n_items:
        raise InputError(f"no {kind} embeddings for model {model_id}")
    d, cells = stored["dim"], stored["cells"]
    if factory is None:
        factory = patch_factory(n_items * cells, d) if kind == "patch" else default_factory(n_items, d)
    index = create_index(d, factory)
    if not index.is_trained:
        _train(index, sample_embeddings(workdir, model_id, kind, TRAIN_SAMPLE), factory)
    held = []
    for ids, vectors in iter_embeddings(workdir, model_id, kind, chunk=max(1, chunk // cells)):
        if kind == "patch":
            vectors, vector_ids = vectors.reshape(-1, d), patch_ids(ids, cells)
        else:
            vector_ids = ids
        index.add_with_ids(np.ascontiguousarray(vectors), vector_ids)
        held.append(ids)
    return index, np.sort(np.concatenate(held)), factory


def _train(index: faiss.Index, train: np.ndarray, factory: str) -> None:
    if index.is_trained:
        return
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and len(train) < ivf.nlist:
        raise InputError(f"{factory}: {ivf.nlist} lists need at least that many vectors, have {len(train)}")
    if gpu_available() and ivf is not None:
        _train_on_gpu(index, train)
    else:
        index.train(train)


def _train_on_gpu(index: faiss.Index, train: np.ndarray) -> None:
    """Train the IVF coarse quantizer's k-means on the GPU, the rest on the CPU."""
    ivf = faiss.extract_index_ivf(index)
    clustering = faiss.Clustering(ivf.d, ivf.nlist)
    gpu_quantizer = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    clustering.train(train, gpu_quantizer)
    centroids = faiss.vector_float_to_array(clustering.centroids).reshape(ivf.nlist, ivf.d)
    ivf.quantizer.add(centroids)
    index.train(train)  # the quantizer is trained now: this trains the PQ codes only


def _write_atomic(index: faiss.Index, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class IndexReport:
    kind: str
    version: int
    factory: str
    n: int
    added: int
    removed: int
    rebuilt: bool
    path: str


def update_index(workdir: Workdir, model_id: str, kind: str, factory: str | None = None,
                 rebuild: bool = False) -> IndexReport | None:
    """Bring the `kind` index of `model_id` ('image', 'caption' or 'patch') in line with the stored embeddings
    and the catalog.

    `factory` (a faiss.index_factory string) forces a rebuild with that type when it differs from the
    current one. The patch index holds every patch vector of every image under `patch_ids`; its id list
    (`.ids.npy`) holds image ids. Returns None when there is nothing to index."""
    rows_kind = "image" if kind == "patch" else kind  # patch vectors share the image rows
    with Catalog.open(workdir) as catalog:
        orphans = catalog.orphan_ids(model_id, rows_kind)
        if orphans:
            catalog.remove_embedding_rows(model_id, rows_kind, orphans)
        current = catalog.current_index(model_id, kind)
        embedded = np.array(catalog.embedded_ids(model_id, rows_kind), dtype=np.int64)
        cells = catalog.patch_cells(model_id) if kind == "patch" and len(embedded) else 1  # vectors per image
    if len(embedded) == 0:
        return None
    plan = _plan_update(current, embedded, kind, cells, factory, rebuild)
    _logger.debug("%s index of %s: %s (%s)", kind, model_id, plan.action, plan.reason)
    if plan.action == "keep":
        index = faiss.read_index(current["path"])
        return IndexReport(kind, current["version"], plan.factory, int(index.ntotal), 0, 0, False, current["path"])
    updated = _update_in_place(workdir, model_id, kind, cells, current, plan) if plan.action == "update" else None
    rebuilt = updated is None
    if rebuilt:  # from the shards: trained on a sample, added chunk by chunk
        if current is not None:  # an index is replaced: say why
            why = plan.reason if plan.action == "rebuild" else f"{plan.factory} cannot remove ids"
            _logger.info("rebuilding the %s index of %s: %s", kind, model_id, why)
        index, held, factory = build_index_from_shards(workdir, model_id, kind, plan.factory)
    else:
        (index, held), factory = updated, plan.factory
    version, path = _write_version(workdir, model_id, kind, current, index, held, factory)
    return IndexReport(kind, version, factory, int(index.ntotal), int(len(plan.added)), int(len(plan.removed)),
                       rebuilt, str(path))


@dataclass
class _IndexPlan:
    """What `update_index` does to bring an index in line with the stored embeddings, and why."""
    action: str                # "keep": up to date; "update": remove and add in place; "rebuild": from the shards
    factory: str | None        # the factory of the result (None: chosen from the collection's size when built)
    reason: str
    held: np.ndarray           # item ids (image ids for the patch kind) in the index kept or updated
    added: np.ndarray          # item ids the result gains over `held`
    removed: np.ndarray        # item ids it loses


def _plan_update(current: dict | None, embedded: np.ndarray, kind: str, cells: int, factory: str | None = None,
                 rebuild: bool = False) -> _IndexPlan:
    """Keep, update or rebuild the `current` index (the catalog's row, None when there is none) so that it holds
    the `embedded` item ids (`cells` vectors each); `factory` and `rebuild` as in `update_index`. Reads the current
    index's id list when the index could be kept."""
    nothing = np.zeros(0, dtype=np.int64)
    if current is None:
        reason = "no index yet"
    elif rebuild:
        reason = "a rebuild was asked for"
    elif factory is not None and factory != current["factory"]:
        reason = f"{factory} was asked for, the index is {current['factory']}"
    else:
        reason = None
    if reason is not None:
        return _IndexPlan("rebuild", factory, reason, nothing, np.setdiff1d(embedded, nothing), nothing)
    held = np.load(Path(current["path"]).with_suffix(".ids.npy"))
    removed, added = np.setdiff1d(held, embedded), np.setdiff1d(embedded, held)
    if not len(removed) and not len(added):
        return _IndexPlan("keep", current["factory"], "up to date", held, added, removed)
    grown = (len(held) - len(removed) + len(added)) * cells
    if kind == "patch" and factory is None and current["factory"] == "Flat" and len(added) and grown >= PATCH_EXACT_MAX:
        return _IndexPlan("rebuild", None, f"the exact index outgrew {PATCH_EXACT_MAX} vectors (IVF-PQ now)",
                          held, added, removed)
    return _IndexPlan("update", current["factory"], f"{len(added)} to add, {len(removed)} to remove", held, added,
                      removed)


def _update_in_place(workdir: Workdir, model_id: str, kind: str, cells: int, current: dict, plan: _IndexPlan
                     ) -> tuple[faiss.Index, np.ndarray] | None:
    """(the current index with `plan.removed` taken out and `plan.added` put in from the shards, the item ids it
    holds), or None when its type cannot remove ids (HNSW)."""
    index = faiss.read_index(current["path"])
    if len(plan.removed):
        try:
            index.remove_ids(faiss.IDSelectorBatch(patch_ids(plan.removed, cells) if kind == "patch"
                                                   else plan.removed))
        except RuntimeError:
            return None
    held = np.setdiff1d(plan.held, plan.removed)
    for ids, vectors in iter_embeddings(workdir, model_id, kind, plan.added, chunk=max(1, ADD_CHUNK // cells)):
        vector_ids = ids
        if kind == "patch":
            vectors, vector_ids = vectors.reshape(-1, vectors.shape[2]), patch_ids(ids, cells)
        index.add_with_ids(np.ascontiguousarray(vectors), vector_ids)
        held = np.union1d(held, ids)
    return index, held


def _write_version(workdir: Workdir, model_id: str, kind: str, current: dict | None, index: faiss.Index,
                   held: np.ndarray, factory: str) -> tuple[int, Path]:
    """Write `index` and its item ids as the next version, make it the catalog's current one, and delete the
    versions before the previous one; returns (version, path)."""
    folder = workdir.model_indexes_dir(model_id)
    folder.mkdir(parents=True, exist_ok=True)
    with Catalog.open(workdir) as catalog:
        version = (current["version"] if current else 0) + 1
        path = folder / f"{kind}-v{version}.faiss"
        atomic_write_npy(path.with_suffix(".ids.npy"), held.astype(np.int64))
        _write_atomic(index, path)
        catalog.add_index_version(model_id, kind, version, str(path), factory, int(index.ntotal))
    for old in folder.glob(f"{kind}-v*.faiss"):  # keep the current and the previous version
        number = int(old.stem.split("-v")[1])
        if number < version - 1:
            old.unlink(missing_ok=True)
            old.with_suffix(".ids.npy").unlink(missing_ok=True)
    return version, path


def load_index(path: str | Path) -> faiss.Index:
    return faiss.read_index(str(path))


RERANK_FACTOR = 10  # an IVF-PQ search fetches this many times k candidates, then scores them exactly


def needs_rerank(index: faiss.Index) -> bool:
    """Whether an index's scores are approximate codes (PQ, SQ) that groundex re-ranks with the stored vectors."""
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)


def rerank(query: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k (ids, scores) of a query among items `ids` with their stored `vectors` ((m, D), any float
    dtype, e.g. a PQ search's candidates read from the float16 shards)."""
    scores = np.asarray(vectors, dtype=np.float32) @ np.asarray(query, dtype=np.float32)
    top = np.argsort(-scores, kind="stable")[:k]
    return np.asarray(ids)[top], scores[top]


def configure_search(index: faiss.Index, k: int = 10, nprobe: int | None = None, ef_search: int | None = None
                     ) -> faiss.SearchParameters | None:
    """Set the search-time accuracy knobs of approximate indexes, and return matching SearchParameters
    (to combine with an id selector): IVF probes max(16, nlist / 16) lists; HNSW explores
    max(128, 4k) candidates (64 gave 0.87 recall@10 on clustered test data, 128 gave 0.97). Exact indexes
    need nothing (None)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe or max(16, ivf.nlist // 16)
        return faiss.SearchParametersIVF(nprobe=ivf.nprobe)
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef_search or max(128, 4 * k)
        return faiss.SearchParametersHNSW(efSearch=inner.hnsw.efSearch)
    return None
