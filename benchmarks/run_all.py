"""Every benchmark in one command, then one report: JSON per benchmark and a markdown report with plots.

    python benchmarks/run_all.py --demo-workdir groundex-work [--sample-workdir W] [--full]
                                 [--out docs/results/suite]

- embedding throughput: bare forward, the local pipeline, Ray (local), a naive loop (demo workdir);
- search latency, recall@10 and bytes per vector for Flat, HNSW32 and IVF-PQ against numpy brute force,
  at 10k and 100k vectors (--full: also 1M and 5M), d = 256 (--full: also 512), on the demo's real
  embeddings;
- phrase -> region search at 31,783 images (the sample workdir's real patch embeddings when given, else
  the demo's);
- the app's pages (sample workdir when given, else the demo);
- --full: groundex against clip-retrieval on 2,000 sample images, ViT-S-32 and ViT-B-32 (clip-retrieval in its own
  venv), and embedding options (batch size, channels_last, torch.compile at 2,000 and 30,000 images), ViT-S-32;
- embedding precision, bf16 against float32: agreement, val recall and pointing game (sample workdir when given);
- `groundex serve`: text -> image over HTTP against in-process and the CLI, and 8 clients for 60 s with an index
  build halfway (sample workdir when given);
- --full: end-to-end build time per stage of the demo (and of --sample-root, with a 5-minute training budget and
  3 captioner epochs), each in a new workdir.
Each benchmark runs in its own process (`python benchmarks/<name>.py ... --out OUT/<name>.json`); a failed
one is reported and the others still run. `benchmarks/report.py OUT` (run at the end) writes OUT/REPORT.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-workdir", type=Path, required=True, help="a workdir built by `groundex demo`")
    parser.add_argument("--sample-workdir", type=Path, default=None,
                        help="a workdir built from the real Flickr30k sample (optional)")
    parser.add_argument("--sample-model", default=None,
                        help="the sample workdir's model for region search and the app (default: the newest)")
    parser.add_argument("--sample-root", type=Path, default=None,
                        help="a Flickr30k Entities folder: with --full, its end-to-end build is timed per stage")
    parser.add_argument("--full", action="store_true",
                        help="1M and 5M vectors, d = 512, and end-to-end builds per stage (hours on 2 cores; "
                             "5M x 512 needs 24 GB of memory)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these benchmarks (names below)")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "results" / "suite")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    real = args.sample_workdir or args.demo_workdir
    sizes = ["10000", "100000", *(["1000000", "5000000"] if args.full else [])]
    jobs: dict[str, list[str]] = {
        "embed_throughput": ["embed_throughput.py", "--workdir", str(args.demo_workdir)],
        "search_latency_d256": ["search_latency.py", "--workdir", str(args.demo_workdir), "--sizes", *sizes],
        "region_search": ["region_search.py", "--workdir", str(real), "--images", "31783"],
        "ui_pages": ["ui_pages.py", "--workdir", str(real)],
    }
    if args.sample_workdir:
        jobs["embed_precision"] = ["embed_precision.py", "--workdir", str(args.sample_workdir)]
    jobs["serve_latency"] = ["serve_latency.py", "--workdir", str(real)]
    jobs["serve_load"] = ["serve_load.py", "--workdir", str(real)]  # on a hard-linked copy: `real` stays as it was
    if args.sample_workdir and args.sample_model:
        for name in ("region_search", "ui_pages"):
            jobs[name] += ["--model", args.sample_model]
    if args.full:
        jobs["search_latency_d512"] = ["search_latency.py", "--workdir", str(args.demo_workdir), "--dim", "512",
                                       "--sizes", *sizes[:3]]
        # 5M x 512 without HNSW: groundex never builds HNSW above 2M vectors, and it would take most of an hour here.
        # It peaked at 23 GB resident (15 min on 2 cores): run it on a machine with nothing else to do.
        jobs["search_latency_d512_5m"] = ["search_latency.py", "--workdir", str(args.demo_workdir), "--dim", "512",
                                          "--sizes", "5000000", "--factories", "Flat", "auto-ivfflat", "auto-ivfpq"]
        jobs["search_latency_d256_ivfpq"] = ["search_latency.py", "--workdir", str(args.demo_workdir), "--sizes",
                                             "1000000", "5000000", "--factories", "auto-ivfpq"]
        # the real sample's first 2,000 images (needs ../shared/data); clip-retrieval in its own venv, made from
        # the package registry on the first run
        jobs["vs_clip_retrieval"] = ["vs_clip_retrieval.py", "--images", "2000", "--rounds", "2"]
        jobs["embed_options"] = ["embed_options.py", "--arch", "ViT-S-32"]
        scratch = Path(tempfile.mkdtemp(prefix="groundex-build-"))
        jobs["build_stages_demo"] = ["build_stages.py", "--workdir", str(scratch / "demo")]
        if args.sample_root:
            jobs["build_stages_sample"] = ["build_stages.py", "--workdir", str(scratch / "sample"), "--flickr30k",
                                           str(args.sample_root), "--minutes", "5", "--caption-epochs", "3"]
    failed = []
    for name, command in jobs.items():
        if args.only and name not in args.only:
            continue
        out = args.out / f"{name}.json"
        flag = "--json" if name == "ui_pages" else "--out"
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / command[0]), *command[1:], flag, str(out)])
        print(f"== {name}: exit {code} in {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    subprocess.check_call([sys.executable, str(HERE / "report.py"), str(args.out)])
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (the report covers the others)")


if __name__ == "__main__":
    main()
