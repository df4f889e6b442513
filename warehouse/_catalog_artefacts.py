"""The catalog's rows of artefacts (models, captioners, taggers) and of stored embedding kinds; mixed into
`Catalog`. The folders are `warehouse.artefacts`'s."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from .artefacts import KINDS, NONE_YET, Artefact
from .errors import ArtefactError, InputError
from .workdir import EMBEDDING_KINDS, utc_now

_HEX = re.compile(r"[0-9a-f]+")
_COLUMNS = ("kind", "id", "label", "path", "parent_id", "run_id", "source", "info", "metrics", "created_at")


class ArtefactRows:
    con: duckdb.DuckDBPyConnection
    path: Path

    @property
    def root(self) -> Path:
        """The workdir that holds this catalog."""
        return self.path.parent

    def _artefact(self, row: tuple) -> Artefact:
        d = dict(zip(_COLUMNS, row, strict=True))
        path = Path(d["path"])
        return Artefact(d["kind"], d["id"], d["label"], path if path.is_absolute() else self.root / path,
                        d["parent_id"], d["run_id"], d["source"], json.loads(d["info"]) if d["info"] else {},
                        json.loads(d["metrics"]) if d["metrics"] else {}, d["created_at"])

    def add_artefact(self, kind: str, artefact_id: str, path: str, *, source: str, info: dict[str, Any],
                     parent_id: str | None = None, run_id: int | None = None, metrics: dict[str, Any] | None = None,
                     label: str | None = None) -> None:
        """Record an artefact (idempotent: the same hash is the same artefact; a second record updates its figures,
        and its label when one is given)."""
        if kind not in KINDS:
            raise ValueError(f"artefact kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if label is not None:
            self.check_label(kind, artefact_id, label)
        self.con.execute(
            f"INSERT INTO artefacts ({', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, id) DO UPDATE SET "
            "metrics = CASE WHEN excluded.metrics = '{}' THEN artefacts.metrics ELSE excluded.metrics END, "
            "label = coalesce(excluded.label, artefacts.label)",
            [kind, artefact_id, label, path, parent_id, run_id, source, json.dumps(info, default=str),
             json.dumps(metrics or {}, default=str), utc_now()])

    def check_label(self, kind: str, artefact_id: str, label: str) -> None:
        """Refuse a label another artefact of the kind has, or one that could be read as a hash prefix."""
        if not label.strip() or label != label.strip():
            raise InputError(f"a label must be non-empty without surrounding spaces, got {label!r}")
        if _HEX.fullmatch(label):
            raise InputError(f"label {label!r} could be read as a hash prefix: use a name with another letter in it")
        taken = self.con.execute("SELECT id FROM artefacts WHERE kind = ? AND label = ? AND id <> ?",
                                 [kind, label, artefact_id]).fetchall()
        if taken:
            raise InputError(f"label {label!r} already names {kind} {taken[0][0]}")

    def set_label(self, kind: str, artefact_id: str, label: str | None) -> None:
        if label is not None:
            self.check_label(kind, artefact_id, label)
        self.con.execute("UPDATE artefacts SET label = ? WHERE kind = ? AND id = ?", [label, kind, artefact_id])

    def artefacts(self, kind: str | None = None, parent_id: str | None = None) -> list[Artefact]:
        """Recorded artefacts (of a kind, of a parent), newest first."""
        sql, params = f"SELECT {', '.join(_COLUMNS)} FROM artefacts WHERE true", []
        if kind is not None:
            sql, params = sql + " AND kind = ?", [*params, kind]
        if parent_id is not None:
            sql, params = sql + " AND parent_id = ?", [*params, parent_id]
        return [self._artefact(r) for r in self.con.execute(sql + " ORDER BY created_at DESC, id", params).fetchall()]

    def artefact(self, kind: str, ref: str | None = None, parent_id: str | None = None,
                 method: str | None = None) -> Artefact:
        """The one lookup: by label, by hash (a unique prefix is enough), or the newest (of a parent, of a tagger
        method). Raises ArtefactError naming what is known."""
        candidates = self.artefacts(kind, parent_id)
        if method is not None:
            candidates = [a for a in candidates if a.info.get("method") == method]
        if not candidates and parent_id is None and method is None:
            raise ArtefactError(NONE_YET[kind])
        if ref is None:
            if not candidates:
                command = f"tag --method {method}" if kind == "tagger" else "caption train"
                raise ArtefactError(f"no {method + ' ' if method else ''}{kind} of model {parent_id} yet: run "
                                    f"`groundex {command}` first")
            return candidates[0]
        matches = _matching(candidates, ref)
        if len(matches) != 1:
            known = ", ".join(a.display for a in candidates) or "none"
            raise ArtefactError(f"{kind} {ref!r} {'is ambiguous' if matches else 'not found'}; known: {known}")
        return matches[0]

    def find_artefact(self, kind: str, ref: str) -> Artefact | None:
        """An artefact by label or unique hash prefix, or None when nothing matches (ambiguity still raises)."""
        return self.artefact(kind, ref) if _matching(self.artefacts(kind), ref) else None

    def forget_artefact(self, kind: str, artefact_id: str) -> None:
        """Delete an artefact's row, and a captioner's generated captions (the caller holds the transaction and
        removes the folder)."""
        if kind == "captioner":
            self.con.execute("DELETE FROM generated_phrases WHERE caption_id IN (SELECT id FROM captions WHERE "
                             "source = 'generated' AND model_id = ?)", [artefact_id])
            self.con.execute("DELETE FROM captions WHERE source = 'generated' AND model_id = ?", [artefact_id])
        if kind == "chunker":
            self.con.execute("DELETE FROM generated_phrases WHERE chunker_id = ?", [artefact_id])
        self.con.execute("DELETE FROM artefacts WHERE kind = ? AND id = ?", [kind, artefact_id])

    def forget_model(self, model_id: str) -> None:
        """Delete a model's row and every row made with it: embeddings, indexes, stored kinds, tags, regions."""
        for table in ("embeddings", "indexes", "embedding_sets", "tags", "regions"):
            self.con.execute(f"DELETE FROM {table} WHERE model_id = ?", [model_id])  # table names are literals
        # a caption's phrases were grounded together: all of them go, those that got no box (no model_id) too
        self.con.execute("DELETE FROM generated_phrases WHERE caption_id IN (SELECT caption_id FROM generated_phrases "
                         "WHERE model_id = ?)", [model_id])
        self.forget_artefact("model", model_id)

    def runs_of_model(self, model_id: str) -> list[dict[str, Any]]:
        """Runs made with a model or that made it, newest first."""
        keys = ("id", "command", "status", "config", "result", "started_at")
        rows = self.con.execute(
            f"SELECT {', '.join(keys)} FROM runs WHERE model_id = ? OR id = (SELECT run_id FROM artefacts WHERE "
            "kind = 'model' AND id = ?) ORDER BY id DESC", [model_id, model_id]).fetchall()
        out = []
        for row in rows:
            d = dict(zip(keys, row, strict=True))
            d["config"], d["result"] = (json.loads(d[k]) if d[k] else {} for k in ("config", "result"))
            out.append(d)
        return out

    def index_kinds(self, model_id: str) -> dict[str, int]:
        """The kinds of a model's current indexes with their vector counts."""
        rows = self.con.execute("SELECT kind, arg_max(n, version) FROM indexes WHERE model_id = ? GROUP BY kind "
                                "ORDER BY kind", [model_id]).fetchall()
        return {kind: int(n) for kind, n in rows}

    # -- models: the rows every model consumer reads -------------------------------------------------------------

    def models(self) -> list[Artefact]:
        """All recorded models, newest first (`info` holds name, mode, spec, parameter counts)."""
        return self.artefacts("model")

    def model(self, model_id: str | None = None) -> Artefact:
        """A model by label or hash (a unique prefix is enough), or the newest one."""
        return self.artefact("model", model_id)

    # -- stored embedding kinds ----------------------------------------------------------------------------------

    def record_embedding_set(self, model_id: str, kind: str, dim: int,
                             grid: Sequence[int] | None = None) -> None:
        """Record that a model's embeddings of `kind` are stored, with their width and (patches) grid; the same
        kind recorded again must agree."""
        if kind not in EMBEDDING_KINDS:
            raise ValueError(f"embedding kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
        rows, cols = (int(grid[0]), int(grid[1])) if grid is not None else (None, None)
        known = self.embedding_set(model_id, kind)
        if known is not None:
            if (known["dim"], known["grid"]) != (int(dim), (rows, cols) if grid is not None else None):
                raise ValueError(f"{kind} embeddings of model {model_id} are stored as {known}, not dim {dim} "
                                 f"grid {grid}")
            return
        self.con.execute("INSERT INTO embedding_sets VALUES (?, ?, ?, ?, ?)", [model_id, kind, int(dim), rows, cols])

    def embedding_set(self, model_id: str, kind: str) -> dict[str, Any] | None:
        """{'dim', 'grid': (rows, cols) or None, 'cells'} of a stored kind, or None when none is stored."""
        rows = self.con.execute("SELECT dim, grid_rows, grid_cols FROM embedding_sets WHERE model_id = ? AND kind = ?",
                                [model_id, kind]).fetchall()
        if not rows:
            return None
        dim, grid_rows, grid_cols = rows[0]
        grid = (grid_rows, grid_cols) if grid_rows is not None else None
        return {"dim": dim, "grid": grid, "cells": grid_rows * grid_cols if grid else 1}

    def patch_cells(self, model_id: str) -> int:
        """Patch cells per image of a model's stored patch embeddings."""
        stored = self.embedding_set(model_id, "patch")
        if stored is None:
            raise InputError(f"model {model_id} has no stored patch embeddings: run `groundex index`")
        return int(stored["cells"])


def _matching(candidates: list[Artefact], ref: str) -> list[Artefact]:
    """The artefacts a reference names: the one with that label, else those whose hash starts with it."""
    return [a for a in candidates if a.label == ref] or [a for a in candidates if a.id.startswith(ref)]
