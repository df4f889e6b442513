"""Phrase -> region search: two-stage (image index shortlist, then patch scoring) vs one index over every patch.

    python benchmarks/region_search.py --workdir W [--model M] [--images 31783] [--queries 200]
                                       [--out docs/results/x.json]

With --workdir (a workdir indexed by a model with patch embeddings): the collection is that workdir's
real image and patch embeddings, and the queries are its val phrases (with boxes) encoded by the model
(default: the newest). --images N grows the collection to N images by repeating real images with small
Gaussian noise (0.02) on their global and patch vectors (the structure of real embeddings, more of them).
Without --workdir, clustered synthetic vectors are used.

Ground truth: exact scoring of every patch of every image; an image's score is its best patch; top 10.
Methods, each timed one query at a time (p50 / p99 ms) with its agreement (recall@10 of images vs exact):
- two-stage S: the product's method (grounding/ground.py): the image index (the product's default type
  for N) shortlists S images, their patches (float16, as stored) are scored exactly;
- patch index: all N x P patch vectors in the product's patch index (`patch_factory`: IVF-PQ above 100k
  vectors, its search defaults); the images of the nearest 1,000 patch vectors, best first;
- patch index + rerank: the product's method: the same, then the (up to 100) images found are rescored
  exactly from their float16 patches.
With --workdir, the product's `Grounder.search` is also timed end to end (text encoding, DuckDB, shards)
with both methods.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit  # noqa: E402

from indexer.index import build_index, configure_search, default_factory, patch_factory, patch_ids  # noqa: E402

K = 10


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def real_collection(workdir: Path, model_id: str | None, n_queries: int, rng: np.random.Generator):
    """(global (N, D), patches (N, P, D), queries (Q, D), model id) from a workdir."""
    import torch

    from indexer.models import load_checkpoint
    from indexer.shards import load_embeddings
    from warehouse import Catalog, Workdir

    w = Workdir(workdir)
    with Catalog.open(w, read_only=True) as catalog:
        info = catalog.model(model_id)
        phrases = sorted({r.text for r in catalog.grounding_rows("val") if r.boxes})
    _, image_vectors = load_embeddings(w, info.id, "image")
    _, patch_vectors = load_embeddings(w, info.id, "patch")
    texts = [phrases[i] for i in rng.choice(len(phrases), size=min(n_queries, len(phrases)), replace=False)]
    model = load_checkpoint(info.path, "cpu")
    with torch.no_grad():
        queries = model.encode_text(texts).numpy()
    return image_vectors, patch_vectors, queries, info.id, texts


def synthetic_collection(n: int, p: int, d: int, n_queries: int, rng: np.random.Generator):
    centres = rng.normal(size=(max(50, n // 100), d)).astype(np.float32)
    parts = rng.normal(size=(2000, d)).astype(np.float32)  # things that appear in images
    owner = centres[rng.integers(len(centres), size=n)]
    patches = owner[:, None, :] + 1.2 * parts[rng.integers(len(parts), size=(n, p))] \
        + 0.3 * rng.normal(size=(n, p, d)).astype(np.float32)
    patches = normalize(patches)
    image_vectors = normalize(patches.mean(axis=1))
    queries = normalize(parts[rng.integers(len(parts), size=n_queries)]
                        + 0.3 * centres[rng.integers(len(centres), size=n_queries)])
    return image_vectors, patches, queries


def grow(image_vectors, patches, n: int, rng: np.random.Generator, noise: float = 0.02):
    pick = rng.integers(len(image_vectors), size=n - len(image_vectors))
    extra_global = normalize(image_vectors[pick] + noise * rng.normal(size=(len(pick), image_vectors.shape[1])))
    extra_patches = np.empty((len(pick), *patches.shape[1:]), dtype=np.float32)
    for s in range(0, len(pick), 4096):  # chunks: the noise for 2M patch vectors at once is 2 GB
        chunk = pick[s:s + 4096]
        extra_patches[s:s + len(chunk)] = normalize(patches[chunk] + noise * rng.normal(size=(len(chunk),
                                                                                                *patches.shape[1:])))
    return np.concatenate([image_vectors, extra_global]), np.concatenate([patches, extra_patches])


def top_images(image_ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Best score per image, top k images."""
    order = np.argsort(-scores, kind="stable")
    _, first = np.unique(image_ids[order], return_index=True)
    best = order[np.sort(first)][:k]
    return image_ids[best]


def exact(flat: np.ndarray, p: int, q: np.ndarray) -> np.ndarray:
    per_image = (flat @ q).reshape(-1, p).max(axis=1)
    top = np.argpartition(-per_image, K)[:K]
    return top[np.argsort(-per_image[top])]


def timed(fn, queries) -> tuple[list, float, float]:
    out, latencies = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        latencies.append((time.perf_counter() - t) * 1000)
    return out, float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def agreement(found: list, truth: list) -> float:
    return float(np.mean([len(set(np.asarray(f).tolist()) & set(t.tolist())) / K for f, t in zip(found, truth,
                                                                                                strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--model", default=None, help="model hash or prefix (default: the newest)")
    parser.add_argument("--images", type=int, default=None, help="collection size (default: the workdir's)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--shortlists", type=int, nargs="+", default=[100, 200, 1000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    faiss.omp_set_num_threads(faiss.omp_get_max_threads())

    texts = model_id = None
    if args.workdir is not None:
        image_vectors, patches, queries, model_id, texts = real_collection(args.workdir, args.model, args.queries, rng)
        source = f"real embeddings of {args.workdir} (model {model_id}), val phrases as queries"
    else:
        image_vectors, patches, queries = synthetic_collection(args.images or 7806, 64, 256, args.queries, rng)
        source = "clustered synthetic vectors"
    if args.images and args.images > len(image_vectors):
        image_vectors, patches = grow(image_vectors, patches, args.images, rng)
        source += f", grown to {args.images} images by repeating them with noise 0.02"
    n, p, d = patches.shape
    flat = patches.reshape(n * p, d)
    patches16 = patches.astype(np.float16)  # as stored in the shards
    ids = np.arange(n, dtype=np.int64)
    result = {"machine": f"{platform.machine()}, {faiss.omp_get_max_threads()} threads, faiss {faiss.__version__}",
              "source": source, "images": n, "patches_per_image": p, "dim": d, "queries": len(queries), "k": K}

    truth, exact_p50, exact_p99 = timed(lambda q: exact(flat, p, q), queries)
    rows = {"exact (all patches, numpy)": {"p50_ms": exact_p50, "p99_ms": exact_p99, "agreement@10": 1.0,
                                           "memory_bytes_per_image": p * d * 4, "build_s": 0.0}}

    factory = default_factory(n, d)
    t = time.perf_counter()
    image_index = build_index(image_vectors, ids, factory)
    build_s = time.perf_counter() - t
    for shortlist in args.shortlists:
        configure_search(image_index, shortlist)

        def two_stage(q, shortlist=shortlist):
            _, cand = image_index.search(q[None, :], shortlist)
            cand = cand[0][cand[0] >= 0]
            best = (patches16[cand].astype(np.float32) @ q).max(axis=1)
            return cand[np.argsort(-best, kind="stable")[:K]]

        found, p50, p99 = timed(two_stage, queries)
        rows[f"two-stage S={shortlist} ({factory} image index)"] = {
            "p50_ms": p50, "p99_ms": p99, "agreement@10": agreement(found, truth),
            # the image vector (+ HNSW links: 2 x 32 neighbours x 4 bytes) and the float16 patches on disk
            "memory_bytes_per_image": d * 4 + (256 if "HNSW" in factory else 0) + p * d * 2, "build_s": build_s}

    patch_kind = patch_factory(n * p, d)
    t = time.perf_counter()
    patch_index = build_index(flat, patch_ids(ids, p), patch_kind)
    patch_build_s = time.perf_counter() - t
    configure_search(patch_index, 1000)
    nprobe = getattr(faiss.try_extract_index_ivf(patch_index), "nprobe", None)

    def patch_search(q):
        scores, hits = patch_index.search(q[None, :], 1000)
        keep = hits[0] >= 0
        return top_images(hits[0][keep] // p, scores[0][keep], K)

    def patch_rerank(q):
        scores, hits = patch_index.search(q[None, :], 1000)
        keep = hits[0] >= 0
        cand = top_images(hits[0][keep] // p, scores[0][keep], 100)
        best = (patches16[cand].astype(np.float32) @ q).max(axis=1)
        return cand[np.argsort(-best, kind="stable")[:K]]

    code = d * 4 if patch_kind == "Flat" else d // 8
    memory = code + 8  # code + the id kept per patch vector
    label = f"patch {patch_kind}" + (f" (nprobe {nprobe})" if nprobe else "")
    for name, fn in ((label, patch_search), (f"{label} + exact rerank of 100 images (product default)",
                                             patch_rerank)):
        found, p50, p99 = timed(fn, queries)
        rows[name] = {"p50_ms": p50, "p99_ms": p99, "agreement@10": agreement(found, truth),
                      "memory_bytes_per_image": p * memory + (p * d * 2 if "rerank" in name else 0),
                      "build_s": patch_build_s}

    if args.workdir is not None and n == len(load_ids(args.workdir, model_id)):
        from grounding import Grounder
        from warehouse import Workdir

        grounder = Grounder(Workdir(args.workdir), model_id, device="cpu")
        for method in ("two-stage", "patch-index"):
            grounder.search(texts[0], K, method=method)  # load the model and index once
            _, p50, p99 = timed(lambda text, method=method: grounder.search(text, K, method=method), texts)
            rows[f"product: Grounder.search, {method} (text encoding + catalog + shards + boxes)"] = {
                "p50_ms": p50, "p99_ms": p99, "agreement@10": None, "memory_bytes_per_image": None,
                "build_s": None}

    for row in rows.values():
        for key in ("p50_ms", "p99_ms", "build_s", "agreement@10"):
            if row[key] is not None:
                row[key] = round(row[key], 3)
    result["methods"] = rows
    lines = [f"Phrase -> region search, {n:,} images x {p} patches (d={d}), {len(queries)} queries; {source}.",
             f"Machine: {result['machine']}.", "",
             "| method | p50 ms | p99 ms | agreement@10 vs exact | bytes / image | build s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        agree = "" if row["agreement@10"] is None else f"{row['agreement@10']:.3f}"
        mem = "" if row["memory_bytes_per_image"] is None else f"{row['memory_bytes_per_image']:,}"
        build = "" if row["build_s"] is None else f"{row['build_s']:.1f}"
        lines.append(f"| {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {agree} | {mem} | {build} |")
    emit(result, args.out, "\n".join(lines) + "\n")


def load_ids(workdir: Path, model_id: str) -> list[int]:
    from warehouse import Catalog, Workdir

    with Catalog.open(Workdir(workdir), read_only=True) as catalog:
        return catalog.embedded_ids(model_id, "image")


if __name__ == "__main__":
    main()
