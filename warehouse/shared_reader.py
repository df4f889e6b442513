"""One read-only catalog connection shared by the queries of a long-running process (`groundex serve`).

Opening the catalog costs ~20 ms, more than a search itself; a server that opened it per query would spend most
of its time there. Holding a connection open for good would lock every writer out (DuckDB lets one process
write, or several read). `SharedReader` keeps one open between queries and lets go of it when a writer asks (the
`<catalog>.writer-waiting` marker that `Catalog` writers touch while they wait) or after a moment without
queries. While a writer waits, new queries wait too, so the shared connection drains and the writer gets in;
the next query opens the catalog again and sees what the writer committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .catalog import Catalog, writer_waiting
from .errors import CatalogError
from .workdir import Workdir

__all__ = ["SharedReader"]

_logger = logging.getLogger(__name__)
YIELD_S = 10.0  # how long a query waits for a waiting writer to get in before it opens the catalog anyway


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
            deadline = time.monotonic() + YIELD_S
            while depth == 0 and writer_waiting(self.path) and time.monotonic() < deadline:
                self._state.wait(self.poll_s)  # let the writer in before starting another query
            if self._closed:
                raise CatalogError("this catalog reader is closed")
            if self._root is None:
                # after YIELD_S the writer is stuck on something else (another process holding the file): open
                # without waiting for it again, though still waiting for the file itself
                self._root = Catalog(self.path, read_only=True, yield_to_writers=False)
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
                try:
                    if self._root is not None and self._active == 0 and (
                            writer_waiting(self.path) or time.monotonic() - self._last_used > self.idle_s):
                        root, self._root = self._root, None
                        root.close()
                except Exception:  # noqa: BLE001 - a dead releaser would lock writers out for good
                    _logger.exception("catalog reader: letting go of %s failed", self.path)

    def close(self, wait_s: float = 10.0) -> None:
        """Lets go of the catalog once running queries end (at most `wait_s`; then it closes under them)."""
        with self._state:
            self._closed = True
            deadline = time.monotonic() + wait_s
            while self._active and time.monotonic() < deadline:
                self._state.wait(self.poll_s)
            if self._root is not None:
                root, self._root = self._root, None
                root.close()
            self._state.notify_all()
        self._releaser.join(timeout=5)

    def __enter__(self) -> SharedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
