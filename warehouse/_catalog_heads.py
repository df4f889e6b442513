"""The catalog's rows for the heads: predicted keyword tags and generated captions.

A mixin of `Catalog` (it uses the connection, transactions and Arrow inserts of catalog.py), kept apart
so that each module stays readable. Tags live in `tags` (schema v4); generated captions live in
`captions` with source 'generated' and the captioner's content hash as `model_id`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from .errors import InputError
from .workdir import utc_now

TAG_METHODS = ("probe", "knn", "zeroshot", "fusion")


class HeadsRows:
    """Methods `Catalog` gets for tags and generated captions."""

    def replace_tags(self, model_id: str, method: str, image_ids: Sequence[int],
                     tags: Sequence[tuple[int, str, float]], run_id: int | None = None) -> int:
        """Make `tags` ((image id, keyword, score) rows) the tags of `method` and `model_id` for `image_ids`:
        the earlier ones of those images are deleted in the same transaction."""
        if method not in TAG_METHODS:
            raise InputError(f"unknown tag method {method!r}; known: {', '.join(TAG_METHODS)}")
        now = utc_now()
        rows = [(int(i), str(k), float(s), method, model_id, run_id, now) for i, k, s in tags]
        with self.transaction():
            self.con.execute("DELETE FROM tags WHERE model_id = ? AND method = ? AND image_id IN "
                             "(SELECT unnest(?::BIGINT[]))", [model_id, method, [int(i) for i in image_ids]])
            self._insert("tags", rows, _TAGS)
        return len(rows)

    def tags_of(self, image_ids: Iterable[int], method: str | None = None, model_id: str | None = None
                ) -> dict[int, list[dict[str, Any]]]:
        """image id -> [{keyword, score, method, model_id}], best score first."""
        sql = ("SELECT image_id, keyword, score, method, model_id FROM tags "
               "WHERE image_id IN (SELECT unnest(?::BIGINT[]))")
        params: list[Any] = [[int(i) for i in image_ids]]
        for column, value in (("method", method), ("model_id", model_id)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        out: dict[int, list[dict[str, Any]]] = {}
        for image_id, keyword, score, m, mid in self.con.execute(sql + " ORDER BY image_id, score DESC, keyword",
                                                                  params).fetchall():
            out.setdefault(image_id, []).append({"keyword": keyword, "score": score, "method": m, "model_id": mid})
        return out

    def tag_counts(self, method: str | None = None, limit: int = 50) -> list[tuple[str, int]]:
        """(keyword, images tagged with it) for the most frequent stored tags."""
        sql, params = "SELECT keyword, count(DISTINCT image_id) FROM tags", []
        if method is not None:
            sql += " WHERE method = ?"
            params.append(method)
        return self.con.execute(sql + " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?", [*params, limit]).fetchall()

    def replace_generated_captions(self, model_id: str, captions: Sequence[tuple[int, str]]) -> int:
        """Store one generated caption per image ((image id, text)) for captioner `model_id`, replacing
        that captioner's earlier caption of the same images."""
        image_ids = [int(i) for i, _ in captions]
        with self.transaction():
            self.con.execute("DELETE FROM captions WHERE source = 'generated' AND model_id = ? AND image_id IN "
                             "(SELECT unnest(?::BIGINT[]))", [model_id, image_ids])
            first = self._next_id("captions")
            rows = [(first + n, int(i), 0, text, "generated", model_id) for n, (i, text) in enumerate(captions)]
            self._insert("captions", rows, CAPTIONS_SCHEMA)
        return len(rows)

    def generated_caption_counts(self) -> list[tuple[str, int]]:
        """(captioner id, generated captions) pairs."""
        return self.con.execute("SELECT model_id, count(*) FROM captions WHERE source = 'generated' GROUP BY ALL "
                                "ORDER BY ALL").fetchall()

    def generated_captions(self, image_ids: Iterable[int], model_id: str | None = None
                           ) -> dict[int, list[dict[str, Any]]]:
        """image id -> [{text, model_id}] of generated captions, newest captioner first."""
        sql = ("SELECT image_id, text, model_id FROM captions WHERE source = 'generated' "
               "AND image_id IN (SELECT unnest(?::BIGINT[]))")
        params: list[Any] = [[int(i) for i in image_ids]]
        if model_id is not None:
            sql += " AND model_id = ?"
            params.append(model_id)
        out: dict[int, list[dict[str, Any]]] = {}
        for image_id, text, mid in self.con.execute(sql + " ORDER BY image_id, id DESC", params).fetchall():
            out.setdefault(image_id, []).append({"text": text, "model_id": mid})
        return out


_TAGS = pa.schema([
    ("image_id", pa.int64()), ("keyword", pa.string()), ("score", pa.float32()), ("method", pa.string()),
    ("model_id", pa.string()), ("run_id", pa.int64()), ("created_at", pa.timestamp("us")),
])
CAPTIONS_SCHEMA = pa.schema([
    ("id", pa.int64()), ("image_id", pa.int64()), ("ordinal", pa.int32()), ("text", pa.string()),
    ("source", pa.string()), ("model_id", pa.string()),
])
