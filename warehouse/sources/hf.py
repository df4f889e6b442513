"""Reader for a Hugging Face `datasets` Flickr30k stored locally (no hub access).

The default column names follow the `nlphuji/flickr30k` schema:
    image (Image), caption (list of str), sentids, split ('train'/'val'/'test'), img_id, filename.
PATH may be a folder `datasets.load_dataset` understands (e.g. parquet files, as in the hub's
parquet conversion) or a folder written by `save_to_disk`. Image bytes are written once into
`images_out/` (the workdir's datasets folder), because the catalog records a file path per image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..records import Caption, Reject, Sample
from ..workdir import atomic_write_bytes
from ._names import is_plain_file_name

_logger = logging.getLogger(__name__)


def load_local_dataset(path: Path) -> Any:
    """`load_from_disk` for saved datasets, else `load_dataset` on the folder; never touches the hub."""
    import datasets  # imported here: it is slow to import and only this reader needs it

    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset folder")
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(str(path))
    except Exception as e:  # datasets raises many types; the user needs the path and the cause
        raise InputError(f"{path}: cannot load as a Hugging Face dataset: {type(e).__name__}: {e}") from None


def _splits(loaded: Any) -> list[tuple[str | None, Any]]:
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        return list(loaded.items())
    return [(None, loaded)]


def count_rows(loaded: Any) -> int:
    return sum(len(part) for _, part in _splits(loaded))


def read_hf_dataset(loaded: Any, source: Path, images_out: Path, dataset: str = "flickr30k",
                    image_column: str = "image", caption_column: str = "caption",
                    split_column: str = "split") -> Iterator[Sample | Reject]:
    """Yield samples from a loaded `Dataset` / `DatasetDict` (see `load_local_dataset`)."""
    import datasets

    images_out = Path(images_out)
    images_out.mkdir(parents=True, exist_ok=True)
    for part_name, part in _splits(loaded):
        missing = [c for c in (image_column, caption_column) if c not in part.column_names]
        if missing:
            raise InputError(f"{source}: dataset split {part_name!r} lacks column(s) {missing}; "
                             f"it has {part.column_names}")
        part = part.cast_column(image_column, datasets.Image(decode=False))
        for index, row in enumerate(part):
            where = f"{part_name or 'rows'}[{index}]"
            image = row[image_column] or {}
            data, original = image.get("bytes"), image.get("path")
            filename = row.get("filename") or (Path(original).name if original else f"{row.get('img_id', index)}.jpg")
            filename = Path(str(filename)).name  # never a path from the data
            if not is_plain_file_name(filename):
                yield Reject(str(source), f"{where}: unusable file name {row.get('filename')!r}")
                continue
            target = images_out / filename
            if not target.exists():
                if data is None and original and Path(original).is_file():
                    data = Path(original).read_bytes()
                if not data:
                    yield Reject(str(source), f"{where}: no image bytes for {filename}")
                    continue
                atomic_write_bytes(target, data)
            captions = row[caption_column]
            if isinstance(captions, str):
                captions = [captions]
            split = row.get(split_column) if split_column in part.column_names else part_name
            sample = Sample(key=f"{dataset}/{Path(filename).stem}", dataset=dataset, path=target.resolve(),
                            split=split or None)
            for j, text in enumerate(captions or []):
                if isinstance(text, str) and text.strip():
                    sample.captions.append(Caption(" ".join(text.split())))
                else:
                    sample.rejects.append(Reject(str(source), f"{where}.{caption_column}[{j}]: empty or not text"))
            yield sample
