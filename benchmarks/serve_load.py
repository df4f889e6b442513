"""`groundex serve` under load: concurrent clients mixing search, grounding and metadata while an index build runs.

    python benchmarks/serve_load.py --workdir W [--clients 8] [--seconds 60] [--max-requests 20000] [--out FILE.json]

The workdir is copied first (its catalog and manifest copied, every other file hard-linked: builds write new files
and never change old ones), so the run leaves W as it was. A real `groundex serve` process on a loopback port
answers `--clients` threads, each sending one request at a time, for `--seconds`: text -> image searches (half),
phrase -> region searches across the collection (a quarter), `GET /images/{id}` and clip back's `POST /metadata`
(an eighth each). Halfway through, `groundex index --rebuild` runs on the copy (new versions of every index); the
server must answer throughout and serve the new versions afterwards. Bounded: the run stops after `--seconds`, or
later when the build is slower (a quarter of `--seconds`, at most 15 s, after it ends; 10 minutes in all), or after
`--max-requests`.

Figures: requests/s, p50/p99 per kind and overall, before / during / after the build; errors (must be 0: the
script exits 1 otherwise); the server's RSS (VmRSS) idle before the load, after half of it (warm: thread pools,
allocator arenas and caches filled, just before the build), at its peak and at the end, against the bound stated
here (`RSS_BOUND`: at the end at most 25% above half-way, with the new index versions loaded).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from _report import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warehouse import Catalog, Workdir  # noqa: E402

RSS_BOUND = 1.25  # RSS after the load / RSS before it
MIX = [("search", 4), ("ground", 2), ("image", 1), ("metadata", 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def copy_workdir(source: Path, target: Path) -> None:
    """`source` at `target`: the catalog and manifest copied, the rest hard-linked (never modified in place)."""
    mutable = ("catalog.duckdb", "manifest.json")
    shutil.copytree(source, target, copy_function=os.link,
                    ignore=lambda _, names: [n for n in names if n.startswith(mutable)])
    for name in os.listdir(source):
        if name.startswith(mutable):
            shutil.copy2(source / name, target / name)


def _stats(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    ms = np.array(seconds) * 1000
    return {"n": len(seconds), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    source = Workdir(args.workdir)
    with Catalog.open(source, read_only=True) as catalog:
        texts = [t for _, _, t in catalog.caption_rows("val")][:500]
        phrases = sorted({r.text for r in catalog.grounding_rows(split="val")})[:500]
        image_ids = catalog.image_ids_where("split = 'val'")
    scratch = Path(tempfile.mkdtemp(prefix="groundex-load-"))
    workdir = scratch / "w"
    copy_workdir(source.root, workdir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with open(scratch / "server.log", "w") as log:
            server = subprocess.Popen([sys.executable, "-m", "ui.cli", "serve", "--workdir", str(workdir), "--port",
                                       str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_healthy(base, server)
                call(base, "search")  # warm every path once before measuring
                call(base, "ground")
                health_before = _get(base, "/health")
                result = _load(args, base, server, workdir, texts, phrases, image_ids)
                health_after = _get(base, "/health")
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=60)
        result["indexes_before"], result["indexes_after"] = health_before["indexes"], health_after["indexes"]
        result["server_log_tail"] = (scratch / "server.log").read_text()[-3000:] if result["errors"] else ""
    except BaseException:
        sys.stderr.write((scratch / "server.log").read_text()[-3000:])
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.update(machine=f"{platform.machine()}, {platform.python_version()}, {os.cpu_count()} cores",
                  workdir=str(source.root), rss_bound=RSS_BOUND)
    result["rss_ok"] = result["rss_mb"]["after"] <= RSS_BOUND * result["rss_mb"]["warm"]
    result["new_indexes_served"] = bool(result["indexes_before"]) and all(
        result["indexes_after"].get(k, 0) > v for k, v in result["indexes_before"].items())
    emit(result, args.out, _markdown(result))
    if result["errors"] or not result["rss_ok"] or not result["new_indexes_served"]:
        raise SystemExit(1)


def wait_healthy(base: str, server: subprocess.Popen) -> None:
    started = time.monotonic()
    while True:
        try:
            _get(base, "/health")
            return
        except OSError:
            if server.poll() is not None or time.monotonic() - started > 120:
                raise SystemExit("the server did not come up (see its log)") from None
            time.sleep(0.2)


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}{path}", timeout=60) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def call(base: str, kind: str, rng: random.Random | None = None, texts=("a dog",), phrases=("a dog",),
         image_ids=(1,)) -> None:
    """One request of `kind`; raises on anything but a 200 with the expected shape."""
    rng = rng or random.Random(0)
    if kind == "search":
        assert len(_post(base, "/search", {"text": rng.choice(texts), "k": 10})["hits"]) == 10
    elif kind == "ground":
        assert len(_post(base, "/ground", {"phrase": rng.choice(phrases), "k": 5})["results"]) == 5
    elif kind == "image":
        assert _get(base, f"/images/{rng.choice(image_ids)}")["captions"]
    else:
        ids = [int(i) for i in rng.sample(list(image_ids), 10)]
        assert len(_post(base, "/metadata", {"ids": ids})) == 10


def _load(args, base, server, workdir, texts, phrases, image_ids) -> dict:
    kinds = [k for k, weight in MIX for _ in range(weight)]
    records: list[tuple[float, str, float]] = []  # (start, kind, seconds)
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = random.Random(args.seed * 1000 + n)
        while not stop.is_set():
            kind = rng.choice(kinds)
            started = time.monotonic()
            try:
                call(base, kind, rng, texts, phrases, image_ids)
            except (OSError, AssertionError, KeyError, ValueError, http.client.HTTPException) as e:
                with lock:
                    errors.append(f"{kind}: {type(e).__name__}: {str(e)[:200]}")
                continue
            with lock:
                records.append((started, kind, time.monotonic() - started))
                if len(records) >= args.max_requests:
                    stop.set()

    rss = {"before": _rss_mb(server.pid)}
    series: list[tuple[float, float]] = []  # (seconds into the load, RSS MB)
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    build, build_window = None, None
    while not stop.is_set():
        time.sleep(0.25)
        now = time.monotonic() - t0
        series.append((round(now, 2), round(_rss_mb(server.pid), 1)))
        if build is None and now >= args.seconds / 2:
            build_window = [now, None]
            rss["warm"] = _rss_mb(server.pid)  # after half the load, just before the build
            build_log = open(workdir.parent / "build.log", "w")  # noqa: SIM115 (open while the build runs)
            build = subprocess.Popen([sys.executable, "-m", "ui.cli", "index", "--workdir", str(workdir), "--rebuild",
                                      "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=build_log)
        if build is not None and build_window[1] is None and build.poll() is not None:
            build_window[1] = now
        built = build_window is not None and build_window[1] is not None
        if now >= 600 or built and now >= max(args.seconds, build_window[1] + min(15.0, args.seconds / 4)):
            stop.set()  # at `--seconds`, with at least a quarter of it (15 s at most) after the build
    for t in threads:
        t.join(timeout=120)
    elapsed = time.monotonic() - t0
    if build is not None and build.poll() is None:
        build.wait(timeout=600)
        build_window[1] = time.monotonic() - t0
    build_error = None
    if build is not None:
        build_log.close()
        if build.returncode != 0:
            build_error = (workdir.parent / "build.log").read_text()[-2000:]
    rss["after"] = _rss_mb(server.pid)
    rss["peak"] = max([rss["after"], *(m for _, m in series)])

    def phase(start: float, end: float) -> dict:
        chosen = [(k, s) for t, k, s in records if start <= t - t0 < end]
        return {"requests_per_s": round(len(chosen) / max(end - start, 1e-9), 2),
                "all": _stats([s for _, s in chosen]),
                **{k: _stats([s for kk, s in chosen if kk == k]) for k, _ in MIX}}

    b0, b1 = build_window or (elapsed, elapsed)
    return {"clients": args.clients, "seconds": round(elapsed, 1), "requests": len(records),
            "errors": len(errors), "error_samples": errors[:5], "build_error": build_error,
            "build_s": [round(b0, 1), round(b1, 1)],
            "whole": phase(0, elapsed), "before_build": phase(0, b0), "during_build": phase(b0, b1),
            "after_build": phase(b1, elapsed), "rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "rss_series": series[::4]}


def _markdown(r: dict) -> str:
    rows = []
    for name in ("whole", "before_build", "during_build", "after_build"):
        p = r[name]
        cells = [f"{p['all'].get('p50_ms', '-')} / {p['all'].get('p99_ms', '-')}"]
        cells += [f"{p[k].get('p50_ms', '-')} / {p[k].get('p99_ms', '-')}" for k, _ in MIX]
        rows.append(f"| {name.replace('_', ' ')} | {p['requests_per_s']} | {' | '.join(cells)} |")
    rss = r["rss_mb"]
    return "\n".join([
        f"Machine: {r['machine']}; workdir {r['workdir']} (a hard-linked copy); {r['clients']} clients, one request "
        f"at a time each, for {r['seconds']} s; `groundex index --rebuild` from {r['build_s'][0]} s to "
        f"{r['build_s'][1]} s.", "",
        "| phase | requests/s | all p50 / p99 ms | search | ground | image | metadata |",
        "|---|---:|---:|---:|---:|---:|---:|", *rows, "",
        f"Requests: {r['requests']:,}; errors: {r['errors']}. Index versions served: {r['indexes_before']} before, "
        f"{r['indexes_after']} after. Server RSS: {rss['before']} MB idle before the load, {rss['warm']} MB after half "
        f"of it (just before the build), {rss['peak']} MB at the peak, {rss['after']} MB at the end (bound: end <= "
        f"{r['rss_bound']} x half-way: {'met' if r['rss_ok'] else 'NOT met'}).", ""])


if __name__ == "__main__":
    main()
