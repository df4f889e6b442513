"""The catalog's whole-table reads: integrity checks for `groundex verify`, statistics for the app's explore
page, and a person's own read-only SQL (the app's console). A mixin of `Catalog`, kept apart so that each module
stays readable; like every catalog method, these are the only SQL the rest of groundex runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from .errors import InputError


@contextmanager
def time_limited(con: duckdb.DuckDBPyConnection, seconds: float | None, what: str) -> Iterator[threading.Event]:
    """Interrupts `con`'s statement once it runs past `seconds` (None: no limit), raising TimeoutError naming
    `what` in place of DuckDB's error; the connection stays usable. Yields the event set on a timeout."""
    timed_out = threading.Event()
    if seconds is None:
        yield timed_out
        return

    def stop() -> None:
        timed_out.set()
        con.interrupt()

    timer = threading.Timer(seconds, stop)
    timer.start()
    try:
        yield timed_out
    except duckdb.Error:
        if timed_out.is_set():
            raise TimeoutError(f"{what} ran past {seconds:g} s and was stopped") from None
        raise
    finally:
        timer.cancel()


# Rows that must point at a row of another table (DuckDB holds no foreign keys: removal cascades by hand):
# what is wrong -> the query that counts it.
_DANGLING = {
    "captions without their image": "SELECT count(*) FROM captions c ANTI JOIN images i ON i.id = c.image_id",
    "phrases without their caption": "SELECT count(*) FROM phrases p ANTI JOIN captions c ON c.id = p.caption_id",
    "generated phrases without their caption": "SELECT count(*) FROM generated_phrases p ANTI JOIN captions c "
                                               "ON c.id = p.caption_id",
    "boxes without their image": "SELECT count(*) FROM boxes b ANTI JOIN images i ON i.id = b.image_id",
    "tags without their image": "SELECT count(*) FROM tags t ANTI JOIN images i ON i.id = t.image_id",
    "regions without their image": "SELECT count(*) FROM regions r ANTI JOIN images i ON i.id = r.image_id",
    "tags of an unknown model": "SELECT count(*) FROM tags t ANTI JOIN models m ON m.id = t.model_id",
}


@dataclass
class SqlResult:
    """What a person's SQL statement returned (`Catalog.run_sql`)."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool      # more rows than the limit
    seconds: float


class ReportRows:
    """Methods `Catalog` gets for whole-catalog reports."""

    con: duckdb.DuckDBPyConnection
    path: Path

    # -- integrity (groundex verify) ----------------------------------------------------------------

    def dangling_rows(self) -> dict[str, int]:
        """What points at a row that is not there -> how many rows do, for every such relation (0: none)."""
        return {what: int(self.con.execute(sql).fetchall()[0][0]) for what, sql in _DANGLING.items()}

    def image_files(self) -> list[tuple[int, str, str]]:
        """(image id, file path, sha256 at ingest) of every image, by id."""
        return self.con.execute("SELECT id, path, sha256 FROM images ORDER BY id").fetchall()

    def models_with_rows(self) -> list[str]:
        """Ids of the models that have embedding rows or indexes (recorded as artefacts or not)."""
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT model_id FROM embeddings UNION SELECT DISTINCT model_id FROM indexes ORDER BY 1"
        ).fetchall()]

    def embedding_shards(self) -> list[tuple[str, str, str, int, int, int]]:
        """(model id, kind, shard file name, rows pointing into it, highest row, distinct rows) of every shard the
        `embeddings` table references."""
        return self.con.execute("SELECT model_id, kind, shard, count(*), max(row), count(DISTINCT row) "
                                "FROM embeddings GROUP BY ALL ORDER BY ALL").fetchall()

    def orphan_counts(self) -> list[tuple[str, str, int]]:
        """(model id, kind, rows) of embedding rows whose image or caption left the catalog (`orphan_ids` per
        model; the next `groundex index` drops them)."""
        return self.con.execute(
            "SELECT e.model_id, e.kind, count(*) FROM embeddings e WHERE (e.kind = 'image' AND e.item_id NOT IN "
            "(SELECT id FROM images)) OR (e.kind = 'caption' AND e.item_id NOT IN (SELECT id FROM captions)) "
            "GROUP BY ALL ORDER BY ALL").fetchall()

    def indexed_kinds(self) -> list[tuple[str, str]]:
        """(model id, kind) of every index recorded (`current_index` gives each one's newest version)."""
        return self.con.execute("SELECT DISTINCT model_id, kind FROM indexes ORDER BY ALL").fetchall()

    def unfinished_runs(self) -> list[tuple[int, str]]:
        """(run id, command) of runs still marked 'running': killed, or running now."""
        return self.con.execute("SELECT id, command FROM runs WHERE status = 'running' ORDER BY id").fetchall()

    # -- statistics (the app) -------------------------------------------------------------------------

    def first_image_id(self) -> int | None:
        rows = self.con.execute("SELECT min(id) FROM images").fetchall()
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def splits(self) -> list[str]:
        """The split names images have, sorted."""
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT split FROM images WHERE split IS NOT NULL ORDER BY 1").fetchall()]

    def split_counts(self) -> list[tuple[str | None, int]]:
        """(split, images), most images first; None: images without a split."""
        return self.con.execute("SELECT split, count(*) FROM images GROUP BY 1 ORDER BY 2 DESC").fetchall()

    def phrase_type_counts(self) -> list[tuple[str, int]]:
        """(Entities phrase type, phrases of it), most frequent first."""
        return self.con.execute("SELECT t, count(*) FROM (SELECT unnest(types) AS t FROM phrases) GROUP BY 1 "
                                "ORDER BY 2 DESC").fetchall()

    def caption_word_counts(self) -> list[int]:
        """The length in words (split at spaces) of every human caption."""
        return [r[0] for r in self.con.execute(
            "SELECT len(string_split(trim(text), ' ')) FROM captions WHERE source = 'human'").fetchall()]

    # -- a person's own SQL (the app's console) ---------------------------------------------------------

    def run_sql(self, sql: str, max_rows: int, time_limit_s: float) -> SqlResult:
        """Run a person's SQL on this catalog, open with `Catalog.open_console` (read-only, no file access, locked
        configuration, one thread, bounded memory): at most `max_rows` rows come back, and the statement is
        stopped after `time_limit_s`. Raises InputError with DuckDB's message for a refused or failing statement,
        TimeoutError past the time limit; the connection stays usable after either."""
        sql = sql.strip().rstrip(";").strip()
        if not sql:
            raise InputError("the query is empty")
        started = time.perf_counter()
        with time_limited(self.con, time_limit_s, "the query") as timed_out:
            try:
                cursor = self.con.execute(sql)
                columns = [d[0] for d in cursor.description or []]
                rows = cursor.fetchmany(max_rows + 1) if columns else []
            except duckdb.Error as e:
                if timed_out.is_set():
                    raise
                raise InputError(str(e).splitlines()[0]) from None
        return SqlResult(columns, rows[:max_rows], len(rows) > max_rows, time.perf_counter() - started)
