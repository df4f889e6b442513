"""A model's stored embeddings: float16 shards under `embeddings/<model>/<kind>/`, located through the catalog's
`embeddings` table (item id -> shard, row), read back as float32. Reading needs numpy only (no torch), so
`search`, `ground` and `verify` read vectors without loading any model code; `indexer.embed` writes them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from warehouse import Catalog, Workdir

from .config import MissingEmbeddingError

__all__ = ["iter_embeddings", "load_embeddings", "next_shard_name", "sample_embeddings"]


def next_shard_name(folder: Path) -> str:
    numbers = [int(p.stem.split("-")[1]) for p in folder.glob("shard-*.npy") if p.stem.split("-")[1].isdigit()]
    return f"shard-{max(numbers, default=-1) + 1:05d}.npy"


def load_embeddings(workdir: Workdir, model_id: str, kind: str, ids: Sequence[int] | None = None,
                    catalog: Catalog | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,), float32 vectors) of this model's stored embeddings of `kind`, ordered by id.

    `kind` is 'image', 'caption' or 'patch' (patches come back as (n, P, D)). `catalog`: an open one to
    read the locations from (else one is opened)."""
    row_kind = "image" if kind == "patch" else kind
    if catalog is not None:
        locations = catalog.embedding_locations(model_id, row_kind, ids)
    else:
        with Catalog.open(workdir, read_only=True) as opened:
            locations = opened.embedding_locations(model_id, row_kind, ids)
    if ids is not None:
        wanted = {int(i) for i in ids}
        if len(locations) != len(wanted):
            have = {loc[0] for loc in locations}
            missing = sorted(wanted - have)[:5]
            raise MissingEmbeddingError(f"no {kind} embedding for id(s) {missing} with model {model_id} (not in the "
                                        "catalog, or not embedded yet: run `groundex index`)")
    folder = workdir.shards_dir(model_id, kind)
    by_shard: dict[str, list[tuple[int, int]]] = {}
    for position, (_, shard, row) in enumerate(locations):
        by_shard.setdefault(shard, []).append((position, row))
    out: np.ndarray | None = None
    for shard, pairs in by_shard.items():
        data = np.load(folder / shard, mmap_mode="r")
        if out is None:
            out = np.empty((len(locations), *data.shape[1:]), dtype=np.float32)
        positions, rows = zip(*pairs, strict=True)
        out[list(positions)] = data[list(rows)]
    ids_out = np.array([loc[0] for loc in locations], dtype=np.int64)
    if out is None:
        out = np.zeros((0, 0), dtype=np.float32)
    return ids_out, out


def iter_embeddings(workdir: Workdir, model_id: str, kind: str, ids: Sequence[int] | None = None,
                    chunk: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, float32 vectors) of this model's stored embeddings of `kind` in chunks of at most `chunk`
    items, shard by shard (memory-mapped), so a collection larger than RAM can be read through."""
    row_kind = "image" if kind == "patch" else kind
    with Catalog.open(workdir, read_only=True) as catalog:
        locations = catalog.embedding_locations(model_id, row_kind, ids)
    by_shard: dict[str, list[tuple[int, int]]] = {}
    for item, shard, row in locations:
        by_shard.setdefault(shard, []).append((item, row))
    folder = workdir.shards_dir(model_id, kind)
    for shard in sorted(by_shard):
        pairs = by_shard[shard]
        data = np.load(folder / shard, mmap_mode="r")
        for s in range(0, len(pairs), chunk):
            part = pairs[s:s + chunk]
            rows = np.array([r for _, r in part], dtype=np.int64)
            yield np.array([i for i, _ in part], dtype=np.int64), np.asarray(data[rows], dtype=np.float32)


def sample_embeddings(workdir: Workdir, model_id: str, kind: str, n: int, seed: int = 0) -> np.ndarray:
    """About `n` float32 vectors drawn at random from this model's stored embeddings of `kind` (patch
    vectors flattened), read shard by shard: the training sample of an IVF-PQ index."""
    row_kind = "image" if kind == "patch" else kind
    with Catalog.open(workdir, read_only=True) as catalog:
        locations = catalog.embedding_locations(model_id, row_kind)
        cells = catalog.patch_cells(model_id) if kind == "patch" and locations else 1
    if not locations:
        return np.zeros((0, 0), dtype=np.float32)
    folder = workdir.shards_dir(model_id, kind)
    rng = np.random.default_rng(seed)
    items = max(1, min(len(locations), -(-n // cells)))  # items whose vectors make up the sample
    chosen = sorted(rng.choice(len(locations), items, replace=False).tolist(), key=lambda r: locations[r][1:])
    out, by_shard = [], {}
    for r in chosen:
        by_shard.setdefault(locations[r][1], []).append(locations[r][2])
    for shard, rows in by_shard.items():
        data = np.load(folder / shard, mmap_mode="r")
        out.append(np.asarray(data[np.array(rows)], dtype=np.float32))
    vectors = np.concatenate(out)
    vectors = vectors.reshape(-1, vectors.shape[-1])
    if len(vectors) > n:
        vectors = vectors[rng.choice(len(vectors), n, replace=False)]
    return np.ascontiguousarray(vectors)
