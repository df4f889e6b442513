"""The Python steps of catalog migrations: what a workdir kept in folders before the catalog recorded it.

Each step is a function of (connection, workdir root) and runs inside its migration's transaction. Steps that
move files are idempotent: a step interrupted after moving files and before the commit runs again on the next
open and finds the moved files where it put them. A file a step cannot read is logged and left where it is
(`groundex verify` reports what it finds there), so one damaged file never makes a workdir unopenable.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime
from pathlib import Path

import duckdb

from .artefacts import KIND_FOLDERS, RunState, missing_files, place

_logger = logging.getLogger(__name__)


def _recorded(con: duckdb.DuckDBPyConnection, kind: str) -> set[str]:
    return {r[0] for r in con.execute("SELECT id FROM artefacts WHERE kind = ?", [kind]).fetchall()}


def _last_run(con: duckdb.DuckDBPyConnection, command: str, model_id: str | None = None, **result: str) -> int | None:
    """The newest successful run of `command` (with `model_id`) whose result has these values."""
    sql, params = "SELECT max(id) FROM runs WHERE command = ? AND status = 'ok'", [command]
    if model_id is not None:
        sql, params = sql + " AND model_id = ?", [*params, model_id]
    for key, value in result.items():
        sql, params = sql + f" AND json_extract_string(result, '$.{key}') = ?", [*params, value]
    return con.execute(sql, params).fetchall()[0][0]


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        _logger.warning("upgrading the workdir: %s is unreadable (%s); left as it is", path, e)
        return None


def relative_model_paths(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Model folders inside the workdir are recorded relative to it, so a workdir can move."""
    for model_id, path in con.execute("SELECT id, path FROM artefacts WHERE kind = 'model'").fetchall():
        folder = Path(path)
        if folder.is_absolute() and folder.is_relative_to(root):
            con.execute("UPDATE artefacts SET path = ? WHERE kind = 'model' AND id = ?",
                        [folder.relative_to(root).as_posix(), model_id])


def adopt_captioners(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Record the captioner folders (`captioners/<hash>/captioner.json`), which were found by file time before."""
    folder = root / KIND_FOLDERS["captioner"]
    if not folder.is_dir():
        return
    known = _recorded(con, "captioner")
    for path in sorted(p for p in folder.iterdir() if (p / "captioner.json").is_file() and p.name not in known):
        meta = _read_json(path / "captioner.json")
        if meta is None:
            continue
        info = {"decoder": "blip" if "blip_config" in meta else "small", "train_images": meta.get("train_images")}
        con.execute("INSERT INTO artefacts VALUES ('captioner', ?, NULL, ?, ?, ?, 'trained', ?, '{}', ?)",
                    [path.name, f"{KIND_FOLDERS['captioner']}/{path.name}", meta.get("model_id"),
                     _last_run(con, "caption train", captioner_id=path.name), json.dumps(info),
                     _mtime(path / "captioner.json")])


def adopt_taggers(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Move the fitted taggers of `heads/<model>/<method>.json` (+ `<method>.safetensors`, `vocabulary.json`) into
    content-addressed folders `taggers/<hash>/` and record them."""
    heads, taggers = root / "heads", root / KIND_FOLDERS["tagger"]
    for saved in sorted(heads.glob("*/*.json")) if heads.is_dir() else []:
        vocabulary, weights = saved.parent / "vocabulary.json", saved.with_suffix(".safetensors")
        if saved.name == "vocabulary.json" or not vocabulary.is_file() or _read_json(saved) is None:
            continue
        staging = taggers / f".staging-upgrade-{saved.parent.name}-{saved.stem}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copyfile(saved, staging / "tagger.json")
        shutil.copyfile(vocabulary, staging / "vocabulary.json")
        if weights.is_file():
            shutil.copyfile(weights, staging / "weights.safetensors")
        place("tagger", staging, taggers)
        saved.unlink()
        weights.unlink(missing_ok=True)
    for model_dir in heads.iterdir() if heads.is_dir() else []:
        if model_dir.is_dir() and [p.name for p in model_dir.iterdir()] in ([], ["vocabulary.json"]):
            shutil.rmtree(model_dir)
    if heads.is_dir() and not any(heads.iterdir()):
        heads.rmdir()
    known = _recorded(con, "tagger")
    for path in sorted(taggers.iterdir()) if taggers.is_dir() else []:
        if path.name.startswith(".") or path.name in known or missing_files("tagger", path):
            continue
        saved = _read_json(path / "tagger.json")
        if saved is None or "model_id" not in saved or "method" not in saved:
            continue
        con.execute("INSERT INTO artefacts VALUES ('tagger', ?, NULL, ?, ?, ?, 'trained', ?, ?, ?)",
                    [path.name, f"{KIND_FOLDERS['tagger']}/{path.name}", saved["model_id"],
                     _last_run(con, "tag", saved["model_id"], method=saved["method"]),
                     json.dumps({"method": saved["method"]}), json.dumps(saved.get("val", {})),
                     _mtime(path / "tagger.json")])


def move_training_state(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Resumable training state moves under `training/<kind>/` with a `run.json` (settings, finished), so a run
    interrupted before the upgrade still continues by itself after it."""
    for old in sorted((root / "training").glob("run-*")):
        state = _read_json(old / "last" / "state.json") if (old / "last" / "state.json").is_file() else None
        new = root / "training" / "model" / old.name
        new.parent.mkdir(parents=True, exist_ok=True)
        old.rename(new)
        if state is not None and not (new / RunState.FILE).exists():
            config = dict(state.get("config", {}))
            if "model" in config:  # TrainConfig.model became TrainConfig.base
                config["base"] = config.pop("model")
            RunState(new).start(config)
            if state.get("finished", True):
                RunState(new).finish()
    old_root = root / KIND_FOLDERS["captioner"] / "training"
    for old in sorted(old_root.iterdir()) if old_root.is_dir() else []:
        settings = _read_json(old / "groundex-run.json") if (old / "groundex-run.json").is_file() else None
        new = root / "training" / "captioner" / old.name
        new.parent.mkdir(parents=True, exist_ok=True)
        old.rename(new)
        if settings is not None and not (new / RunState.FILE).exists():
            (new / RunState.FILE).write_text(json.dumps(settings))
    if old_root.is_dir() and not any(old_root.iterdir()):
        old_root.rmdir()


def record_patch_grids(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Record the stored embedding kinds of each model with their width and patch grid, read from the model's
    config (before, the grid was re-derived from index sizes)."""
    stored = con.execute("SELECT DISTINCT model_id, kind FROM embeddings ORDER BY ALL").fetchall()
    paths = dict(con.execute("SELECT id, path FROM artefacts WHERE kind = 'model'").fetchall())
    for model_id, kind in stored:
        if model_id not in paths:
            continue
        spec = _read_json((root / paths[model_id]) / "config.json")  # an absolute path stays as it is
        if spec is None or "config" not in spec:
            continue  # `groundex verify` reports the model
        config = spec["config"]
        dim = int(config["embed_dim"])
        con.execute("INSERT INTO embedding_sets VALUES (?, ?, ?, NULL, NULL) ON CONFLICT DO NOTHING",
                    [model_id, kind, dim])
        vision = config.get("vision_cfg", {})
        patch_dir = root / "embeddings" / model_id / "patch"
        if kind == "image" and "patch_size" in vision and any(patch_dir.glob("shard-*.npy")):
            size = vision.get("image_size", 224)
            rows, cols = (size, size) if isinstance(size, int) else size
            grid = (int(rows) // int(vision["patch_size"]), int(cols) // int(vision["patch_size"]))
            con.execute("INSERT INTO embedding_sets VALUES (?, 'patch', ?, ?, ?) ON CONFLICT DO NOTHING",
                        [model_id, dim, *grid])
