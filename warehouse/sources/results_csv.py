"""Reader for Flickr30k's `results.csv` (a.k.a. `results_20130124.token`'s CSV sibling).

    image_name| comment_number| comment
    2000000003.jpg| 0| A man rides a red bicycle down a hill .

Fields are separated by `|` (with optional spaces); the comment may itself contain `|`. A bad row
(wrong number of fields, non-integer number, duplicate (image, number), empty comment) is rejected
with its line number; the image's other captions still go in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..entities import FormatError, decode_text
from ..records import Caption, Reject, Sample
from ._names import is_plain_file_name

HEADER = ("image_name", "comment_number", "comment")


def read_results_csv(csv_path: Path, images_dir: Path, dataset: str = "flickr30k",
                     split: str | None = None) -> Iterator[Sample | Reject]:
    csv_path, images_dir = Path(csv_path).resolve(), Path(images_dir).resolve()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: image folder not found")
    try:
        text = decode_text(csv_path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{csv_path}: no such file") from None
    except FormatError as e:
        raise FormatError(f"{csv_path}: {e}") from None
    lines = text.splitlines()
    if not lines or tuple(f.strip() for f in lines[0].split("|")) != HEADER:
        raise FormatError(f"{csv_path}:1: expected header 'image_name| comment_number| comment'")
    by_image: dict[str, dict[int, str]] = {}
    row_rejects: dict[str, list[Reject]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("|", 2)
        if len(fields) != 3:
            yield Reject(str(csv_path), f"expected 3 '|'-separated fields, got {len(fields)}: {line[:80]!r}", number)
            continue
        name, ordinal, comment = (f.strip() for f in fields)
        if not is_plain_file_name(name):
            yield Reject(str(csv_path), f"unsafe or empty image name {name!r}", number)
            continue
        try:
            ordinal_int = int(ordinal)
        except ValueError:
            yield Reject(str(csv_path), f"comment_number is not an integer: {ordinal!r}", number)
            continue
        captions = by_image.setdefault(name, {})
        if not comment:
            row_rejects.setdefault(name, []).append(Reject(str(csv_path), "empty comment", number))
        elif ordinal_int in captions:
            row_rejects.setdefault(name, []).append(
                Reject(str(csv_path), f"duplicate comment_number {ordinal_int} for {name}; first kept", number))
        else:
            captions[ordinal_int] = " ".join(comment.split())
    for name, captions in by_image.items():
        path = images_dir / name
        if not path.is_file():
            yield Reject(str(path), "image file missing; skipped")
            continue
        yield Sample(
            key=f"{dataset}/{Path(name).stem}", dataset=dataset, path=path, split=split,
            captions=[Caption(captions[k]) for k in sorted(captions)], rejects=row_rejects.get(name, []),
        )
