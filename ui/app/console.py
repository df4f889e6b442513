"""A read-only SQL console on the catalog: it cannot write, attach, read files or change its own settings,
and a query is stopped after a time limit and cut to a number of rows."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

MAX_ROWS = 1000
TIME_LIMIT_S = 5.0


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool      # more rows than the limit
    seconds: float


class SqlConsole:
    """Queries on a catalog file through a locked DuckDB connection: read-only, no file system access (no
    ATTACH, COPY, read_csv, INSTALL), configuration locked so no statement can undo that. A connection is
    opened for each query and closed after it, so the app never holds the catalog against a writer."""

    def __init__(self, catalog_path: Path, max_rows: int = MAX_ROWS, time_limit_s: float = TIME_LIMIT_S):
        self.catalog_path, self.max_rows, self.time_limit_s = Path(catalog_path), max_rows, time_limit_s

    def connect(self) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(self.catalog_path), read_only=True,
                              config={"enable_external_access": False, "lock_configuration": True,
                                      "threads": 1, "memory_limit": "1GB"})

    def run(self, sql: str) -> QueryResult:
        """Run one statement; raises ValueError with DuckDB's message for a refused or failing query, and
        TimeoutError past the time limit."""
        sql = sql.strip().rstrip(";").strip()
        if not sql:
            raise ValueError("the query is empty")
        try:
            con = self.connect()
        except duckdb.Error as e:
            raise ValueError(f"cannot open the catalog: {str(e).splitlines()[0]}") from None
        with con:
            timed_out = threading.Event()

            def stop() -> None:
                timed_out.set()
                con.interrupt()

            timer = threading.Timer(self.time_limit_s, stop)
            started = time.perf_counter()
            timer.start()
            try:
                cursor = con.execute(sql)
                columns = [d[0] for d in cursor.description or []]
                rows = cursor.fetchmany(self.max_rows + 1) if columns else []
            except duckdb.Error as e:
                if timed_out.is_set():
                    raise TimeoutError(f"the query ran past {self.time_limit_s:g} s and was stopped") from None
                raise ValueError(str(e).splitlines()[0]) from None
            finally:
                timer.cancel()
        return QueryResult(columns, rows[: self.max_rows], len(rows) > self.max_rows,
                           time.perf_counter() - started)
