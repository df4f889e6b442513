"""Search latency and recall: FAISS index types vs numpy brute force, at 10k / 100k / 1M vectors.

    python benchmarks/search_latency.py [--workdir W] [--sizes 10000 100000 1000000] [--out docs/results/search.json]

Vectors must have the structure of real embeddings, or every ANN index looks broken: with --workdir the
base set is that workdir's real image and caption embeddings (newest model), each repeated with small
Gaussian noise until N; without it, a mixture of many tight clusters. Queries are drawn the same way and
are not in the base set. For each size: exact ground truth (top 10), then per index type the build
time, one-query-at-a-time latency p50/p99 (ms), batched queries per second, and recall@10 vs exact;
numpy brute force (batched and one at a time) is the baseline the ratios are taken against. Indexes of PQ codes
get a second row, `+rerank`: groundex's search, which scores 10 x k candidates with the stored float16 vectors
(here the float16 base in memory; in a workdir, the memory-mapped shards).
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

from indexer.index import (  # noqa: E402
    RERANK_FACTOR,
    build_index,
    configure_search,
    default_factory,
    needs_rerank,
    rerank,
)

GEN_CHUNK = 250_000  # rows generated (and added to an index) at a time: 5M x 512 float64 noise would not fit


def structured(n: int, d: int, rng: np.random.Generator, seeds: np.ndarray | None, noise: float,
               dtype=np.float32) -> np.ndarray:
    """n unit vectors with the structure of real embeddings (a seed + noise each), built GEN_CHUNK at a time."""
    centres = None
    if seeds is None:
        centres = rng.standard_normal(size=(max(100, n // 200), d), dtype=np.float32)
    out = np.empty((n, d), dtype=dtype)
    for s in range(0, n, GEN_CHUNK):
        m = min(GEN_CHUNK, n - s)
        if seeds is not None:
            x = seeds[rng.integers(len(seeds), size=m)] + noise * rng.standard_normal(size=(m, d), dtype=np.float32)
        else:
            x = centres[rng.integers(len(centres), size=m)] + 0.35 * rng.standard_normal(size=(m, d), dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def real_seeds(workdir: Path) -> np.ndarray:
    from indexer.shards import load_embeddings
    from warehouse import Catalog, Workdir

    w = Workdir(workdir)
    with Catalog.open(w, read_only=True) as catalog:
        model_id = catalog.model().id
    parts = [load_embeddings(w, model_id, kind)[1] for kind in ("image", "caption")]
    return np.concatenate([p for p in parts if len(p)]).astype(np.float32)


def timed_single(search, queries: np.ndarray) -> tuple[float, float]:
    latencies = []
    for q in queries:
        t = time.perf_counter()
        search(q[None, :])
        latencies.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def numpy_search(base: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k by brute force, a block of queries at a time: the scores and argpartition's int64
    indexes of a block take 12 bytes per base vector per query, kept near 1 GB (1,000 x 5M would not fit)."""
    block = max(1, min(64, 2 ** 30 // (12 * len(base))))
    out = []
    for s in range(0, len(q), block):
        scores = q[s:s + block] @ base.T
        top = np.argpartition(scores, -k, axis=1)[:, -k:]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def lift(seeds: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    """Real embeddings carried into d > their dimension by a random orthonormal map: every inner product,
    and so the neighbourhood structure, is kept exactly."""
    q, _ = np.linalg.qr(rng.normal(size=(d, seeds.shape[1])))
    return (seeds @ q.T).astype(np.float32)


def index_bytes(index: faiss.Index) -> int:
    """The serialized size of an index, counted as it streams out (serialize_index would copy 10 GB at 5M x 512)."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total


def factory_name(factory: str, n: int, d: int) -> str:
    """auto-ivfpq / auto-ivfflat: groundex's IVF shape at any size (about 4 sqrt(n) lists; PQ with d/4 bytes)."""
    nlist = 2 ** int(round(np.log2(4 * np.sqrt(n))))
    if factory == "auto-ivfpq":
        name = default_factory(n, d)
        return name if name.startswith("IVF") else f"IVF{nlist},PQ{d // 4}"
    if factory == "auto-ivfflat":
        return f"IVF{nlist},Flat"
    return factory


def bench_size(n: int, d: int, rng, seeds, args) -> dict:
    """Rows for one size. The base set is kept in float16 (as groundex's shards store it; 5 GB at 5M x 512);
    numpy and every index see the same float16-rounded vectors in float32."""
    base16 = structured(n, d, rng, seeds, args.noise, dtype=np.float16)
    queries = structured(args.queries, d, rng, seeds, args.noise)
    k = 10
    single = args.single if n < 1_000_000 else min(args.single, args.single_large)
    base = base16.astype(np.float32)
    t = time.perf_counter()
    truth = numpy_search(base, queries, k)
    numpy_batched_s = time.perf_counter() - t
    np_p50, np_p99 = timed_single(lambda q, base=base: numpy_search(base, q, k), queries[:single])
    del base
    rows = {"numpy": {"build_s": 0.0, "p50_ms": round(np_p50, 3), "p99_ms": round(np_p99, 3),
                      "batched_qps": round(len(queries) / numpy_batched_s, 1), "recall@10": 1.0,
                      "bytes_per_vector": float(d * 4), "single_queries": single}}
    print(f"  {n:>9,} {'numpy':<16} {rows['numpy']}", flush=True)
    for factory in args.factories:
        name = factory_name(factory, n, d)
        t = time.perf_counter()
        index = build_index(base16, np.arange(n, dtype=np.int64), name)
        build_s = time.perf_counter() - t
        configure_search(index, k, nprobe=args.nprobe, ef_search=args.ef_search)
        size = round(index_bytes(index) / n, 1)

        def plain(q, index=index):
            return index.search(q, k)[1]

        def reranked(q, index=index):  # groundex's search of PQ codes: 10 x k candidates scored with the stored vectors
            found = []
            for v, c in zip(q, index.search(q, RERANK_FACTOR * k)[1], strict=True):
                c = c[c >= 0]  # FAISS pads with -1 when it finds fewer
                found.append(rerank(v, c, base16[c], k)[0])
            return np.stack(found)

        variants = [(name, plain)] + ([(f"{name}+rerank", reranked)] if needs_rerank(index) else [])
        for row_name, search in variants:
            t = time.perf_counter()
            found = search(queries)
            batched_s = time.perf_counter() - t
            p50, p99 = timed_single(search, queries[:single])
            rows[row_name] = {"build_s": round(build_s, 2), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                              "batched_qps": round(len(queries) / batched_s, 1),
                              "recall@10": round(recall(found, truth), 4), "bytes_per_vector": size,
                              "single_queries": single}
            print(f"  {n:>9,} {row_name:<16} {rows[row_name]}", flush=True)
        del index, plain, reranked, variants, search  # the closures hold the index (10 GB at 5M x 512 Flat)
    for row in rows.values():
        row["p50_speedup_vs_numpy"] = round(rows["numpy"]["p50_ms"] / max(row["p50_ms"], 1e-9), 2)
        row["qps_ratio_vs_numpy"] = round(row["batched_qps"] / rows["numpy"]["batched_qps"], 2)
    return rows


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}. Vectors: {result['vectors']}. {result['queries']} queries "
             f"(one-at-a-time latency over {result['single']}; over {result.get('single_large', result['single'])} "
             "from 1M vectors on), k = 10, "
             f"nprobe {result['nprobe'] or 'max(16, nlist/16)'}, "
             f"HNSW efSearch {result['ef_search'] or 'max(128, 4k)'}.", "",
             "| vectors | index | build s | p50 ms | p99 ms | batched q/s | recall@10 | bytes / vector "
             "| p50 speed-up vs numpy |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, rows in result["sizes"].items():
        for name, r in rows.items():
            lines.append(f"| {int(n):,} | {name} | {r['build_s']} | {r['p50_ms']} | {r['p99_ms']} "
                         f"| {r['batched_qps']:,} | {r['recall@10']} | {r.get('bytes_per_vector', '')} "
                         f"| {r['p50_speedup_vs_numpy']}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="use this workdir's real embeddings as the structure")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--factories", nargs="+", default=["Flat", "HNSW32", "auto-ivfflat", "auto-ivfpq"],
                        help="FAISS factory strings; auto-ivfflat / auto-ivfpq: groundex's IVF shape for the size")
    parser.add_argument("--dim", type=int, default=None,
                        help="dimension (default: the workdir's, else 256); above the workdir's, its embeddings are "
                             "lifted by a random orthonormal map, which keeps their structure")
    parser.add_argument("--noise", type=float, default=0.02,
                        help="per-dimension noise std added to real embeddings (0.02 in 256-d: norm ~0.3)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--single-large", type=int, default=50,
                        help="queries timed one at a time from 1M vectors on (a numpy query reads the whole base)")
    parser.add_argument("--nprobe", type=int, default=None, help="default: groundex's (max(16, nlist / 16))")
    parser.add_argument("--ef-search", type=int, default=None, help="default: groundex's (max(128, 4k))")
    parser.add_argument("--out", type=Path, help="write JSON here, and the markdown table next to it (.md)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    seeds = real_seeds(args.workdir) if args.workdir else None
    d = args.dim or (seeds.shape[1] if seeds is not None else 256)
    lifted = ""
    if seeds is not None and d != seeds.shape[1]:
        lifted = f", lifted from d={seeds.shape[1]} by an orthonormal map"
    noise = args.noise
    if seeds is not None and d != seeds.shape[1]:
        if d < seeds.shape[1]:
            raise SystemExit(f"--dim {d} is below the workdir's dimension {seeds.shape[1]}")
        noise = args.noise * (seeds.shape[1] / d) ** 0.5  # the same noise norm in more dimensions
        seeds = lift(seeds, d, rng)
    args.noise = noise
    machine = f"{platform.machine()}, {faiss.omp_get_max_threads()} faiss threads, faiss {faiss.__version__}"
    result = {"machine": machine,
              "vectors": (f"{len(seeds):,} real embeddings (d={d}{lifted}) + N(0, {args.noise:.4f}^2) noise"
                          if seeds is not None
                          else f"mixture of tight clusters (d={d})"),
              "queries": args.queries, "single": args.single, "single_large": args.single_large,
              "nprobe": args.nprobe, "ef_search": args.ef_search,
              "sizes": {}}
    for n in args.sizes:
        result["sizes"][str(n)] = bench_size(n, d, rng, seeds, args)
    emit(result, args.out, markdown(result))


if __name__ == "__main__":
    main()
