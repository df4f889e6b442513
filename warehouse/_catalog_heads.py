"""The catalog's rows for the heads: predicted keyword tags and generated captions.

A mixin of `Catalog` (it uses the connection, transactions and Arrow inserts of catalog.py), kept apart
so that each module stays readable. Tags live in `tags` (schema v4); generated captions live in
`captions` with source 'generated' and the captioner's content hash as `model_id`; their phrases, found by a
chunker and grounded by an embedding model, live in `generated_phrases` (schema v6), apart from the annotated
`phrases` that training and evaluation read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .errors import InputError
from .workdir import utc_now


def split_or_images(split: str | None, image_ids: Iterable[int] | None, image_column: str) -> tuple[str, list[Any]]:
    """(' AND ...' conditions, their parameters) keeping the rows of images in `split` (the query's images are `i`)
    and among `image_ids` (read from `image_column`); None: no condition."""
    sql, params = "", []
    if split is not None:
        sql += " AND i.split = ?"
        params.append(split)
    if image_ids is not None:
        sql += f" AND {image_column} IN (SELECT unnest(?::BIGINT[]))"
        params.append([int(i) for i in image_ids])
    return sql, params

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

    def replace_generated_captions(self, model_id: str, captions: Sequence[tuple[int, str]],
                                   phrases: Sequence[Sequence[GeneratedPhrase]] | None = None) -> int:
        """Store one generated caption per image ((image id, text)) for captioner `model_id`, replacing
        that captioner's earlier caption of the same images (and its phrases). `phrases`, when given, holds each
        caption's grounded phrases, in the order of `captions`."""
        if phrases is not None and len(phrases) != len(captions):
            raise ValueError(f"{len(phrases)} phrase lists for {len(captions)} captions")
        image_ids = [int(i) for i, _ in captions]
        with self.transaction():
            old = ("SELECT id FROM captions WHERE source = 'generated' AND model_id = ? AND image_id IN "
                   "(SELECT unnest(?::BIGINT[]))")
            self.con.execute(f"DELETE FROM generated_phrases WHERE caption_id IN ({old})", [model_id, image_ids])
            self.con.execute(f"DELETE FROM captions WHERE id IN ({old})", [model_id, image_ids])
            first = self._next_id("captions")
            rows = [(first + n, int(i), 0, text, "generated", model_id) for n, (i, text) in enumerate(captions)]
            self._insert("captions", rows, CAPTIONS_SCHEMA)
            if phrases is not None:
                self._insert("generated_phrases", [
                    (first + n, ordinal, int(image_id), list(p.types), p.text, p.first_word_index, p.chunker_id,
                     p.model_id, *(p.box if p.box is not None else (None,) * 4), p.score)
                    for n, ((image_id, _), caption_phrases) in enumerate(zip(captions, phrases, strict=True))
                    for ordinal, p in enumerate(caption_phrases)], _GENERATED_PHRASES)
        return len(rows)

    def generated_phrases(self, caption_ids: Iterable[int]) -> dict[int, list[GeneratedPhrase]]:
        """caption id -> its stored phrases, in caption order."""
        rows = self.con.execute(
            "SELECT caption_id, types, text, first_word_index, chunker_id, model_id, x1, y1, x2, y2, score "
            "FROM generated_phrases WHERE caption_id IN (SELECT unnest(?::BIGINT[])) ORDER BY caption_id, ordinal",
            [[int(i) for i in caption_ids]]).fetchall()
        out: dict[int, list[GeneratedPhrase]] = {}
        for caption_id, types, text, first, chunker_id, mid, x1, y1, x2, y2, score in rows:
            box = None if x1 is None else (x1, y1, x2, y2)
            out.setdefault(caption_id, []).append(
                GeneratedPhrase(tuple(types), text, first, chunker_id, mid, box, score))
        return out

    def marked_captions(self, split: str | None = None, image_ids: Iterable[int] | None = None
                        ) -> list[tuple[int, int, str, list[tuple[int, int, tuple[str, ...], int, int]]]]:
        """The human captions of `split` or of `image_ids` (neither: all) that carry phrase markup: (caption id,
        image id, text, [(start, end, types, phrase id, entity id)]) with the phrases as word spans of the
        caption's whitespace tokens, in caption order."""
        sql = ("SELECT c.id, c.image_id, c.text, list((p.first_word_index, p.text, p.types, p.id, p.entity_id) "
               "ORDER BY p.first_word_index, p.id) "
               "FROM captions c JOIN phrases p ON p.caption_id = c.id JOIN images i ON i.id = c.image_id "
               "WHERE c.source = 'human'")
        where, params = split_or_images(split, image_ids, "c.image_id")
        rows = self.con.execute(sql + where + " GROUP BY c.id, c.image_id, c.text ORDER BY c.id", params).fetchall()
        return [(caption_id, image_id, text,
                 [(first, first + len(words.split()), tuple(types), phrase_id, entity_id)
                  for first, words, types, phrase_id, entity_id in phrases])
                for caption_id, image_id, text, phrases in rows]

    def generated_caption_counts(self) -> list[tuple[str, int]]:
        """(captioner id, generated captions) pairs."""
        return self.con.execute("SELECT model_id, count(*) FROM captions WHERE source = 'generated' GROUP BY ALL "
                                "ORDER BY ALL").fetchall()

    def generated_captions(self, image_ids: Iterable[int], model_id: str | None = None
                           ) -> dict[int, list[dict[str, Any]]]:
        """image id -> [{caption_id, text, model_id, phrases}] of generated captions, newest captioner first
        (`phrases`: the grounded phrases stored with it, see `generated_phrases`; empty when none)."""
        sql = ("SELECT image_id, text, model_id, id FROM captions WHERE source = 'generated' "
               "AND image_id IN (SELECT unnest(?::BIGINT[]))")
        params: list[Any] = [[int(i) for i in image_ids]]
        if model_id is not None:
            sql += " AND model_id = ?"
            params.append(model_id)
        rows = self.con.execute(sql + " ORDER BY image_id, id DESC", params).fetchall()
        phrases = self.generated_phrases(r[3] for r in rows)
        out: dict[int, list[dict[str, Any]]] = {}
        for image_id, text, mid, caption_id in rows:
            out.setdefault(image_id, []).append({"caption_id": caption_id, "text": text, "model_id": mid,
                                                 "phrases": phrases.get(caption_id, [])})
        return out


@dataclass(frozen=True)
class GeneratedPhrase:
    """A phrase of a generated caption: the chunker's span and type, and the box the grounding gave it."""

    types: tuple[str, ...]
    text: str
    first_word_index: int
    chunker_id: str
    model_id: str | None = None                            # the embedding model that grounded it
    box: tuple[float, float, float, float] | None = None   # stored image pixels (x1, y1, x2, y2); None: no box
    score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"types": list(self.types), "text": self.text, "first_word_index": self.first_word_index,
                "chunker_id": self.chunker_id, "model_id": self.model_id,
                "box": None if self.box is None else [round(float(v), 1) for v in self.box],
                "score": None if self.score is None else round(float(self.score), 4)}


_GENERATED_PHRASES = pa.schema([
    ("caption_id", pa.int64()), ("ordinal", pa.int32()), ("image_id", pa.int64()), ("types", pa.list_(pa.string())),
    ("text", pa.string()), ("first_word_index", pa.int32()), ("chunker_id", pa.string()), ("model_id", pa.string()),
    ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()), ("score", pa.float32()),
])
_TAGS = pa.schema([
    ("image_id", pa.int64()), ("keyword", pa.string()), ("score", pa.float32()), ("method", pa.string()),
    ("model_id", pa.string()), ("run_id", pa.int64()), ("created_at", pa.timestamp("us")),
])
CAPTIONS_SCHEMA = pa.schema([
    ("id", pa.int64()), ("image_id", pa.int64()), ("ordinal", pa.int32()), ("text", pa.string()),
    ("source", pa.string()), ("model_id", pa.string()),
])
