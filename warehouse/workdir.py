"""A workdir: the unit a user builds and browses.

    groundex-work/
      catalog.duckdb   images, captions, phrases, boxes, entities, rejects, runs (see _schema.py)
      manifest.json    what the workdir holds: format version, schema version, artefacts by name
      datasets/        data groundex generated or unpacked (synthetic scenes, images from HF datasets)
      models/          CLIP checkpoints (safetensors + JSON config), named by content hash  } artefacts:
      captioners/      caption decoders (transformers format), named by content hash    } warehouse/artefacts.py
      taggers/         fitted keyword taggers, named by content hash                     }
      chunkers/        phrase chunkers learned from the phrase markup, by content hash  }
      training/        resumable state of interrupted training runs, by artefact kind
      embeddings/      float16 embedding shards, by model hash
      indexes/         FAISS index files, by model hash
      grounding/       per model: the heatmap-to-box parameters chosen on val (<model hash>.json)
      cache/           decoded, resized pixels for training and embedding (rebuilt when missing)
      logs/            tracebacks of internal errors (a bug), one file each, named in the error message

The paths of the workdir's parts come from here and, for artefacts and their training state, from
`ArtefactStore`; other packages ask these two rather than joining names to the root.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

DEFAULT_WORKDIR = Path("groundex-work")
MANIFEST_FORMAT = "groundex-workdir"
MANIFEST_VERSION = 1

EMBEDDING_KINDS = ("image", "patch", "caption")  # what a model's embedding shards hold


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_npy(path: Path, array: Any) -> None:
    """Write a numpy array as .npy (no pickles), atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Workdir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str is fine too

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def indexes_dir(self) -> Path:
        return self.root / "indexes"

    def model_embeddings_dir(self, model_id: str) -> Path:
        """A model's embedding shards (image/, patch/, caption/)."""
        return self.embeddings_dir / model_id

    def shards_dir(self, model_id: str, kind: str) -> Path:
        """A model's embedding shards of one kind (image, patch or caption)."""
        if kind not in EMBEDDING_KINDS:
            raise ValueError(f"embedding kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
        return self.model_embeddings_dir(model_id) / kind

    def model_indexes_dir(self, model_id: str) -> Path:
        """A model's FAISS index files."""
        return self.indexes_dir / model_id

    def grounding_config_path(self, model_id: str) -> Path:
        """Where the grounding parameters tuned for a model live."""
        return self.root / "grounding" / f"{model_id}.json"

    @property
    def cache_dir(self) -> Path:
        """Derived data that can always be rebuilt (decoded image pixels); safe to delete."""
        return self.root / "cache"

    @property
    def logs_dir(self) -> Path:
        """Tracebacks of internal errors (bugs), one file each; safe to delete."""
        return self.root / "logs"

    def exists(self) -> bool:
        return self.manifest_path.is_file() and self.catalog_path.is_file()

    def create(self) -> Workdir:
        """Make the folders and the manifest if missing; safe to call on an existing workdir."""
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"workdir {self.root} exists and is not a directory")
        for d in (self.root, self.datasets_dir, self.embeddings_dir, self.indexes_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            now = utc_now().isoformat(timespec="seconds")
            atomic_write_json(
                self.manifest_path,
                {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "created": now, "updated": now,
                 "artefacts": {}},
            )
        return self

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.root} is not a groundex workdir (no manifest.json); build one with "
                f"`groundex demo --workdir {self.root}` or `groundex ingest ... --workdir {self.root}`"
            ) from None
        except json.JSONDecodeError as e:
            raise InputError(f"{self.manifest_path}: not valid JSON ({e})") from None
        if manifest.get("format") != MANIFEST_FORMAT:
            raise InputError(f"{self.manifest_path}: not a groundex manifest (format={manifest.get('format')!r})")
        if manifest.get("version", 0) > MANIFEST_VERSION:
            raise InputError(
                f"{self.manifest_path}: manifest version {manifest['version']} is newer than this groundex "
                f"understands ({MANIFEST_VERSION}); upgrade groundex"
            )
        return manifest

    def update_manifest(self, remove: Iterable[str] = (), **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the manifest (a key `artefacts` merges by name; `remove` drops artefacts by name) and
        write it atomically. Writers call it while holding the catalog's write lock, so updates do not race."""
        manifest = self.read_manifest()
        artefacts = fields.pop("artefacts", None)
        manifest.update(fields)
        if artefacts:
            manifest.setdefault("artefacts", {}).update(artefacts)
        for name in remove:
            manifest.setdefault("artefacts", {}).pop(name, None)
        manifest["updated"] = utc_now().isoformat(timespec="seconds")
        atomic_write_json(self.manifest_path, manifest)
        return manifest
