"""Search latency and recall: FAISS index types vs numpy brute force, at 10k / 100k / 1M vectors.

    python benchmarks/search_latency.py [--workdir W] [--sizes 10000 100000 1000000] [--out docs/results/search.json]

Vectors must have the structure of real embeddings, or every ANN index looks broken: with --workdir the
base set is that workdir's real image and caption embeddings (newest model), each repeated with small
Gaussian noise until N; without it, a mixture of many tight clusters. Queries are drawn the same way and
are not in the base set. For each size: exact ground truth (top 10), then per index type the build
time, one-query-at-a-time latency p50/p99 (ms), batched queries per second, and recall@10 vs exact;
numpy brute force (batched and one at a time) is the baseline the ratios are taken against.
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

from indexer.index import build_index, configure_search, default_factory  # noqa: E402


def structured(n: int, d: int, rng: np.random.Generator, seeds: np.ndarray | None, noise: float) -> np.ndarray:
    if seeds is not None:
        x = seeds[rng.integers(len(seeds), size=n)] + noise * rng.normal(size=(n, d)).astype(np.float32)
    else:
        centres = rng.normal(size=(max(100, n // 200), d)).astype(np.float32)
        x = centres[rng.integers(len(centres), size=n)] + 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def real_seeds(workdir: Path) -> np.ndarray:
    from indexer.embed import load_embeddings
    from warehouse import Catalog, Workdir

    w = Workdir(workdir)
    with Catalog.open(w, read_only=True) as catalog:
        model_id = catalog.model()["id"]
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


def numpy_search(base: np.ndarray, q: np.ndarray, k: int, block: int = 64) -> np.ndarray:
    """Exact top-k by brute force, `block` queries at a time (1,000 x 5M scores would not fit in memory)."""
    out = []
    for s in range(0, len(q), block):
        scores = q[s:s + block] @ base.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def lift(seeds: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    """Real embeddings carried into d > their dimension by a random orthonormal map: every inner product,
    and so the neighbourhood structure, is kept exactly."""
    q, _ = np.linalg.qr(rng.normal(size=(d, seeds.shape[1])))
    return (seeds @ q.T).astype(np.float32)


def bench_size(n: int, d: int, rng, seeds, args) -> dict:
    base = structured(n, d, rng, seeds, args.noise)
    queries = structured(args.queries, d, rng, seeds, args.noise)
    ids = np.arange(n, dtype=np.int64)
    k = 10
    t = time.perf_counter()
    truth = numpy_search(base, queries, k)
    numpy_batched_s = time.perf_counter() - t
    np_p50, np_p99 = timed_single(lambda q: numpy_search(base, q, k), queries[: args.single])
    rows = {"numpy": {"build_s": 0.0, "p50_ms": round(np_p50, 3), "p99_ms": round(np_p99, 3),
                      "batched_qps": round(len(queries) / numpy_batched_s, 1), "recall@10": 1.0,
                      "bytes_per_vector": float(d * 4)}}
    for factory in args.factories:
        name = default_factory(n, d) if factory == "auto-ivfpq" else factory
        if factory == "auto-ivfpq" and not name.startswith("IVF"):  # groundex's IVF-PQ shape at any size
            nlist = 2 ** int(round(np.log2(4 * np.sqrt(n))))
            name = f"IVF{nlist},PQ{d // 4}"
        t = time.perf_counter()
        index = build_index(base, ids, name)
        build_s = time.perf_counter() - t
        configure_search(index, k, nprobe=args.nprobe, ef_search=args.ef_search)
        t = time.perf_counter()
        _, found = index.search(queries, k)
        batched_s = time.perf_counter() - t
        p50, p99 = timed_single(lambda q, index=index: index.search(q, k), queries[: args.single])
        rows[name] = {"build_s": round(build_s, 2), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                      "batched_qps": round(len(queries) / batched_s, 1), "recall@10": round(recall(found, truth), 4),
                      "bytes_per_vector": round(len(faiss.serialize_index(index)) / n, 1)}
        print(f"  {n:>9,} {name:<16} {rows[name]}", flush=True)
        del index
    for row in rows.values():
        row["p50_speedup_vs_numpy"] = round(rows["numpy"]["p50_ms"] / max(row["p50_ms"], 1e-9), 2)
        row["qps_ratio_vs_numpy"] = round(row["batched_qps"] / rows["numpy"]["batched_qps"], 2)
    return rows


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}. Vectors: {result['vectors']}. {result['queries']} queries "
             f"(one-at-a-time latency over {result['single']}), k = 10, "
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
    parser.add_argument("--factories", nargs="+", default=["Flat", "HNSW32", "auto-ivfpq"])
    parser.add_argument("--dim", type=int, default=None,
                        help="dimension (default: the workdir's, else 256); above the workdir's, its embeddings are "
                             "lifted by a random orthonormal map, which keeps their structure")
    parser.add_argument("--noise", type=float, default=0.02,
                        help="per-dimension noise std added to real embeddings (0.02 in 256-d: norm ~0.3)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
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
              "queries": args.queries, "single": args.single, "nprobe": args.nprobe, "ef_search": args.ef_search,
              "sizes": {}}
    for n in args.sizes:
        result["sizes"][str(n)] = bench_size(n, d, rng, seeds, args)
    emit(result, args.out, markdown(result))


if __name__ == "__main__":
    main()
