"""The DuckDB catalog: every row groundex knows about, behind a small API of parameterized queries.

DuckDB allows one writing process at a time; readers open with `read_only=True`. Bulk rows go in as
Arrow tables registered on the connection (one INSERT ... SELECT per table), never as SQL text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ._catalog_artefacts import ArtefactRows
from ._catalog_heads import CAPTIONS_SCHEMA as _CAPTIONS
from ._catalog_heads import HeadsRows, split_or_images
from ._catalog_reports import ReportRows, time_limited
from ._schema import MIGRATIONS, SCHEMA_VERSION
from .client_filter import check_client_condition
from .errors import CatalogError, InputError
from .records import Box, Reject, Sample
from .workdir import Workdir, utc_now

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageInfo:
    """What the ingest measured of an image file."""

    width: int
    height: int
    sha256: str
    format: str | None
    mode: str | None


@dataclass
class PreparedSample:
    """A sample whose image was opened and measured, with boxes in the stored image's pixel space."""

    sample: Sample
    info: ImageInfo
    boxes: list[Box]


@dataclass
class GroundingRow:
    """A phrase occurrence with what grounding needs of it."""

    phrase_id: int
    image_id: int
    caption_id: int
    entity_id: int            # 0: notvisual
    types: list[str]          # Entities types, e.g. ['people']
    text: str
    scene: bool               # the entity is annotated as the whole scene
    boxes: list[tuple[float, float, float, float]]  # (x1, y1, x2, y2) in [0, 1] of the image; may be empty


def _connect(path: Path, read_only: bool, limits: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """A connection to the catalog file alone: no other file, database or extension is reachable from its SQL
    (user conditions such as `--where` run on it), and no statement can change that. `limits`: more DuckDB
    settings, locked with the rest (e.g. CONSOLE_LIMITS)."""
    return duckdb.connect(str(path), read_only=read_only,
                          config={"enable_external_access": False, "lock_configuration": True, **(limits or {})})


# What a person's own SQL may use (the app's console, `Catalog.open_console`): one thread, so a heavy query
# leaves the app's other work its cores, and bounded memory.
CONSOLE_LIMITS: dict[str, Any] = {"threads": 1, "memory_limit": "1GB"}


def lock_timeout_s() -> float:
    """How long to wait for another process's hold on the catalog ($GROUNDEX_LOCK_TIMEOUT, default 120 s)."""
    return float(os.environ.get("GROUNDEX_LOCK_TIMEOUT", "120"))


def writer_waiting_path(path: Path) -> Path:
    """The file a writer touches while it waits for the catalog at `path`: readers let go of the file and wait."""
    return path.with_name(path.name + ".writer-waiting")


WRITER_WAITING_FRESH_S = 1.0  # a marker older than this is a writer that gave up or died


def writer_waiting(path: Path) -> bool:
    """Whether a writer is waiting for the catalog at `path` (it touched the marker within the last second)."""
    try:
        return time.time() - writer_waiting_path(path).stat().st_mtime < WRITER_WAITING_FRESH_S
    except FileNotFoundError:
        return False


# Connections this process holds open, by catalog file: a process that already holds the file does not wait for a
# waiting writer before opening another (it would wait for itself), so only the first reader waits.
_held: dict[Path, int] = {}
_held_lock = threading.Lock()


def _hold(path: Path, delta: int) -> int:
    with _held_lock:
        _held[path] = _held.get(path, 0) + delta
        return _held[path]


def _connect_waiting(path: Path, read_only: bool, limits: dict[str, Any] | None = None,
                     yield_to_writers: bool = True) -> duckdb.DuckDBPyConnection:
    """`_connect`, waiting while another process holds the file. DuckDB lets one process write, or several
    read, at a time; groundex's writers hold the catalog only for one transaction (a chunk of an ingest, a
    shard of embeddings, a finished index), and its readers for one query, so the wait is short.

    Writers go first: a writer that finds the file held touches `<catalog>.writer-waiting` on every try, and a
    reader that does not hold the file yet waits while that marker is fresh. So a stream of searches (a busy
    `groundex serve`, whose shared connection lets go when it sees the marker) never starves a build.
    `yield_to_writers=False`: do not wait for the marker (a caller that waited for it already)."""
    deadline = time.monotonic() + lock_timeout_s()
    delay = 0.02
    marker = writer_waiting_path(path)
    while True:
        if read_only and yield_to_writers and writer_waiting(path) and _held.get(path.resolve(), 0) == 0:
            error: Exception | None = None  # let the writer in first
        else:
            try:
                con = _connect(path, read_only, limits)
                if not read_only:
                    marker.unlink(missing_ok=True)
                return con
            except duckdb.IOException as e:
                if "lock" not in str(e).lower():
                    raise CatalogError(f"cannot open catalog {path}: {e}") from None
                error = e
                if not read_only:
                    marker.touch()  # ask the readers to let go
        if time.monotonic() >= deadline:
            holder = re.search(r"PID (\d+)", str(error or ""))
            raise CatalogError(
                f"catalog {path} is held by another process{f' (PID {holder.group(1)})' if holder else ''} "
                f"for more than {lock_timeout_s():g} s; wait for it to finish or raise $GROUNDEX_LOCK_TIMEOUT"
            ) from None
        time.sleep(delay)
        delay = min(0.5 if read_only else 0.1, delay * 1.5)  # a writer keeps its marker fresh


class Catalog(ArtefactRows, HeadsRows, ReportRows):
    def __init__(self, path: Path | str, read_only: bool = False, *, limits: dict[str, Any] | None = None,
                 yield_to_writers: bool = True):
        """Open the catalog at `path` (waiting while another process holds it), upgrading an older schema.
        `limits`: more locked DuckDB settings for the connection (CONSOLE_LIMITS: see `open_console`)."""
        self.path = Path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no catalog at {self.path}")
        self.con = _connect_waiting(self.path, read_only, limits, yield_to_writers)
        version = self._stored_version()
        if version > SCHEMA_VERSION:
            self.con.close()
            raise CatalogError(
                f"{self.path} has schema version {version}, newer than this groundex ({SCHEMA_VERSION}); "
                "upgrade groundex to read it"
            )
        if version < SCHEMA_VERSION:
            if read_only:  # an older groundex built it: upgrade in place (migrations only add), then read
                self.con.close()
                Catalog(self.path).close()
                self.con = _connect_waiting(self.path, True, limits)
            else:
                try:
                    self._migrate(version)
                except BaseException:  # the failed migration rolled back; the next open tries again
                    self.con.close()
                    raise
        self._holding = self.path.resolve()
        _hold(self._holding, +1)

    @classmethod
    def open(cls, workdir: Workdir, read_only: bool = False) -> Catalog:
        if not read_only:
            workdir.create()
        elif not workdir.exists():
            workdir.read_manifest()  # raises a clear "not a workdir" error
        return cls(workdir.catalog_path, read_only=read_only)

    @classmethod
    def open_console(cls, path: Path | str) -> Catalog:
        """The catalog at `path`, read-only, for a person's own SQL (`run_sql`; the app's console): besides
        what every connection refuses (other files, ATTACH, COPY, extensions, changing settings), one thread
        and bounded memory (CONSOLE_LIMITS). Open one per query: a reader held open locks writers out."""
        return cls(path, read_only=True, limits=CONSOLE_LIMITS)

    @classmethod
    def on_cursor(cls, con: duckdb.DuckDBPyConnection, path: Path) -> Catalog:
        """A catalog over `con`, a cursor of a connection opened (and checked) by another `Catalog` that stays open
        longer (`SharedReader`): closing it closes the cursor only."""
        catalog = cls.__new__(cls)
        catalog.path, catalog.read_only, catalog.con, catalog._holding = Path(path), True, con, None
        return catalog

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            if self._holding is not None:
                _hold(self._holding, -1)
                self._holding = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------------

    def _scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        # fetchall, not fetchone: DuckDB >= 2 keeps a partly fetched result open and refuses other work.
        return self.con.execute(sql, list(params)).fetchall()[0][0]

    def _stored_version(self) -> int:
        if not self._scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"):
            return 0
        return int(self._scalar("SELECT max(version) FROM schema_version") or 0)

    def _migrate(self, from_version: int) -> None:
        with self.transaction():
            self.con.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)"
            )
        for version in range(from_version + 1, SCHEMA_VERSION + 1):
            _logger.info("catalog %s: applying schema migration %d", self.path, version)
            with self.transaction():
                for step in MIGRATIONS[version - 1]:
                    if callable(step):
                        step(self.con, self.path.parent)
                    else:
                        self.con.execute(step)
                self.con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, utc_now()])
        workdir = Workdir(self.path.parent)
        if workdir.manifest_path.is_file():
            workdir.update_manifest(schema_version=SCHEMA_VERSION)

    @property
    def schema_version(self) -> int:
        return self._stored_version()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")

    # -- generic reads --------------------------------------------------------------------------

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        """Run a parameterized query (values as `?`, never formatted into `sql`) and return all rows. For tests and
        warehouse itself: the rest of groundex reads through the named methods (a person's own SQL: `run_sql`)."""
        return self.con.execute(sql, list(params)).fetchall()

    def _next_id(self, table: str) -> int:
        # `table` only ever comes from this module's own literals.
        return int(self._scalar(f"SELECT coalesce(max(id), 0) + 1 FROM {table}"))

    def existing_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        if not keys:
            return set()
        rows = self.con.execute(
            "SELECT key FROM images WHERE key IN (SELECT unnest(?::VARCHAR[]))", [keys]
        ).fetchall()
        return {r[0] for r in rows}

    def counts(self) -> dict[str, Any]:
        """Row counts: images, captions (human and generated), phrases, boxes, entities, stored regions, rejects,
        runs, and images per split and dataset."""
        def one(sql: str) -> int:
            return int(self._scalar(sql))

        splits = self.con.execute(
            "SELECT coalesce(split, 'unassigned'), count(*) FROM images GROUP BY 1 ORDER BY 1"
        ).fetchall()
        return {
            "images": one("SELECT count(*) FROM images"),
            "captions": one("SELECT count(*) FROM captions WHERE source = 'human'"),
            "generated_captions": one("SELECT count(*) FROM captions WHERE source = 'generated'"),
            "phrases": one("SELECT count(*) FROM phrases"),
            "generated_phrases": one("SELECT count(*) FROM generated_phrases"),
            "boxes": one("SELECT count(*) FROM boxes"),
            "entities": one("SELECT count(*) FROM entities"),
            "regions": one("SELECT count(*) FROM regions"),
            "tags": one("SELECT count(*) FROM tags"),
            "rejects": one("SELECT count(*) FROM rejects"),
            "runs": one("SELECT count(*) FROM runs"),
            "splits": {name: int(n) for name, n in splits},
            "datasets": dict(self.con.execute("SELECT dataset, count(*) FROM images GROUP BY 1 ORDER BY 1").fetchall()),
        }

    # -- images and captions, for the indexer --------------------------------------------------

    def datasets_of_split(self, split: str | None) -> list[str]:
        """The datasets the split's images come from (all images when `split` is None)."""
        sql, params = "SELECT DISTINCT dataset FROM images", []
        if split is not None:
            sql, params = sql + " WHERE split = ?", [split]
        return [r[0] for r in self.con.execute(sql + " ORDER BY 1", params).fetchall()]

    def image_rows(self, split: str | None = None, ids: Iterable[int] | None = None) -> list[tuple[int, str]]:
        """(image id, file path) ordered by id, for one split (None: all) or the given ids."""
        sql, params = "SELECT id, path FROM images WHERE 1 = 1", []
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        if ids is not None:
            sql += " AND id IN (SELECT unnest(?::BIGINT[]))"
            params.append([int(i) for i in ids])
        return self.con.execute(sql + " ORDER BY id", params).fetchall()

    def caption_rows(self, split: str | None = None, image_ids: Iterable[int] | None = None
                     ) -> list[tuple[int, int, str]]:
        """(caption id, image id, text) of human captions, ordered by image id then ordinal."""
        sql = ("SELECT c.id, c.image_id, c.text FROM captions c JOIN images i ON i.id = c.image_id "
               "WHERE c.source = 'human'")
        params: list[Any] = []
        if split is not None:
            sql += " AND i.split = ?"
            params.append(split)
        if image_ids is not None:
            sql += " AND c.image_id IN (SELECT unnest(?::BIGINT[]))"
            params.append([int(i) for i in image_ids])
        return self.con.execute(sql + " ORDER BY c.image_id, c.ordinal", params).fetchall()

    def check_client_filter(self, where: str, hidden: Sequence[str]) -> None:
        """Raises InputError unless a remote client's filter text is in `warehouse.client_filter`'s language over
        the images' columns other than `hidden` (no placeholders: bound values are the server's own)."""
        check_client_condition(self.con, where, _client_columns(hidden), parameters=False)

    def image_ids_where(self, where: str | Condition, time_limit_s: float | None = None) -> list[int]:
        """Ids of images matching a user's SQL condition over the `images` columns (e.g. "split = 'val'"),
        or a `Condition` whose values are bound parameters. Past `time_limit_s` the query stops (TimeoutError).

        Two more columns come from the stored tags: `tag` (one of the image's tags: "tag = 'dog'" keeps
        images tagged dog) and `tags` (all of them, a list: "list_has_all(tags, ['dog', 'grass'])").
        A condition with hidden columns comes from a server's client: it reads the image's other columns only,
        in the small language of `warehouse.client_filter`."""
        params: list[Any] = []
        hidden: tuple[str, ...] = ()
        if isinstance(where, Condition):
            where, params, hidden = where.sql, [_bindable(v) for v in where.params], where.hidden
        if hidden:
            check_client_condition(self.con, where, _client_columns(hidden))
        source = "images"
        if _MENTIONS_TAGS.search(where):  # the join only when the condition reads tags
            source = ("(SELECT i.*, t.keyword AS tag, coalesce(a.tags, []) AS tags FROM images i "
                      "LEFT JOIN (SELECT DISTINCT image_id, keyword FROM tags) t ON t.image_id = i.id "
                      "LEFT JOIN (SELECT image_id, list(DISTINCT keyword ORDER BY keyword) AS tags FROM tags "
                      "GROUP BY 1) a ON a.image_id = i.id)")
        if hidden:  # columns the condition may not read (a server's clients never see file paths)
            source = f"(SELECT * EXCLUDE ({', '.join(hidden)}) FROM {source})"
        sql = f"SELECT DISTINCT id FROM {source} WHERE ({where}) ORDER BY id"
        try:
            if len(duckdb.extract_statements(sql)) != 1:  # '1=1); DROP TABLE images; --' ends the condition early
                raise InputError(f"--where takes one condition, not statements: {where!r}")
            with time_limited(self.con, time_limit_s, "the filter"):
                return [r[0] for r in self.con.execute(sql, params).fetchall()]
        except duckdb.Error as e:
            shown = where if len(where) <= 200 else where[:197] + "..."
            raise InputError(f"bad --where condition {shown!r}: {str(e).splitlines()[0][:300]}") from None

    def image_details(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """id -> {path, split, width, height, dataset, key, captions: [text, ...]} (human captions)."""
        ids = [int(i) for i in ids]
        rows = self.con.execute(
            "SELECT i.id, i.path, i.split, i.width, i.height, i.dataset, i.key, "
            "list(c.text ORDER BY c.ordinal) FILTER (WHERE c.id IS NOT NULL) "
            "FROM images i LEFT JOIN captions c ON c.image_id = i.id AND c.source = 'human' "
            "WHERE i.id IN (SELECT unnest(?::BIGINT[])) GROUP BY ALL", [ids]).fetchall()
        keys = ("path", "split", "width", "height", "dataset", "key", "captions")
        return {r[0]: dict(zip(keys, (*r[1:-1], r[-1] or []), strict=True)) for r in rows}

    def grounding_rows(self, split: str | None = None, image_ids: Iterable[int] | None = None
                       ) -> list[GroundingRow]:
        """Every phrase occurrence of `split` (None: all) or of `image_ids`, with its entity's boxes
        normalized to [0, 1] of the image (empty for notvisual, scene and nobndbox entities), by phrase id."""
        sql = (
            "SELECT p.id, p.image_id, p.caption_id, p.entity_id, p.types, p.text, coalesce(e.scene, false), "
            "list([b.x1 / i.width, b.y1 / i.height, b.x2 / i.width, b.y2 / i.height] ORDER BY b.id) "
            "FILTER (WHERE b.id IS NOT NULL) "
            "FROM phrases p JOIN images i ON i.id = p.image_id "
            "LEFT JOIN entities e ON e.image_id = p.image_id AND e.entity_id = p.entity_id "
            "LEFT JOIN boxes b ON b.image_id = p.image_id AND p.entity_id <> 0 AND list_contains(b.entity_ids, "
            "p.entity_id) WHERE 1 = 1")
        where, params = split_or_images(split, image_ids, "p.image_id")
        rows = self.con.execute(sql + where + " GROUP BY ALL ORDER BY p.id", params).fetchall()
        return [GroundingRow(*r[:7], [tuple(b) for b in (r[7] or [])]) for r in rows]

    def caption_ids_of_images(self, image_ids: Iterable[int]) -> list[int]:
        return [r[0] for r in self.con.execute(
            "SELECT id FROM captions WHERE image_id IN (SELECT unnest(?::BIGINT[])) ORDER BY id",
            [[int(i) for i in image_ids]]).fetchall()]

    def caption_details(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """caption id -> {image_id, text, source}."""
        rows = self.con.execute("SELECT id, image_id, text, source FROM captions WHERE id IN "
                                "(SELECT unnest(?::BIGINT[]))", [[int(i) for i in ids]]).fetchall()
        return {r[0]: {"image_id": r[1], "text": r[2], "source": r[3]} for r in rows}

    def remove_images(self, ids: Iterable[int]) -> int:
        """Delete images and everything that hangs off them; their vectors leave the index on the next
        `groundex index`."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        with self.transaction():
            for sql in (
                "DELETE FROM phrases WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                "DELETE FROM generated_phrases WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                "DELETE FROM captions WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                "DELETE FROM boxes WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                "DELETE FROM entities WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                "DELETE FROM regions WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                "DELETE FROM tags WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
            ):
                self.con.execute(sql, [ids])
            n = self.con.execute("DELETE FROM images WHERE id IN (SELECT unnest(?::BIGINT[]))", [ids]).fetchall()
        return int(n[0][0]) if n else 0

    # -- models, embeddings, indexes -----------------------------------------------------------

    def embedded_ids(self, model_id: str, kind: str) -> list[int]:
        return [r[0] for r in self.con.execute(
            "SELECT item_id FROM embeddings WHERE model_id = ? AND kind = ? ORDER BY item_id", [model_id, kind]
        ).fetchall()]

    def embedding_locations(self, model_id: str, kind: str, ids: Iterable[int] | None = None
                            ) -> list[tuple[int, str, int]]:
        """(item id, shard, row) of the stored embeddings of this model and kind (all, or those of `ids`),
        ordered by item id."""
        sql, params = "SELECT item_id, shard, row FROM embeddings WHERE model_id = ? AND kind = ?", [model_id, kind]
        if ids is not None:
            sql += " AND item_id IN (SELECT unnest(?::BIGINT[]))"
            params.append([int(i) for i in ids])
        return self.con.execute(sql + " ORDER BY item_id", params).fetchall()

    def add_embedding_rows(self, model_id: str, kind: str, item_ids: Sequence[int], shard: str) -> None:
        rows = [(model_id, kind, int(i), shard, r) for r, i in enumerate(item_ids)]
        with self.transaction():
            self._insert("embeddings", rows, _EMBEDDINGS)

    def remove_embedding_rows(self, model_id: str, kind: str, item_ids: Sequence[int]) -> None:
        self.con.execute("DELETE FROM embeddings WHERE model_id = ? AND kind = ? AND item_id IN "
                         "(SELECT unnest(?::BIGINT[]))", [model_id, kind, [int(i) for i in item_ids]])

    def orphan_ids(self, model_id: str, kind: str) -> list[int]:
        """Embedded items whose image or caption is no longer in the catalog."""
        table = "images" if kind == "image" else "captions"
        return [r[0] for r in self.con.execute(
            f"SELECT e.item_id FROM embeddings e ANTI JOIN {table} t ON t.id = e.item_id "
            "WHERE e.model_id = ? AND e.kind = ? ORDER BY 1", [model_id, kind]).fetchall()]

    def add_index_version(self, model_id: str, kind: str, version: int, path: str, factory: str, n: int) -> None:
        """Make `path` the current index of (model, kind); the primary key refuses a version twice."""
        self.con.execute("INSERT INTO indexes VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [model_id, kind, version, path, factory, n, utc_now()])

    def current_index(self, model_id: str, kind: str) -> dict[str, Any] | None:
        rows = self.con.execute("SELECT version, path, factory, n, built_at FROM indexes WHERE model_id = ? AND "
                                "kind = ? ORDER BY version DESC LIMIT 1", [model_id, kind]).fetchall()
        if not rows:
            return None
        return dict(zip(("version", "path", "factory", "n", "built_at"), rows[0], strict=True))

    def add_regions(self, model_id: str, query: str, regions: Sequence[tuple[int, float, float, float, float, float]],
                    run_id: int | None = None) -> int:
        """Store the ranked results of a phrase -> region search: (image id, x1, y1, x2, y2, score) in pixels.
        A query's earlier results for the same model are replaced."""
        with self.transaction():
            self.con.execute("DELETE FROM regions WHERE model_id = ? AND query = ?", [model_id, query])
            first, now = self._next_id("regions"), utc_now()
            rows = [(first + r, model_id, query, int(image_id), r + 1, x1, y1, x2, y2, score, run_id, now)
                    for r, (image_id, x1, y1, x2, y2, score) in enumerate(regions)]
            self._insert("regions", rows, _REGIONS)
        return len(regions)

    def regions(self, query: str | None = None, model_id: str | None = None, limit: int = 100
                ) -> list[dict[str, Any]]:
        """Stored regions, newest query first, by rank."""
        keys = ("id", "model_id", "query", "image_id", "rank", "x1", "y1", "x2", "y2", "score", "run_id",
                "created_at")
        sql, params = f"SELECT {', '.join(keys)} FROM regions WHERE 1 = 1", []
        for column, value in (("query", query), ("model_id", model_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        rows = self.con.execute(sql + " ORDER BY created_at DESC, query, rank LIMIT ?", [*params, limit]).fetchall()
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- writes ---------------------------------------------------------------------------------

    def add_samples(self, prepared: list[PreparedSample]) -> int:
        """Insert images with their captions, phrases, boxes and entities in one transaction.

        Returns the number of images added. Callers pass only keys not yet in the catalog.
        """
        if not prepared:
            return 0
        now = utc_now()
        with self.transaction():
            image_id = self._next_id("images")
            caption_id = self._next_id("captions")
            phrase_id = self._next_id("phrases")
            box_id = self._next_id("boxes")
            images, captions, phrases, boxes, entities = ([] for _ in range(5))
            for p in prepared:
                s = p.sample
                images.append((image_id, s.key, s.dataset, str(s.path), p.info.width, p.info.height, s.split,
                               p.info.sha256, p.info.format, p.info.mode, now))
                for ordinal, c in enumerate(s.captions):
                    captions.append((caption_id, image_id, ordinal, c.text, "human", None))
                    for ph in c.phrases:
                        phrases.append((phrase_id, caption_id, image_id, ph.entity_id, list(ph.types), ph.text,
                                        ph.first_word_index))
                        phrase_id += 1
                    caption_id += 1
                for b in p.boxes:
                    boxes.append((box_id, image_id, list(b.entity_ids), b.x1, b.y1, b.x2, b.y2))
                    box_id += 1
                for e in s.entities:
                    entities.append((image_id, e.entity_id, e.n_boxes, e.scene, e.nobndbox))
                image_id += 1
            self._insert("images", images, _IMAGES)
            self._insert("captions", captions, _CAPTIONS)
            self._insert("phrases", phrases, _PHRASES)
            self._insert("boxes", boxes, _BOXES)
            self._insert("entities", entities, _ENTITIES)
        return len(prepared)

    def _insert(self, table: str, rows: list[tuple], schema: pa.Schema) -> None:
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        batch = pa.table([pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)], schema=schema)
        self.con.register("_batch", batch)
        try:
            names = ", ".join(schema.names)
            self.con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _batch")
        finally:
            try:
                self.con.unregister("_batch")
            except duckdb.Error:  # the transaction already failed; that error is the one to report
                pass

    def add_rejects(self, rejects: Iterable[Reject], run_id: int | None = None) -> int:
        rows = list(rejects)
        if not rows:
            return 0
        now = utc_now()
        with self.transaction():
            first = self._next_id("rejects")
            self._insert(
                "rejects",
                [(first + i, run_id, r.path, r.line, r.reason, now) for i, r in enumerate(rows)],
                _REJECTS,
            )
        return len(rows)

    def start_run(self, command: str, config: dict[str, Any] | None = None, model_id: str | None = None) -> int:
        with self.transaction():
            run_id = self._next_id("runs")
            self.con.execute(
                "INSERT INTO runs (id, command, started_at, status, config, model_id) "
                "VALUES (?, ?, ?, 'running', ?, ?)",
                [run_id, command, utc_now(), json.dumps(config or {}, default=str), model_id],
            )
        return run_id

    def finish_run(self, run_id: int, status: str, result: dict[str, Any] | None = None) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = ?, status = ?, result = ? WHERE id = ?",
            [utc_now(), status, json.dumps(result or {}, default=str), run_id],
        )

    @contextmanager
    def run(self, command: str, config: dict[str, Any] | None = None,
            model_id: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """Record a run: yields (run_id, result dict to fill); marks it 'ok' or 'failed' on exit."""
        run_id = self.start_run(command, config, model_id)
        result: dict[str, Any] = {}
        try:
            yield run_id, result
        except BaseException as e:
            result.setdefault("error", f"{type(e).__name__}: {e}")
            self.finish_run(run_id, "failed", result)
            raise
        self.finish_run(run_id, "ok", result)

    def runs(self, command: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        sql = "SELECT id, command, started_at, finished_at, status, config, model_id, result FROM runs"
        params: list[Any] = []
        if command is not None:
            sql += " WHERE command = ?"
            params.append(command)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        keys = ("id", "command", "started_at", "finished_at", "status", "config", "model_id", "result")
        out = []
        for row in self.con.execute(sql, params).fetchall():
            d = dict(zip(keys, row, strict=True))
            for k in ("config", "result"):
                d[k] = json.loads(d[k]) if d[k] else {}
            out.append(d)
        return out

    def rejects(self, run_id: int | None = None) -> list[Reject]:
        sql = "SELECT path, reason, line FROM rejects"
        params: list[Any] = []
        if run_id is not None:
            sql += " WHERE run_id = ?"
            params.append(run_id)
        rows = self.con.execute(sql + " ORDER BY id", params).fetchall()
        return [Reject(path=p, reason=r, line=ln) for p, r, ln in rows]


@contextmanager
def recorded_run(workdir: Workdir, command: str, config: dict[str, Any] | None = None,
                 model_id: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Like `Catalog.run`, for long commands: the catalog is opened only to start and finish the run,
    not held while the work is done (DuckDB allows one writer at a time)."""
    with Catalog.open(workdir) as catalog:
        run_id = catalog.start_run(command, config, model_id)
    result: dict[str, Any] = {}
    try:
        yield run_id, result
    except BaseException as e:
        result.setdefault("error", f"{type(e).__name__}: {e}")
        with Catalog.open(workdir) as catalog:
            catalog.finish_run(run_id, "failed", result)
        raise
    with Catalog.open(workdir) as catalog:
        catalog.finish_run(run_id, "ok", result)


@dataclass(frozen=True)
class Condition:
    """A filter for `Catalog.image_ids_where` whose values are bound parameters, never spliced into the SQL:
    `sql` holds one `?` per entry of `params` (e.g. Condition("split = ? AND list_has_all(tags, ?)",
    ("val", ("dog",))). Tuples bind as lists. The app's sidebar builds one from its split, tags and
    free condition."""

    sql: str
    params: tuple[Any, ...] = ()
    hidden: tuple[str, ...] = ()  # columns of `images` the condition may not read (literal names, not user input)

    def __str__(self) -> str:  # for display only (the app shows the filter); never executed
        values = iter(self.params)
        return re.sub(r"\?", lambda _: repr(_bindable(next(values, None))), self.sql)


def _bindable(value: Any) -> Any:
    return [_bindable(v) for v in value] if isinstance(value, tuple) else value


def _client_columns(hidden: Sequence[str]) -> list[str]:
    return [*(c for c in _IMAGES.names if c not in hidden), "tag", "tags"]


_MENTIONS_TAGS = re.compile(r"\btags?\b", re.IGNORECASE)
_IMAGES = pa.schema([
    ("id", pa.int64()), ("key", pa.string()), ("dataset", pa.string()), ("path", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("split", pa.string()), ("sha256", pa.string()),
    ("format", pa.string()), ("mode", pa.string()), ("added_at", pa.timestamp("us")),
])
_PHRASES = pa.schema([
    ("id", pa.int64()), ("caption_id", pa.int64()), ("image_id", pa.int64()), ("entity_id", pa.int64()),
    ("types", pa.list_(pa.string())), ("text", pa.string()), ("first_word_index", pa.int32()),
])
_BOXES = pa.schema([
    ("id", pa.int64()), ("image_id", pa.int64()), ("entity_ids", pa.list_(pa.int64())),
    ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
])
_ENTITIES = pa.schema([
    ("image_id", pa.int64()), ("entity_id", pa.int64()), ("n_boxes", pa.int32()), ("scene", pa.bool_()),
    ("nobndbox", pa.bool_()),
])
_EMBEDDINGS = pa.schema([
    ("model_id", pa.string()), ("kind", pa.string()), ("item_id", pa.int64()), ("shard", pa.string()),
    ("row", pa.int32()),
])
_REJECTS = pa.schema([
    ("id", pa.int64()), ("run_id", pa.int64()), ("path", pa.string()), ("line", pa.int32()),
    ("reason", pa.string()), ("rejected_at", pa.timestamp("us")),
])
_REGIONS = pa.schema([
    ("id", pa.int64()), ("model_id", pa.string()), ("query", pa.string()), ("image_id", pa.int64()),
    ("rank", pa.int32()), ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
    ("score", pa.float32()), ("run_id", pa.int64()), ("created_at", pa.timestamp("us")),
])
