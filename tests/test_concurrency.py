"""Concurrent use: searches run while another process ingests and indexes into the same workdir. Every search
must succeed and answer from a complete index version (DuckDB's one-writer rule is met by short writes and a
waiting open; index files are versioned, and the catalog row naming the current one is written last)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.search import Searcher
from tests.helpers import built_workdir
from warehouse import Catalog

pytestmark = pytest.mark.slow  # another process ingests and indexes while this one searches

ROOT = Path(__file__).resolve().parents[1]


def test_searches_during_an_ingest_and_index_in_another_process(tmp_path):
    workdir = built_workdir(tmp_path / "w", n=150, epochs=1)
    script = (f"{sys.executable} -m ui.cli ingest synthetic --workdir {workdir.root} --n 600 --seed 1 --size 64 "
              f"--chunk-size 10 --workers 1 --no-progress && "
              f"{sys.executable} -m ui.cli index --workdir {workdir.root} --shard-size 100 --no-progress")
    writer = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    searches, sizes, images_seen = 0, set(), set()
    while writer.poll() is None or searches == 0:
        searcher = Searcher(workdir)  # a fresh reader each time, as a CLI search is
        hits = searcher.text_to_image("a red dog on the grass", k=5)
        assert len(hits) == 5 and all(h.path for h in hits)
        sizes.add(searcher.index("image").ntotal)
        for _ in range(3):  # a catalog read is much cheaper than a search: look at the catalog a few times
            with Catalog.open(workdir, read_only=True) as catalog:
                images_seen.add(catalog.counts()["images"])
            time.sleep(0.02)
        searches += 1
    assert writer.returncode == 0, writer.stderr.read()[-3000:]
    # the reader really overlapped the writer: it saw the catalog grow and the index change version
    assert len(images_seen) >= 3, images_seen
    assert 150 in sizes and sizes <= {150, 750}, sizes  # only complete index versions, never a partial one
    final = Searcher(workdir)
    assert final.index("image").ntotal == 750 and len(final.text_to_image("a red dog", k=5)) == 5
