"""Reader for the official Flickr30k Entities layout.

    ROOT/images/<id>.jpg  ROOT/Sentences/<id>.txt  ROOT/Annotations/<id>.xml  ROOT/{train,val,test}.txt

An image is the unit: it goes in with all its captions and boxes, or is rejected whole (unreadable
caption line, malformed XML, id listed in two splits) with a reason naming the file and line, so that
fixing the file and ingesting again adds it. Ids without an image file are rejected and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from ..entities import FormatError, decode_text, parse_annotation, parse_sentences, read_split_file
from ..images import IMAGE_SUFFIXES
from ..records import Reject, Sample

_logger = logging.getLogger(__name__)
SPLIT_NAMES = ("train", "val", "test")


def _image_files(images_dir: Path) -> dict[str, Path]:
    """Map id (file stem) -> image path; `.jpg` wins when an id has several files."""
    found: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        usable = path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        if usable and (path.stem not in found or path.suffix.lower() == ".jpg"):
            found[path.stem] = path
    return found


def _splits(root: Path) -> tuple[dict[str, str], set[str], list[Reject]]:
    """Split of each listed id; ids listed in two splits are left out, returned, and rejected."""
    split_of: dict[str, str] = {}
    where: dict[str, Path] = {}
    rejects: list[Reject] = []
    conflicted: set[str] = set()
    for name in SPLIT_NAMES:
        path = root / f"{name}.txt"
        if not path.is_file():
            continue
        try:
            ids = read_split_file(path)
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from None
        for image_id in ids:
            if image_id in split_of and split_of[image_id] != name:
                rejects.append(Reject(str(path), f"id {image_id} is also listed in {where[image_id].name}; "
                                      "an image belongs to one split"))
                conflicted.add(image_id)
            split_of.setdefault(image_id, name)
            where.setdefault(image_id, path)
    for image_id in conflicted:
        del split_of[image_id]
    return split_of, conflicted, rejects


def count_flickr30k_entities(root: Path) -> int:
    """How many ids `read_flickr30k_entities` will visit (for progress bars)."""
    root = Path(root)
    stems = {p.stem for p in (root / "Sentences").glob("*.txt")}
    split_of, conflicted, _ = _splits(root)
    return len(stems | set(split_of) | conflicted)


def read_flickr30k_entities(root: Path, dataset: str = "flickr30k") -> Iterator[Sample | Reject]:
    root = Path(root).resolve()
    images_dir, sentences_dir, annotations_dir = root / "images", root / "Sentences", root / "Annotations"
    for required in (images_dir, sentences_dir):
        if not required.is_dir():
            raise FileNotFoundError(
                f"{required} not found: a Flickr30k Entities root holds images/, Sentences/ and Annotations/"
            )
    if not annotations_dir.is_dir():
        _logger.warning("%s not found: ingesting captions and phrases without boxes", annotations_dir)
    split_of, conflicted, rejects = _splits(root)
    yield from rejects
    images = _image_files(images_dir)
    ids = sorted({p.stem for p in sentences_dir.glob("*.txt")} | set(split_of))
    for image_id in ids:
        if image_id in conflicted:
            continue
        image_path = images.get(image_id)
        if image_path is None:
            yield Reject(str(images_dir / f"{image_id}.jpg"), "image file missing; skipped")
            continue
        sample = Sample(key=f"{dataset}/{image_id}", dataset=dataset, path=image_path, split=split_of.get(image_id))
        sentences_path = sentences_dir / f"{image_id}.txt"
        current = sentences_path
        try:
            if sentences_path.is_file():
                sample.captions = [c for _, c in parse_sentences(decode_text(sentences_path.read_bytes()))]
            annotation_path = annotations_dir / f"{image_id}.xml"
            current = annotation_path
            if annotation_path.is_file():
                annotation = parse_annotation(annotation_path.read_bytes())
                sample.boxes, sample.entities = annotation.boxes, annotation.entities
                sample.annotation_size = annotation.size
        except FormatError as e:
            message = str(e)
            line = None
            if message.startswith("line "):
                head, _, message = message.partition(": ")
                line = int(head.split()[1])
            yield Reject(str(current), f"{message}; image {image_id} not ingested", line)
            continue
        yield sample
