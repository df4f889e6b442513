"""`groundex serve` latency: text -> image over HTTP against the same query in-process and as one CLI call.

    python benchmarks/serve_latency.py --workdir W [--queries 200] [--cli-runs 3] [--out FILE.json]

One run, one machine, the same workdir and model: `Searcher.text_to_image` in this process (warm; opening the
catalog per query as a script does, and again with a `SharedReader` as the server reads it); `POST /search`
to a real `groundex serve` process on a loopback port (warm, one client, one request at a time, a new connection
each, as a script would make them); and `groundex search` as a new process each time (cold: what a script calling
the CLI pays). Queries are the split's captions, k = 10. Figures: p50 and p99 in milliseconds, and the ratios the
issue asks for (HTTP p50 within 2x of in-process, at least 50x faster than the CLI).
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from _report import emit  # noqa: E402
from serve_load import free_port, wait_healthy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.search import Searcher  # noqa: E402
from warehouse import Catalog, SharedReader, Workdir  # noqa: E402


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "n": len(seconds)}


def _timed(searcher: Searcher, texts: list[str]) -> list[float]:
    """Seconds per `text_to_image` call, after one to warm up."""
    searcher.text_to_image(texts[0], k=10)
    out = []
    for text in texts:
        t = time.perf_counter()
        searcher.text_to_image(text, k=10)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cli-runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workdir = Workdir(args.workdir)
    with Catalog.open(workdir, read_only=True) as catalog:
        texts = [t for _, _, t in catalog.caption_rows(args.split)][: args.queries]

    searcher = Searcher(workdir)
    in_process = _timed(searcher, texts)
    with SharedReader(workdir) as reader:  # what the server does: one catalog connection held between queries
        in_process_shared = _timed(Searcher(workdir, catalogs=reader), texts)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ui.cli", "serve", "--workdir", str(workdir.root), "--port",
                               str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        wait_healthy(base, server)
        ready_s = time.perf_counter() - started

        def post(text: str) -> list:
            request = urllib.request.Request(f"{base}/search", data=json.dumps({"text": text, "k": 10}).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=30) as r:
                return json.loads(r.read())["hits"]

        post(texts[0])
        http = []
        for text in texts:
            t = time.perf_counter()
            hits = post(text)
            http.append(time.perf_counter() - t)
        assert [h["id"] for h in hits] == [h.id for h in searcher.text_to_image(texts[-1], k=10)]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    cli = []
    for text in texts[: args.cli_runs]:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ui.cli", "search", "--workdir", str(workdir.root), text, "--json"],
                       cwd=ROOT, check=True, capture_output=True)
        cli.append(time.perf_counter() - t)

    result = {"machine": f"{platform.machine()}, {platform.python_version()}", "workdir": str(workdir.root),
              "model": searcher.model_id, "queries": len(texts), "server_ready_s": round(ready_s, 2),
              "in_process": _percentiles(in_process), "in_process_shared": _percentiles(in_process_shared),
              "http": _percentiles(http), "cli": _percentiles(cli)}
    result["http_p50_over_in_process"] = round(result["http"]["p50_ms"] / result["in_process"]["p50_ms"], 2)
    result["http_p50_over_in_process_shared"] = round(
        result["http"]["p50_ms"] / result["in_process_shared"]["p50_ms"], 2)
    result["cli_p50_over_http"] = round(result["cli"]["p50_ms"] / result["http"]["p50_ms"], 1)
    markdown = "\n".join([
        f"Machine: {result['machine']}; workdir {workdir.root}, model {searcher.model_id}; {len(texts)} {args.split} "
        f"captions as text queries, k = 10; the server was ready {ready_s:.1f} s after its start.", "",
        "| path | p50 ms | p99 ms | runs |", "|---|---:|---:|---:|",
        *[f"| {name} | {result[key]['p50_ms']} | {result[key]['p99_ms']} | {result[key]['n']} |" for name, key in (
            ("`Searcher.text_to_image`, in process", "in_process"),
            ("the same with a `SharedReader` (the server's catalog access)", "in_process_shared"),
            ("`POST /search` to `groundex serve`", "http"),
            ("`groundex search`, a new process", "cli"))], "",
        f"HTTP p50 / in-process p50: {result['http_p50_over_in_process']}x (over the same catalog access: "
        f"{result['http_p50_over_in_process_shared']}x); CLI p50 / HTTP p50: "
        f"{result['cli_p50_over_http']}x.", ""])
    emit(result, args.out, markdown)


if __name__ == "__main__":
    main()
