"""The Python steps of catalog migrations: what a workdir kept in folders before the catalog recorded it.

Each step is a function of (connection, workdir root), runs inside its migration's transaction, and is
idempotent on the folders: a step interrupted after moving files and before the commit is run again on the next
open and finds the moved files where it put them.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import duckdb

from .artefacts import KIND_FOLDERS, content_hash, missing_files


def _recorded(con: duckdb.DuckDBPyConnection, kind: str) -> set[str]:
    return {r[0] for r in con.execute("SELECT id FROM artefacts WHERE kind = ?", [kind]).fetchall()}


def _run_of(con: duckdb.DuckDBPyConnection, command: str, key: str, value: str) -> int | None:
    rows = con.execute("SELECT max(id) FROM runs WHERE command = ? AND status = 'ok' AND "
                       f"json_extract_string(result, '$.{key}') = ?", [command, value]).fetchall()
    return rows[0][0] if rows else None


def _mtime(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime)


def adopt_captioners(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Record the captioner folders (`captioners/<hash>/captioner.json`), which were found by file time before."""
    folder = root / KIND_FOLDERS["captioner"]
    if not folder.is_dir():
        return
    known = _recorded(con, "captioner")
    for path in sorted(p for p in folder.iterdir() if (p / "captioner.json").is_file() and p.name not in known):
        meta = json.loads((path / "captioner.json").read_text())
        info = {"decoder": "blip" if "blip_config" in meta else "small", "train_images": meta.get("train_images")}
        con.execute("INSERT INTO artefacts VALUES ('captioner', ?, NULL, ?, ?, ?, 'trained', ?, '{}', ?)",
                    [path.name, f"{KIND_FOLDERS['captioner']}/{path.name}", meta.get("model_id"),
                     _run_of(con, "caption train", "captioner_id", path.name), json.dumps(info),
                     _mtime(path / "captioner.json")])


def adopt_taggers(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Move the fitted taggers of `heads/<model>/<method>.json` (+ `<method>.safetensors`, `vocabulary.json`) into
    content-addressed folders `taggers/<hash>/` and record them."""
    heads, taggers = root / "heads", root / KIND_FOLDERS["tagger"]
    if heads.is_dir():
        for saved in sorted(heads.glob("*/*.json")):
            if saved.name == "vocabulary.json":
                continue
            staging = taggers / f".staging-upgrade-{saved.parent.name}-{saved.stem}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            shutil.copyfile(saved, staging / "tagger.json")
            shutil.copyfile(saved.parent / "vocabulary.json", staging / "vocabulary.json")
            weights = saved.with_suffix(".safetensors")
            if weights.is_file():
                shutil.copyfile(weights, staging / "weights.safetensors")
            final = taggers / content_hash("tagger", staging)
            if final.exists():
                shutil.rmtree(staging)
            else:
                staging.rename(final)
            saved.unlink()
            weights.unlink(missing_ok=True)
        for model_dir in heads.iterdir():
            if not any(model_dir.glob("*.json")) or list(model_dir.iterdir()) == [model_dir / "vocabulary.json"]:
                shutil.rmtree(model_dir)
        if not any(heads.iterdir()):
            heads.rmdir()
    if not taggers.is_dir():
        return
    known = _recorded(con, "tagger")
    for path in sorted(p for p in taggers.iterdir() if not p.name.startswith(".") and p.name not in known):
        if missing_files("tagger", path):
            continue
        saved = json.loads((path / "tagger.json").read_text())
        run = con.execute("SELECT max(id) FROM runs WHERE command = 'tag' AND status = 'ok' AND model_id = ? AND "
                          "json_extract_string(result, '$.method') = ?", [saved["model_id"], saved["method"]]
                          ).fetchall()[0][0]
        con.execute("INSERT INTO artefacts VALUES ('tagger', ?, NULL, ?, ?, ?, 'trained', ?, ?, ?)",
                    [path.name, f"{KIND_FOLDERS['tagger']}/{path.name}", saved["model_id"], run,
                     json.dumps({"method": saved["method"]}), json.dumps(saved.get("val", {})),
                     _mtime(path / "tagger.json")])


def record_patch_grids(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Record the stored embedding kinds of each model with their width and patch grid, read from the model's
    config (before, the grid was re-derived from index sizes)."""
    stored = con.execute("SELECT DISTINCT model_id, kind FROM embeddings ORDER BY ALL").fetchall()
    paths = dict(con.execute("SELECT id, path FROM artefacts WHERE kind = 'model'").fetchall())
    for model_id, kind in stored:
        if model_id not in paths:
            continue
        folder = Path(paths[model_id])
        folder = folder if folder.is_absolute() else root / folder
        try:
            config = json.loads((folder / "config.json").read_text())["config"]
        except (OSError, KeyError, json.JSONDecodeError):
            continue  # `groundex verify` reports the model
        dim = int(config["embed_dim"])
        con.execute("INSERT INTO embedding_sets VALUES (?, ?, ?, NULL, NULL) ON CONFLICT DO NOTHING",
                    [model_id, kind, dim])
        vision = config.get("vision_cfg", {})
        patch_dir = root / "embeddings" / model_id / "patch"
        if kind == "image" and "patch_size" in vision and patch_dir.is_dir() and any(patch_dir.glob("shard-*.npy")):
            size = vision.get("image_size", 224)
            rows, cols = (size, size) if isinstance(size, int) else size
            grid = (int(rows) // int(vision["patch_size"]), int(cols) // int(vision["patch_size"]))
            con.execute("INSERT INTO embedding_sets VALUES (?, 'patch', ?, ?, ?) ON CONFLICT DO NOTHING",
                        [model_id, dim, *grid])
