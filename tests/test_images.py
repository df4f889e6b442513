import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import image_bytes
from warehouse.images import ImageError, inspect_image, load_image, load_image_bytes


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height: what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (10, 20, 30)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def _animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("P", (16, 16), i) for i in range(3)]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def _sixteen_bit_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(buffer, format="PNG")
    return buffer.getvalue()


def _palette_with_alpha() -> bytes:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


GOOD = {
    "jpeg": (image_bytes((64, 48)), (64, 48), "RGB"),
    "png_rgba": (image_bytes((5, 7), (1, 2, 3, 0), "PNG", "RGBA"), (5, 7), "RGBA"),
    "cmyk_jpeg": (image_bytes((9, 9), (0, 255, 0, 0), "JPEG", "CMYK"), (9, 9), "CMYK"),
    "grey": (image_bytes((3, 4), 128, "PNG", "L"), (3, 4), "L"),
    "one_pixel": (image_bytes((1, 1)), (1, 1), "RGB"),
    "huge_aspect": (image_bytes((4000, 2), fmt="PNG"), (4000, 2), "RGB"),
    "exif_rotated": (_exif_rotated_jpeg(), (20, 40), "RGB"),
    "animated_gif": (_animated_gif(), (16, 16), "P"),
    "sixteen_bit": (_sixteen_bit_png(), (8, 8), None),
    "palette_alpha": (_palette_with_alpha(), (8, 8), "P"),
}


@pytest.mark.parametrize("name", GOOD)
def test_good_images_are_measured_and_load_as_rgb(tmp_path, name):
    data, size, mode = GOOD[name]
    path = tmp_path / f"{name}.img"
    path.write_bytes(data)
    info = inspect_image(path)
    assert (info.width, info.height) == size
    if mode:
        assert info.mode == mode
    assert len(info.sha256) == 64
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == size


def test_transparent_pixels_composite_onto_white():
    rgb = load_image_bytes(image_bytes((2, 2), (0, 0, 0, 0), "PNG", "RGBA"))
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert load_image_bytes(_palette_with_alpha()).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_is_rescaled_not_clipped():
    array = np.asarray(load_image_bytes(_sixteen_bit_png()))
    assert array.min() == 0 and array.max() == 255


BAD = {
    "empty": (b"", "empty file"),
    "not_an_image": (b"hello, I am a text file\n" * 10, "not an image"),
    "truncated_header": (image_bytes((256, 256), (10, 200, 30))[:300], "(?i)truncated"),
    "truncated_data": (image_bytes((256, 256), (10, 200, 30), quality=100)[:-400], "corrupt or truncated"),
    "bomb_header": (_png_declaring(100_000, 100_000), "too large"),
    "bomb_below_pil_limit": (_png_declaring(10_000, 10_000), "too large"),  # 100 MP: PIL only warns
}


@pytest.mark.parametrize("name", BAD)
def test_bad_images_raise_image_error_with_reason(tmp_path, name):
    data, message = BAD[name]
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=message):
        inspect_image(path)
    with pytest.raises(ImageError, match=str(path)):
        load_image(path)


def test_max_pixels_is_enforced_and_configurable(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(image_bytes((20, 20), fmt="PNG"))
    with pytest.raises(ImageError, match="400 pixels > limit 399"):
        inspect_image(path, max_pixels=399)
    assert inspect_image(path, max_pixels=400).width == 20


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        inspect_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        inspect_image(tmp_path)
