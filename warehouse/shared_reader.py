"""One read-only catalog connection shared by the queries of a long-running process (`groundex serve`).

Opening the catalog costs ~20 ms, more than a search itself; a server that opened it per query would spend most
of its time there. Holding a connection open for good would lock every writer out (DuckDB lets one process
write, or several read). `SharedReader` keeps one open between queries and lets go of it when a writer asks (the
`<catalog>.writer-waiting` marker that `Catalog` writers touch while they wait) or after a moment without
queries. While a writer waits, new queries wait too, so the shared connection drains and the writer gets in;
the next query opens the catalog again and sees what the writer committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .catalog import Catalog, lock_timeout_s, writer_waiting
from .errors import CatalogError
from .workdir import Workdir

__all__ = ["SharedReader"]


class SharedReader:
    """Read-only `Catalog`s for concurrent queries (one cursor each) over one connection held between them."""

    def __init__(self, workdir: Workdir, idle_s: float = 2.0, poll_s: float = 0.02):
        if not workdir.exists():
            workdir.read_manifest()  # raises a clear "not a workdir" error
        self.path = workdir.catalog_path
        self.idle_s = idle_s
        self.poll_s = poll_s
        self.opened = 0                     # how many times the connection was (re)opened: for tests and stats
        self._root: Catalog | None = None
        self._active = 0                    # cursors handed out and not yet closed
        self._last_used = time.monotonic()
        self._state = threading.Condition()
        self._depth = threading.local()     # a thread already reading does not wait for a writer (it would wait
        self._closed = False                # for itself)
        self._releaser = threading.Thread(target=self._release_when_asked, name="catalog-reader", daemon=True)
        self._releaser.start()

    @property
    def is_open(self) -> bool:
        return self._root is not None

    @contextmanager
    def reading(self) -> Iterator[Catalog]:
        """A read-only catalog for one query (or a nested part of one, on the same thread)."""
        depth = getattr(self._depth, "n", 0)
        with self._state:
            if self._closed:
                raise CatalogError("this catalog reader is closed")
            deadline = time.monotonic() + lock_timeout_s()
            while depth == 0 and writer_waiting(self.path):  # let the writer in before starting another query
                if time.monotonic() >= deadline:
                    break  # the writer is stuck: read anyway (its own wait ends with a clear error)
                self._state.wait(self.poll_s)
            if self._root is None:
                self._root = Catalog(self.path, read_only=True)
                self.opened += 1
            cursor = self._root.con.cursor()
            self._active += 1
        self._depth.n = depth + 1
        try:
            yield Catalog.on_cursor(cursor, self.path)
        finally:
            self._depth.n = depth
            cursor.close()
            with self._state:
                self._active -= 1
                self._last_used = time.monotonic()
                self._state.notify_all()

    def _release_when_asked(self) -> None:
        """Closes the shared connection once no query uses it and a writer waits, or queries stopped coming."""
        with self._state:
            while not self._closed:
                self._state.wait(self.poll_s)
                if self._root is not None and self._active == 0 and (
                        writer_waiting(self.path) or time.monotonic() - self._last_used > self.idle_s):
                    self._root.close()
                    self._root = None

    def close(self) -> None:
        with self._state:
            self._closed = True
            while self._active:
                self._state.wait(self.poll_s)
            if self._root is not None:
                self._root.close()
                self._root = None
            self._state.notify_all()
        self._releaser.join(timeout=5)

    def __enter__(self) -> SharedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
