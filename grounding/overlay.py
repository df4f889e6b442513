"""Pictures of a grounding: the heatmap blended over the image, the boxes drawn on top."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .ground import Grounding

# A perceptually ordered ramp (dark blue -> purple -> orange -> yellow), interpolated to 256 entries.
_ANCHORS = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], dtype=np.float32)
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                 for c in range(3)], axis=1).astype(np.uint8)  # (256, 3)
BOX_COLOURS = ((0, 255, 0), (0, 200, 255), (255, 255, 255))


def heatmap_image(heatmap: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """(gh, gw) scores -> an RGB picture of `size` (w, h), min-max scaled, bilinear upsampled."""
    low, high = float(heatmap.min()), float(heatmap.max())
    scaled = (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)
    small = Image.fromarray((scaled * 255).astype(np.uint8), mode="L").resize(size, Image.BILINEAR)
    return Image.fromarray(_LUT[np.asarray(small)], mode="RGB")


def render_overlay(image: Image.Image, grounding: Grounding, alpha: float = 0.5, max_side: int | None = 1024
                   ) -> Image.Image:
    """The image with the heatmap blended in (`alpha`) over the part of the image it covers (the whole
    image, or a center-crop model's crop window) and the boxes drawn, best box thickest.
    Large images are shrunk to `max_side` first (boxes scale with them)."""
    image = image.convert("RGB")
    if image.size != (grounding.width, grounding.height):
        raise ValueError(f"the image is {image.size[0]}x{image.size[1]}, the grounding was made on "
                         f"{grounding.width}x{grounding.height}")
    scale = 1.0
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BICUBIC)
    x1, y1, x2, y2 = (round(v * scale) for v in grounding.heatmap_window)
    layer = image.copy()
    layer.paste(heatmap_image(grounding.heatmap, (max(1, x2 - x1), max(1, y2 - y1))), (x1, y1))
    out = Image.blend(image, layer, alpha)
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 200))
    for rank, box in reversed(list(enumerate(grounding.boxes))):
        colour = BOX_COLOURS[min(rank, len(BOX_COLOURS) - 1)]
        xy = [box.x1 * scale, box.y1 * scale, box.x2 * scale - 1, box.y2 * scale - 1]
        draw.rectangle(xy, outline=colour, width=width if rank == 0 else max(1, width // 2))
        draw.text((xy[0] + width + 1, xy[1] + width + 1), f"{rank + 1}: {box.score:.2f}", fill=colour)
    px, py = grounding.point[0] * scale, grounding.point[1] * scale
    r = width * 2
    draw.ellipse([px - r, py - r, px + r, py + r], outline=(255, 0, 0), width=width)
    return out
