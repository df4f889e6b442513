"""Reader for a plain folder of images without captions (a user's own collection).

Every file below ROOT with an image suffix is a sample (hidden files and folders are skipped); its
key is its absolute path, so ingesting the same folder again adds only new files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..images import IMAGE_SUFFIXES
from ..records import Sample


def list_image_files(root: Path) -> list[Path]:
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found")
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and not p.is_dir()
    )


def read_folder(root: Path, dataset: str | None = None, split: str | None = None) -> Iterator[Sample]:
    root = Path(root).resolve()
    dataset = dataset or root.name
    for path in list_image_files(root):
        yield Sample(key=f"file:{path}", dataset=dataset, path=path, split=split)
