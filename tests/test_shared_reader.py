"""The shared read-only catalog connection of a long-running process (`warehouse.SharedReader`), and writers going
first: a process querying without pause must never lock a writer out."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from warehouse import Catalog, CatalogError, SharedReader, Workdir
from warehouse.catalog import writer_waiting_path

ROOT = Path(__file__).resolve().parents[1]

WRITER = """import sys
from warehouse import Catalog, Workdir
with Catalog.open(Workdir(sys.argv[1])) as catalog:
    catalog.start_run('written-by-another-process')
print('wrote', flush=True)
"""


@pytest.fixture
def workdir(tmp_path) -> Workdir:
    workdir = Workdir(tmp_path / "w")
    Catalog.open(workdir).close()  # an empty catalog at the current schema
    return workdir


def runs(catalog: Catalog) -> int:
    return catalog.counts()["runs"]


def test_one_connection_serves_many_queries_and_is_let_go_when_idle(workdir):
    with SharedReader(workdir, idle_s=0.2) as reader:
        for _ in range(20):
            with reader.reading() as catalog, reader.reading() as nested:  # nested: same thread, same connection
                assert runs(catalog) == runs(nested) == 0
        assert reader.opened == 1 and reader.is_open
        deadline = time.monotonic() + 10
        while reader.is_open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not reader.is_open  # idle: the file is free for writers that know nothing of the marker
        with reader.reading() as catalog:
            assert runs(catalog) == 0
        assert reader.opened == 2
    with pytest.raises(CatalogError, match="closed"), reader.reading():
        pass


def test_a_query_waiting_for_a_writer_when_the_reader_closes_opens_nothing(workdir):
    marker = writer_waiting_path(workdir.catalog_path)
    reader = SharedReader(workdir)
    errors = []

    def query() -> None:
        try:
            with reader.reading():
                pass
        except CatalogError as e:
            errors.append(e)

    marker.touch()  # a writer waits: the query waits for it
    thread = threading.Thread(target=query)
    thread.start()
    time.sleep(0.2)
    reader.close()
    marker.unlink()
    thread.join(timeout=30)
    assert len(errors) == 1 and "closed" in str(errors[0]) and not reader.is_open


def test_a_writer_gets_in_while_queries_never_pause(workdir, monkeypatch):
    """Threads query through one shared connection without a break (its idle release never comes); a writer in
    another process still gets the file, and the next queries see what it committed."""
    monkeypatch.setenv("GROUNDEX_LOCK_TIMEOUT", "60")
    stop, seen, errors = threading.Event(), set(), []

    def query() -> None:
        try:
            while not stop.is_set():
                with reader.reading() as catalog:
                    seen.add(runs(catalog))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    with SharedReader(workdir, idle_s=3600) as reader:
        threads = [threading.Thread(target=query) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            writer = subprocess.run([sys.executable, "-c", WRITER, str(workdir.root)], cwd=ROOT, text=True,
                                    capture_output=True, timeout=120, env={"GROUNDEX_LOCK_TIMEOUT": "30",
                                                                           "PYTHONPATH": str(ROOT), "PATH": ""})
            deadline = time.monotonic() + 30
            while 1 not in seen and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert writer.returncode == 0, writer.stderr[-2000:]
    assert not errors, errors
    assert seen == {0, 1}  # before and after the write, through the same reader
    assert reader.opened >= 2  # it let go for the writer and opened again
    assert not writer_waiting_path(workdir.catalog_path).exists()  # the writer cleared its marker once in


def test_a_reader_waits_for_a_waiting_writer_but_a_stale_marker_is_ignored(workdir, monkeypatch):
    marker = writer_waiting_path(workdir.catalog_path)
    monkeypatch.setenv("GROUNDEX_LOCK_TIMEOUT", "0.3")
    marker.touch()  # a writer waits: a new reader lets it go first, and gives up after the lock timeout
    with pytest.raises(CatalogError, match="held by another process"):
        Catalog.open(workdir, read_only=True)
    old = time.time() - 60
    os.utime(marker, (old, old))  # a writer that died long ago: ignored
    with Catalog.open(workdir, read_only=True) as first:
        marker.touch()
        # this process holds the file already: waiting for the writer would be waiting for itself
        with Catalog.open(workdir, read_only=True) as second:
            assert runs(first) == runs(second) == 0
