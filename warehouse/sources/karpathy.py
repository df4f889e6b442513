"""Reader for Karpathy's split file `dataset_flickr30k.json` plus a folder of images.

    {"dataset": "flickr30k", "images": [{"filename": "2000000003.jpg", "split": "train",
      "sentences": [{"raw": "A man rides a red bicycle down a hill .", "tokens": [...]}, ...]}, ...]}

The unit of rejection is the entry: a bad sentence is rejected alone, a bad entry as a whole.
`restval` (COCO's extra training images) is stored as `train`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError
from ..records import Caption, Reject, Sample
from ._names import is_plain_file_name

_SPLIT_ALIASES = {"restval": "train"}


def load_karpathy(json_path: Path) -> list[dict]:
    json_path = Path(json_path)
    try:
        document = json.loads(json_path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{json_path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise InputError(f"{json_path}: expected an object with an 'images' list (Karpathy split format)")
    return document["images"]


def read_karpathy(json_path: Path, images_dir: Path, dataset: str = "flickr30k") -> Iterator[Sample | Reject]:
    json_path, images_dir = Path(json_path).resolve(), Path(images_dir).resolve()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: image folder not found")
    seen: set[str] = set()
    for index, entry in enumerate(load_karpathy(json_path)):
        where = f"images[{index}]"
        filename = entry.get("filename") if isinstance(entry, dict) else None
        if not is_plain_file_name(filename):
            yield Reject(str(json_path), f"{where}: missing or unsafe 'filename': {filename!r}")
            continue
        stem = Path(filename).stem
        if stem in seen:
            yield Reject(str(json_path), f"{where}: duplicate filename {filename!r}; first entry kept")
            continue
        seen.add(stem)
        sub = entry.get("filepath") or ""
        path = images_dir / sub / filename
        if not path.is_file():
            yield Reject(str(path), "image file missing; skipped")
            continue
        split = entry.get("split")
        split = _SPLIT_ALIASES.get(split, split) if isinstance(split, str) else None
        sample = Sample(key=f"{dataset}/{stem}", dataset=dataset, path=path, split=split)
        for j, sentence in enumerate(entry.get("sentences") or []):
            text = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(text, str) or not text.strip():
                tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
                text = " ".join(tokens) if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens) else ""
            if not text.strip():
                sample.rejects.append(Reject(str(json_path), f"{where}.sentences[{j}]: no 'raw' text or 'tokens'"))
                continue
            sample.captions.append(Caption(" ".join(text.split())))
        yield sample
