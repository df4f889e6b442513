"""Opening image files safely: measure at ingest, load as RGB everywhere else.

Sizes are reported after EXIF orientation, because that is how `load_image` returns pixels and
therefore the space boxes live in. Files that cannot be fully decoded, or whose pixel count exceeds
`max_pixels` (decompression bombs), raise `ImageError` with a reason fit for the rejects table.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .catalog import ImageInfo

# 64 megapixels: 16x a 2k x 2k photo, far beyond Flickr30k (<= 500 px a side), small enough that one
# decoded RGB image (192 MB) cannot exhaust memory. Override with `max_pixels=`.
DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class ImageError(ValueError):
    pass


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we apply our own limit below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError("not an image file (format not recognised)") from None
        except Image.DecompressionBombError as e:
            raise ImageError(f"image too large (decompression bomb): {e}") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"unreadable image header: {e}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height:,} pixels > limit {max_pixels:,} "
            "(decompression-bomb guard; raise max_pixels if this is intended)"
        )
    return image


def _decode(image: Image.Image) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"corrupt or truncated image data: {e}") from None


def inspect_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read, hash and fully decode `path`; raise `ImageError` if it is not a usable image."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}") from None
    image = _open(data, max_pixels)
    _decode(image)
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not a broken image
        orientation = 1
    if orientation in _ROTATED_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(
        width=width, height=height, sha256=hashlib.sha256(data).hexdigest(), format=image.format, mode=image.mode
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency onto white and rescaling 16-bit data."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes as upright 8-bit RGB (EXIF orientation applied; first frame of animations)."""
    image = _open(data, max_pixels)
    _decode(image)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # unusable orientation tag: keep pixels as stored
        pass
    return to_rgb(image)


def load_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """As `load_image_bytes`, for a file; errors name the file."""
    try:
        return load_image_bytes(Path(path).read_bytes(), max_pixels)
    except OSError as e:
        raise ImageError(f"{path}: cannot read file: {e.strerror or e}") from None
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None
