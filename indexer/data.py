"""Pixels decoded once: a uint8 cache of every image at a given square size, shared by training and embedding.

JPEG decoding and resizing cost more than a tiny model's forward pass, so they happen once per image,
size and resize mode, on every core, into `cache/pixels-<S>px.npy` (N, 3, S, S) with its ids in
`...ids.npy` ("squash"; other modes add theirs to the name: `pixels-<S>px-center-crop.npy`).
The cache grows incrementally (new images are decoded and appended) and is rewritten atomically.

`square_pixels` is the one place an image becomes a model's square input; the resize modes:

- "squash": the whole frame resized to S x S, aspect ratio not kept (every pixel reaches a patch);
- "center-crop": open_clip's own eval preprocessing: the short side resized to S (bicubic), then the
  central S x S cut out; the patches cover `crop_window` of the image.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from warehouse import ImageError, InputError, atomic_write_npy, load_image

_logger = logging.getLogger(__name__)
RESIZE_MODES = ("squash", "center-crop")  # how an image becomes a model's square input (ModelSpec.resize)
FULL_FRAME = (0.0, 0.0, 1.0, 1.0)          # a crop window: the whole image, (x1, y1, x2, y2) in [0, 1]


def check_resize(resize: str) -> str:
    """`resize` if it is a known mode, else a ValueError that lists them."""
    if resize not in RESIZE_MODES:
        raise InputError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return resize


def square_pixels(image: Image.Image, size: int, resize: str = "squash") -> np.ndarray:
    """An RGB PIL image -> (3, size, size) uint8 by `resize` ("squash" or "center-crop").

    "center-crop" repeats torchvision's Resize(size) + CenterCrop(size) on a PIL image, as open_clip's
    eval transform runs them (same sizes, same rounding), so the pixels are open_clip's exactly."""
    if check_resize(resize) == "squash" or image.width == image.height:
        image = image.resize((size, size), Image.BICUBIC)
    else:
        short, long = sorted((image.width, image.height))
        new_long = int(size * long / short)
        width, height = (new_long, size) if image.width > image.height else (size, new_long)
        image = image.resize((width, height), Image.BICUBIC)
        left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def crop_window(width: int, height: int, resize: str = "squash") -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) in [0, 1] of a width x height image: the part of it that reaches the model's input.

    "squash" keeps the whole frame; "center-crop" keeps the central min(width, height) square (to within
    a pixel of the resized image: `square_pixels` rounds like torchvision)."""
    if check_resize(resize) == "squash" or width == height:
        return FULL_FRAME
    side = min(width, height)
    x1, y1 = (width - side) / 2 / width, (height - side) / 2 / height
    return x1, y1, 1.0 - x1, 1.0 - y1


def decode_square(path: str, size: int, resize: str = "squash") -> np.ndarray:
    """Load an image upright in RGB and resize it to (3, size, size) uint8 by `resize` (`square_pixels`)."""
    return square_pixels(load_image(path), size, resize)


def _die_with_parent() -> None:
    """Pool initializer: end this worker when the process that started it dies, even by SIGKILL (a killed
    `groundex index` would otherwise leave its decoders waiting forever, each holding hundreds of MB). A
    watcher thread, not prctl's PDEATHSIG, which fires when the starting *thread* ends (a Streamlit script)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Decoding processes that do not outlive the caller."""
    return ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent)


def _decode_many(args: tuple[list[str], int, str]) -> list[np.ndarray | str]:
    paths, size, resize = args
    out: list[np.ndarray | str] = []
    for path in paths:
        try:
            out.append(decode_square(path, size, resize))
        except ImageError as e:
            out.append(str(e))
    return out


class PixelCache:
    """ids (N,) int64 and pixels (N, 3, S, S) uint8, with a row lookup by image id."""

    def __init__(self, ids: np.ndarray, pixels: np.ndarray):
        self.ids = ids
        self.pixels = pixels
        self._row = {int(i): r for r, i in enumerate(ids)}

    def rows(self, image_ids: Sequence[int]) -> np.ndarray:
        try:
            return np.fromiter((self._row[int(i)] for i in image_ids), dtype=np.int64, count=len(image_ids))
        except KeyError as e:
            raise KeyError(f"image {e.args[0]} is not in the pixel cache") from None

    def get(self, image_ids: Sequence[int]) -> np.ndarray:
        """(len(image_ids), 3, S, S) uint8."""
        return self.pixels[self.rows(image_ids)]

    @property
    def size(self) -> int:
        return int(self.pixels.shape[-1])


def cache_name(size: int, resize: str = "squash") -> str:
    """The cache's file stem: one per size and resize mode, so differently resized pixels never mix
    ("squash" keeps the name it had before there were modes)."""
    return f"pixels-{size}px" if check_resize(resize) == "squash" else f"pixels-{size}px-{resize}"


def pixel_cache(cache_dir: Path, items: Sequence[tuple[int, str]], size: int, workers: int | None = None,
                progress: bool = True, resize: str = "squash") -> PixelCache:
    """A cache holding at least `items` ((image id, path) pairs) at `size` px, resized by `resize`
    (`square_pixels`); decodes what is missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = cache_name(size, resize)
    pixels_path, ids_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.ids.npy"
    ids = np.zeros(0, dtype=np.int64)
    pixels = np.zeros((0, 3, size, size), dtype=np.uint8)
    if pixels_path.is_file() and ids_path.is_file():
        try:
            ids, pixels = np.load(ids_path), np.load(pixels_path, mmap_mode="r")
            if len(ids) != len(pixels) or pixels.shape[1:] != (3, size, size):
                raise ValueError("ids and pixels disagree")
        except (ValueError, OSError) as e:
            _logger.warning("pixel cache %s unreadable (%s); rebuilding it", pixels_path, e)
            ids, pixels = np.zeros(0, dtype=np.int64), np.zeros((0, 3, size, size), dtype=np.uint8)
    have = set(ids.tolist())
    missing = [(i, p) for i, p in items if i not in have]
    if not missing:
        return PixelCache(ids, pixels)
    workers = workers or max(1, os.cpu_count() or 1)
    chunk = 64
    batches = [([p for _, p in missing[k:k + chunk]], size, resize) for k in range(0, len(missing), chunk)]
    decoded: list[np.ndarray | str] = []
    with tqdm(total=len(missing), desc=f"decode images {size}px ({resize})", unit="img",
              disable=not progress) as bar:
        if workers == 1 or len(missing) < 2 * chunk:
            results = map(_decode_many, batches)
        else:
            pool = worker_pool(workers)
            results = pool.map(_decode_many, batches)
        for out in results:
            decoded.extend(out)
            bar.update(len(out))
        if workers > 1 and len(missing) >= 2 * chunk:
            pool.shutdown()
    errors = [(p, e) for (_, p), e in zip(missing, decoded, strict=True) if isinstance(e, str)]
    if errors:
        raise ImageError(f"{len(errors)} image(s) could not be decoded, first: {errors[0][1]}")
    new_ids = np.array([i for i, _ in missing], dtype=np.int64)
    ids = np.concatenate([ids, new_ids])
    pixels = np.concatenate([np.asarray(pixels), np.stack(decoded)])
    atomic_write_npy(pixels_path, pixels)
    atomic_write_npy(ids_path, ids)
    return PixelCache(ids, pixels)
