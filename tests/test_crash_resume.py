"""Crashes: each long command killed with SIGKILL at a random point of its work, then run again, ends where an
uninterrupted run ends (catalog rows, embeddings, index contents, model and captioner hashes, tags, captions).

Two workdirs are built from the same synthetic scenes: `reference` runs every command once; `crashed` runs each
command, kills it (a real subprocess, `kill -9`) once it has done part of its work plus a random delay, and then
runs the very same command again. Ready conditions look at what the command has written, so the kill lands
inside the work, not in Python's start-up; each kill is checked to have hit a live process.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from warehouse import Catalog, Workdir

pytestmark = pytest.mark.slow  # kills every long command midway, then runs it again

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 400

STEPS = [  # (name, arguments after `groundex`, workdir -> bool: has part of the work been done?, extra delay s)
    ("ingest", ["ingest", "synthetic", "--n", str(N_IMAGES), "--size", "64", "--chunk-size", "40", "--workers", "1",
                "--no-progress"], lambda w: _count(w, "SELECT count(*) FROM images") >= 40, 0.2),
    ("train", ["train", "--epochs", "3", "--batch-size", "32", "--no-progress"],
     lambda w: any((w.root / "training" / "model").glob("run-*/last/state.json")), 0.8),
    ("index", ["index", "--shard-size", "64", "--batch-size", "32", "--no-progress"],
     lambda w: any(w.embeddings_dir.glob("*/image/shard-*.npy")), 0.3),
    ("tag", ["tag", "--method", "knn", "--min-images", "5"],
     lambda w: _count(w, "SELECT count(*) FROM runs WHERE command LIKE 'tag%' AND status = 'running'") > 0, 0.3),
    ("caption train", ["caption", "train", "--epochs", "3", "--batch-size", "32", "--layers", "1", "--no-progress"],
     lambda w: any((w.root / "training" / "captioner").glob("*/checkpoint-*/trainer_state.json")), 0.5),
    ("caption generate", ["caption", "generate", "--beams", "1"],
     lambda w: _count(w, "SELECT count(*) FROM runs WHERE command = 'caption generate' AND status = 'running'") > 0,
     0.3),
]


def _count(workdir: Workdir, sql: str) -> int:
    if not workdir.catalog_path.exists():
        return 0
    with Catalog.open(workdir, read_only=True) as catalog:
        return catalog.query(sql)[0][0]


def _command(args: list[str], workdir: Workdir) -> list[str]:
    return [sys.executable, "-m", "ui.cli", *args[:2 if args[0] in ("ingest", "caption") else 1],
            "--workdir", str(workdir.root), *args[2 if args[0] in ("ingest", "caption") else 1:]]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(args: list[str], workdir: Workdir) -> str:
    done = subprocess.run(_command(args, workdir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"groundex {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stderr


def _kill_midway(args: list[str], workdir: Workdir, ready, delay_s: float, rng: random.Random) -> None:
    process = subprocess.Popen(_command(args, workdir), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready(workdir):
        if process.poll() is not None:
            pytest.fail(f"groundex {' '.join(args)} ended (exit {process.returncode}) before its kill point:\n"
                        f"{process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"groundex {' '.join(args)} never reached its kill point"
        time.sleep(0.05)
    time.sleep(rng.uniform(0, delay_s))
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert alive, f"groundex {' '.join(args)} finished before the kill: the test killed nothing"
    deadline = time.monotonic() + 10  # its worker processes (image decoders) end with it
    while (left := _processes_of(workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"groundex {' '.join(args)} left processes behind after its kill: {left}"


def _processes_of(workdir: Workdir) -> list[int]:
    """Live processes whose command line names this workdir (zombies and vanished ones aside)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(workdir.root) in (proc / "cmdline").read_bytes().decode(errors="replace") \
                    and " Z" not in (proc / "stat").read_text().split(")")[-1][:3]:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _snapshot(workdir: Workdir) -> dict:
    """What a command's result is made of, by natural keys (image key, caption text), not row ids."""
    from indexer.index import load_index
    from indexer.shards import load_embeddings
    from indexer.verify import faiss_ids

    with Catalog.open(workdir, read_only=True) as c:
        key = dict(c.query("SELECT id, key FROM images"))
        snap = {
            "images": sorted(c.query("SELECT key, sha256, split, width, height FROM images")),
            "captions": sorted(c.query("SELECT i.key, c.ordinal, c.text, c.source, coalesce(c.model_id, '') "
                                       "FROM captions c JOIN images i ON i.id = c.image_id")),
            "phrases": c.query("SELECT count(*) FROM phrases")[0][0],
            "boxes": sorted(c.query("SELECT i.key, round(x1, 3), round(y1, 3), round(x2, 3), round(y2, 3) "
                                    "FROM boxes b JOIN images i ON i.id = b.image_id")),
            "models": sorted(r[0] for r in c.query("SELECT id FROM models")),
            "tags": sorted(c.query("SELECT i.key, keyword, round(score, 4), method FROM tags t "
                                   "JOIN images i ON i.id = t.image_id")),
        }
        model_id = c.model().id
        indexes = {kind: c.current_index(model_id, kind) for kind in ("image", "caption", "patch")}
    ids, vectors = load_embeddings(workdir, model_id, "image")
    snap["image_vectors"] = {key[i]: v.tobytes() for i, v in zip(ids.tolist(), vectors, strict=True)}
    snap["indexes"] = {kind: (info["factory"], info["n"]) for kind, info in indexes.items()}
    snap["image_index_ids"] = sorted(key[int(i)] for i in faiss_ids(load_index(indexes["image"]["path"])))
    with Catalog.open(workdir, read_only=True) as c:
        snap["artefacts"] = sorted((a.kind, a.id) for a in c.artefacts())
    return snap


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Workdir:
    workdir = Workdir(tmp_path_factory.mktemp("reference") / "w")
    for _, args, _, _ in STEPS:
        _run(args, workdir)
    return workdir


def test_every_long_command_killed_midway_and_run_again_ends_as_an_uninterrupted_run(reference, tmp_path):
    rng = random.Random(int(os.environ.get("GROUNDEX_KILL_SEED", "0")))
    workdir = Workdir(tmp_path / "w")
    for name, args, ready, delay_s in STEPS:
        _kill_midway(args, workdir, ready, delay_s, rng)
        stderr = _run(args, workdir)
        if name in ("train", "caption train"):
            assert "resuming" in stderr, f"{name} started over instead of resuming:\n{stderr[-2000:]}"
    got, expected = _snapshot(workdir), _snapshot(reference)
    for part in expected:
        assert got[part] == expected[part], f"{part} differs after the kills"
    # ... and the crashed workdir is sound: the killed runs are notes, not problems
    from indexer.verify import verify_workdir

    report = verify_workdir(workdir, progress=False)
    assert report.sound, report.problems
    assert any(f.area == "runs" for f in report.findings)
