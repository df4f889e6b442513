"""A read-only SQL console on the catalog: it cannot write, attach, read files or change its own settings,
and a query is stopped after a time limit and cut to a number of rows. The connection, its locked settings
and the limits are the catalog's (`warehouse.Catalog.open_console`, `Catalog.run_sql`); this is the app's
side: its limits and one catalog opened per query."""

from __future__ import annotations

from pathlib import Path

from warehouse import Catalog, CatalogError, InputError, SqlResult

MAX_ROWS = 1000
TIME_LIMIT_S = 5.0


class SqlConsole:
    """Queries on a catalog file through `Catalog.open_console`: read-only, no file system access (no ATTACH,
    COPY, read_csv, INSTALL), configuration locked so no statement can undo that, one thread, bounded memory.
    The catalog is opened for each query (waiting, like every reader, while a writer holds it) and closed after
    it, so the app never holds the catalog against a writer."""

    def __init__(self, catalog_path: Path, max_rows: int = MAX_ROWS, time_limit_s: float = TIME_LIMIT_S):
        self.catalog_path, self.max_rows, self.time_limit_s = Path(catalog_path), max_rows, time_limit_s

    def run(self, sql: str) -> SqlResult:
        """Run one statement; raises InputError (a ValueError) with DuckDB's message for a refused or failing
        query, and TimeoutError past the time limit."""
        if not sql.strip().rstrip(";").strip():
            raise InputError("the query is empty")
        try:
            catalog = Catalog.open_console(self.catalog_path)
        except (CatalogError, FileNotFoundError) as e:
            raise InputError(f"cannot open the catalog: {str(e).splitlines()[0]}") from None
        with catalog:
            return catalog.run_sql(sql, self.max_rows, self.time_limit_s)
