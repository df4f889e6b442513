"""One home for every artefact a workdir holds: CLIP models, captioners, fitted taggers and phrase chunkers.

An artefact is a folder named by the content hash of its files, under the kind's folder of the workdir
(`models/`, `captioners/`, `taggers/`, `chunkers/`), and a row of the catalog's `artefacts` table that says what made
it: its parent (the model it was fine-tuned from, or the embedding model a head reads), the run, where its first
weights came from, and its figures. Every consumer finds an artefact the same way (`Catalog.artefact`: a label,
a unique hash prefix, or the newest), and every writer stores one the same way (`ArtefactStore.commit`: files
written into a staging folder, hashed, renamed into place, then recorded), so a crash leaves either nothing
or a complete folder.

Training state that lets an interrupted run continue lives under `training/<kind>/<key>/`; whether a run
continues by itself is decided in one place (`RunState`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .workdir import Workdir, atomic_write_json

KINDS = ("model", "captioner", "tagger", "chunker")
KIND_FOLDERS = {"model": "models", "captioner": "captioners", "tagger": "taggers", "chunker": "chunkers"}
# The files an artefact's hash covers (a tagger's weights only when it has some). Models hash each file's name
# with its bytes and captioners the bytes alone: the schemes of the first releases, kept so that their ids stay.
HASHED_FILES = {
    "model": ("model.safetensors", "config.json", "tokenizer.json", "box_head.safetensors"),
    "captioner": ("model.safetensors", "tokenizer.json", "captioner.json"),
    "tagger": ("tagger.json", "vocabulary.json", "weights.safetensors"),
    "chunker": ("chunker.json", "weights.safetensors"),
}
_OPTIONAL_FILES = {"model": ("box_head.safetensors",), "tagger": ("weights.safetensors",)}  # hashed when present
_NAMES_HASHED = {"model": True, "captioner": False, "tagger": True, "chunker": True}
# What each kind's error says to do when a workdir has none.
NONE_YET = {
    "model": "no model in this workdir yet: run `groundex train` (needs captions) or record one without training "
             "with `groundex model add` (an open_clip model, a .safetensors file, or a model folder exported from "
             "another workdir)",
    "captioner": "no captioner in this workdir yet: run `groundex caption train` first",
    "tagger": "no fitted tagger in this workdir yet: run `groundex tag` first",
    "chunker": "no phrase chunker in this workdir yet: run `groundex chunk train` (needs captions with phrase "
               "markup, e.g. Flickr30k Entities)",
}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"artefact kind must be one of {', '.join(KINDS)}, got {kind!r}")


def hashed_files(kind: str, folder: Path) -> list[str]:
    """The files of `folder` that the kind's hash covers, in hashing order."""
    _check_kind(kind)
    optional = _OPTIONAL_FILES.get(kind, ())
    return [n for n in HASHED_FILES[kind] if n not in optional or (folder / n).is_file()]


def missing_files(kind: str, folder: Path) -> list[str]:
    return [n for n in hashed_files(kind, folder) if not (folder / n).is_file()]


def content_hash(kind: str, folder: Path) -> str:
    """sha256 over the kind's files of `folder` (first 16 hex digits): the same bytes, the same id."""
    digest = hashlib.sha256()
    for name in hashed_files(kind, folder):
        if _NAMES_HASHED[kind]:
            digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]


def place(kind: str, staging: Path, root: Path) -> tuple[str, Path]:
    """Move a staged folder to `root/<content hash>/` (or drop it when the same bytes are there already); the
    staging folder is gone either way. Returns (hash, final folder)."""
    try:
        absent = missing_files(kind, staging)
        if absent:
            raise ValueError(f"{staging}: a {kind} needs {', '.join(absent)}")
        artefact_id = content_hash(kind, staging)
        final = root / artefact_id
        if final.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(final)
        return artefact_id, final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass(frozen=True)
class Artefact:
    """A catalog row of the `artefacts` table, with its folder made absolute."""

    kind: str
    id: str
    label: str | None
    path: Path
    parent_id: str | None
    run_id: int | None
    source: str
    info: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime

    @property
    def display(self) -> str:
        """'<id> (<label>)' or the id."""
        return f"{self.id} ({self.label})" if self.label else self.id

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "label": self.label, "path": str(self.path),
                "parent_id": self.parent_id, "run_id": self.run_id, "source": self.source, "info": self.info,
                "metrics": self.metrics, "created_at": self.created_at}


class ArtefactStore:
    """The artefact folders of a workdir and their catalog rows."""

    def __init__(self, workdir: Workdir):
        self.workdir = workdir

    def folder(self, kind: str) -> Path:
        _check_kind(kind)
        return self.workdir.root / KIND_FOLDERS[kind]

    def path_of(self, kind: str, artefact_id: str) -> Path:
        return self.folder(kind) / artefact_id

    @contextmanager
    def staging(self, kind: str) -> Iterator[Path]:
        """A fresh folder to write an artefact's files into before `commit` (inside the kind's folder, so the final
        rename stays on one file system); removed on the way out unless `commit` moved it into place. A kill leaves
        it behind: `groundex verify` notes such folders."""
        root = self.folder(kind)
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, kind: str, staging: Path, *, source: str, info: dict[str, Any] | None = None,
               parent_id: str | None = None, run_id: int | None = None, metrics: dict[str, Any] | None = None,
               label: str | None = None) -> Artefact:
        """Hash the staged files, move the folder into place (or drop it when the same bytes are there already)
        and record it, with its manifest entry, while holding the catalog's write lock. A label taken by another
        artefact is refused before anything moves."""
        from .catalog import Catalog  # here: catalog imports this module

        with Catalog.open(self.workdir) as catalog:
            if label is not None:
                catalog.check_label(kind, content_hash(kind, staging), label)
            artefact_id, final = place(kind, staging, self.folder(kind))
            relative = final.relative_to(self.workdir.root).as_posix()
            catalog.add_artefact(kind, artefact_id, relative, source=source, info=info or {}, parent_id=parent_id,
                                 run_id=run_id, metrics=metrics, label=label)
            self.workdir.update_manifest(artefacts={f"{kind}:{artefact_id}": {"kind": kind, "path": relative,
                                                                              "run_id": run_id}})
            return catalog.artefact(kind, artefact_id)

    def remove(self, kind: str, artefact_id: str) -> None:
        """Delete an artefact's folder, its training state and its manifest entry; the caller holds the catalog's
        write lock and deletes the row (`Catalog.forget_artefact`)."""
        shutil.rmtree(self.path_of(kind, artefact_id), ignore_errors=True)
        self.workdir.update_manifest(remove=[f"{kind}:{artefact_id}"])

    def stray_staging(self) -> list[Path]:
        """Staging folders a crash left behind."""
        return sorted(p for kind in KINDS if self.folder(kind).is_dir() for p in self.folder(kind).glob(".staging*"))

    def training_root(self, kind: str) -> Path:
        """The training state of every run that trains an artefact of `kind`."""
        _check_kind(kind)
        return self.workdir.root / "training" / kind

    def training_dir(self, kind: str, key: str) -> Path:
        """Where the resumable state of one run lives (`key`: the run's own id, or what the run's state is kept per,
        e.g. the embedding model of a captioner)."""
        return self.training_root(kind) / key


class RunState:
    """`run.json` in a training folder: the run's settings and whether it finished. The one rule for continuing:
    `resume=True` continues the saved run whatever its settings, `False` starts over, and `None` (the default)
    continues only a run that was interrupted with the very same settings, so running a command again after a
    crash picks up where it stopped and a changed command starts afresh."""

    FILE = "run.json"
    IGNORED = ("progress", "workers")  # settings that do not change the result

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / self.FILE

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def should_resume(self, config: dict[str, Any], resume: bool | None) -> bool:
        saved = self.read()
        if resume is False or saved is None:
            return False
        if resume:
            return True
        return not saved.get("finished", True) and same_settings(saved.get("config"), config, self.IGNORED)

    def start(self, config: dict[str, Any], **extra: Any) -> None:
        atomic_write_json(self.path, {"config": config, "finished": False, **extra})

    def finish(self, **extra: Any) -> None:
        atomic_write_json(self.path, {**(self.read() or {}), **extra, "finished": True})


def same_settings(saved: dict[str, Any] | None, current: dict[str, Any], ignored: Iterable[str] = ()) -> bool:
    """Whether two configs agree up to `ignored` keys (tuples compare as the lists JSON stores)."""
    if saved is None:
        return False
    ignored = set(ignored)
    current = json.loads(json.dumps(current, default=str))
    return ({k: v for k, v in saved.items() if k not in ignored}
            == {k: v for k, v in current.items() if k not in ignored})
