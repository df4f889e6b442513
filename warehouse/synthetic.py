"""The embedded default dataset: procedurally generated scenes in the Flickr30k Entities format.

Each image is a background (a scene: grass, sand, water, ...) with 1-4 things on it: geometric shapes
with a colour, size and texture, or drawn people (whose shirt is a `clothing` entity), cars, dogs and
trees. Five captions per image mention different subsets of the things, with synonyms, positions and
relations, so that no single caption names everything and retrieval must read the words. Phrases point
to boxes exactly as in the real release: repeated things ("two red squares") are one entity with
several boxes, group phrases ("three shapes") make objects with several `<name>`s, the background is a
`scene` entity without a box, and "this picture" is `notvisual`.

Every image is drawn from its own RNG seeded by (seed, index): the first k images are the same for any
n >= k, so a larger dataset extends a smaller one and re-ingesting adds only the new images.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .entities import format_annotation, format_caption
from .errors import InputError
from .records import Box
from .workdir import atomic_write_bytes, atomic_write_json

_logger = logging.getLogger(__name__)

COLOURS = {  # name -> RGB, chosen to stay distinct after JPEG and at 64 px
    "red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220), "yellow": (245, 215, 30),
    "orange": (255, 127, 14), "purple": (148, 60, 189), "pink": (247, 130, 200), "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = {  # name -> synonyms used in captions
    "circle": ("circle", "disc", "round shape"), "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangle", "pyramid shape"), "star": ("star", "star", "star shape"),
    "ring": ("ring", "donut", "hoop"), "cross": ("cross", "plus sign", "cross"),
}
TEXTURES = ("solid", "striped", "dotted")
BACKGROUNDS = {  # name -> (base RGB, noise amplitude, phrases)
    "grass": ((86, 150, 60), 40, ("a grassy field", "the grass", "a green lawn")),
    "sand": ((222, 200, 150), 30, ("the sand", "a sandy beach", "sand")),
    "water": ((60, 120, 190), 25, ("the water", "a lake", "blue water")),
    "snow": ((235, 238, 245), 12, ("the snow", "a snowy field", "white snow")),
    "wall": ((150, 70, 55), 20, ("a brick wall", "a red brick wall", "bricks")),
    "night": ((35, 35, 60), 15, ("a dark background", "the night", "darkness")),
}
PLACES = ("left", "right", "top", "bottom", "middle")


@dataclass
class SyntheticConfig:
    n: int = 2000          # images to generate
    seed: int = 0          # one seed, one dataset: the same files on every machine
    size: int = 128        # image side in pixels (the real sample is 128 x 128)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    jpeg_quality: int = 92


@dataclass
class Thing:
    kind: str           # 'shape', 'person', 'car', 'dog', 'tree'
    colour: str
    large: bool
    shape: str = ""     # for kind == 'shape'
    texture: str = "solid"
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # continuous edges x1, y1, x2, y2
    part_box: tuple[int, int, int, int] | None = None  # a person's shirt
    entity: int = 0
    part_entity: int = 0

    @property
    def identity(self) -> tuple:
        return (self.kind, self.colour, self.large, self.shape, self.texture)


# -- drawing ----------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, name: str, size: int) -> Image.Image:
    base, noise, _ = BACKGROUNDS[name]
    pixels = np.array(base, dtype=np.float32) + rng.normal(0, noise / 2, (size, size, 1)) * [1, 1, 1]
    if name == "water":
        rows = np.arange(size)[:, None, None]
        pixels += 18 * np.sin(rows / 3.0 + rng.uniform(0, 6))
    if name == "wall":
        yy, xx = np.mgrid[0:size, 0:size]
        mortar = ((yy % 12) == 0) | (((xx + 12 * ((yy // 12) % 2)) % 24) == 0)
        pixels[mortar] = (200, 190, 180)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _shape_mask(shape: str, size: int, w: int, h: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    box = (0, 0, w - 1, h - 1)
    if shape == "circle":
        d.ellipse(box, fill=255)
    elif shape == "square":
        d.rectangle(box, fill=255)
    elif shape == "triangle":
        d.polygon([(w / 2, 0), (w - 1, h - 1), (0, h - 1)], fill=255)
    elif shape == "star":
        cx, cy, r = w / 2, h / 2, min(w, h) / 2
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -np.pi / 2 + i * np.pi / 5
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        d.polygon(points, fill=255)
    elif shape == "ring":
        d.ellipse(box, fill=255)
        t = max(3, w // 4)
        d.ellipse((t, t, w - 1 - t, h - 1 - t), fill=0)
    elif shape == "cross":
        t = max(3, w // 3)
        d.rectangle(((w - t) // 2, 0, (w + t) // 2, h - 1), fill=255)
        d.rectangle((0, (h - t) // 2, w - 1, (h + t) // 2), fill=255)
    return mask


def _fill(colour: str, texture: str, size: int) -> Image.Image:
    rgb = np.array(COLOURS[colour], dtype=np.uint8)
    pixels = np.broadcast_to(rgb, (size, size, 3)).copy()
    alternate = np.array((255, 255, 255) if colour != "white" else (90, 90, 90), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    if texture == "striped":
        pixels[((xx + yy) // 4) % 2 == 1] = alternate
    elif texture == "dotted":
        pixels[((xx % 7) < 3) & ((yy % 7) < 3)] = alternate
    return Image.fromarray(pixels, "RGB")


def _draw_thing(canvas: Image.Image, thing: Thing, x: int, y: int, w: int, h: int) -> None:
    """Draw `thing` into the box (x, y, w, h) and set its tight box (and its part's) from the pixels."""
    size = canvas.size[0]
    if thing.kind == "shape":
        local = _shape_mask(thing.shape, size, w, h)
        mask = Image.new("L", (size, size), 0)
        mask.paste(local.crop((0, 0, w, h)), (x, y))
        canvas.paste(_fill(thing.colour, thing.texture, size), (0, 0), mask)
    else:
        mask = Image.new("L", (size, size), 0)
        d, m = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
        colour = COLOURS[thing.colour]
        dark = (40, 30, 25)

        def both(method: str, xy, fill, **kw) -> None:
            getattr(d, method)(xy, fill=fill, **kw)
            getattr(m, method)(xy, fill=255, **kw)

        if thing.kind == "person":
            head = w * 0.5
            both("ellipse", (x + w / 2 - head / 2, y, x + w / 2 + head / 2, y + head), (235, 190, 160))
            torso = (x + w * 0.15, y + head, x + w * 0.85, y + h * 0.62)
            both("rectangle", torso, colour)
            both("line", (x + w * 0.3, y + h * 0.62, x + w * 0.2, y + h - 1), dark, width=max(2, w // 6))
            both("line", (x + w * 0.7, y + h * 0.62, x + w * 0.8, y + h - 1), dark, width=max(2, w // 6))
            shirt = Image.new("L", (size, size), 0)
            ImageDraw.Draw(shirt).rectangle(torso, fill=255)
            thing.part_box = shirt.getbbox()
        elif thing.kind == "car":
            both("rectangle", (x, y + h * 0.35, x + w - 1, y + h * 0.8), colour)
            both("rectangle", (x + w * 0.25, y, x + w * 0.75, y + h * 0.4), colour)
            wheel = h * 0.4
            for cx in (x + w * 0.22, x + w * 0.78):
                both("ellipse", (cx - wheel / 2, y + h - wheel, cx + wheel / 2, y + h - 1), dark)
        elif thing.kind == "dog":
            both("ellipse", (x + w * 0.15, y + h * 0.3, x + w * 0.85, y + h * 0.75), colour)
            both("ellipse", (x + w * 0.65, y, x + w - 1, y + h * 0.45), colour)
            for lx in (0.25, 0.4, 0.6, 0.75):
                both("line", (x + w * lx, y + h * 0.65, x + w * lx, y + h - 1), colour, width=max(2, w // 10))
            both("line", (x + w * 0.18, y + h * 0.45, x, y + h * 0.2), colour, width=max(2, w // 12))
        elif thing.kind == "tree":
            both("rectangle", (x + w * 0.4, y + h * 0.55, x + w * 0.6, y + h - 1), (110, 70, 30))
            both("ellipse", (x, y, x + w - 1, y + h * 0.7), COLOURS["green"])
    thing.box = mask.getbbox()


# -- scene sampling ---------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _sample_thing(rng: np.random.Generator, background: str) -> Thing:
    kind = _pick(rng, ("shape",) * 6 + ("person", "person", "car", "dog", "tree"))
    large = bool(rng.random() < 0.5)
    if kind == "tree":
        return Thing("tree", "green", large)
    if kind == "dog":
        colour = _pick(rng, ("orange", "black", "white", "yellow"))
    else:
        colour = _pick(rng, tuple(COLOURS))
    # A thing the colour of its background would be invisible.
    base = np.array(BACKGROUNDS[background][0])
    while np.abs(np.array(COLOURS[colour]) - base).sum() < 120:
        colour = _pick(rng, tuple(COLOURS))
    if kind == "shape":
        return Thing("shape", colour, large, shape=_pick(rng, tuple(SHAPES)), texture=_pick(rng, TEXTURES))
    return Thing(kind, colour, large)


def _extent(thing: Thing, size: int, rng: np.random.Generator) -> tuple[int, int]:
    s = size / 128
    scale = rng.uniform(36, 52) if thing.large else rng.uniform(18, 28)
    aspect = {"shape": 1.0, "person": 0.45, "car": 1.8, "dog": 1.4, "tree": 0.7}[thing.kind]
    if thing.kind == "person":
        scale *= 1.4
    w, h = (scale * aspect, scale) if aspect < 1 else (scale, scale / aspect)
    return max(8, int(w * s)), max(8, int(h * s))


def _place(rng: np.random.Generator, extents: list[tuple[int, int]], size: int):
    """Positions without overlap (2 px margin), by rejection sampling; None if the scene does not fit."""
    placed: list[tuple[int, int, int, int]] = []
    for w, h in extents:
        for _ in range(60):
            x, y = int(rng.integers(2, size - w - 1)), int(rng.integers(2, size - h - 1))
            if all(x + w + 2 <= a or a + c + 2 <= x or y + h + 2 <= b or b + e + 2 <= y for a, b, c, e in placed):
                placed.append((x, y, w, h))
                break
        else:
            return None
    return placed


# -- captions ---------------------------------------------------------------------------------------

_NUMBERS = {2: "two", 3: "three", 4: "four"}
_NOUNS = {"car": ("car", "car", "vehicle"), "dog": ("dog", "dog", "puppy"), "tree": ("tree", "tree", "tree")}


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _noun(rng: np.random.Generator, t: Thing, plural: bool = False) -> str:
    if t.kind == "shape":
        noun = _pick(rng, SHAPES[t.shape])
    elif t.kind == "person":
        noun = _pick(rng, ("man", "woman", "person")) if t.large else _pick(rng, ("child", "kid", "little boy"))
    else:
        noun = _pick(rng, _NOUNS[t.kind])
    if plural:
        noun = {"man": "men", "woman": "women", "person": "people", "child": "children", "box": "boxes",
                "little boy": "little boys", "cross": "crosses", "puppy": "puppies"}.get(noun, noun + "s")
    return noun


def _describe(rng: np.random.Generator, t: Thing, count: int, detail: float) -> str:
    """A phrase for a thing (or `count` identical things), more attributes with higher `detail`."""
    words = []
    if t.kind in ("shape", "tree", "car", "dog") and rng.random() < detail:
        words.append(_pick(rng, ("large", "big")) if t.large else _pick(rng, ("small", "little", "tiny")))
    if t.kind in ("shape", "car", "dog"):
        words.append(t.colour)
    if t.kind == "shape" and t.texture != "solid" and rng.random() < detail + 0.2:
        words.append(t.texture)
    words.append(_noun(rng, t, plural=count > 1))
    text = " ".join(words)
    return f"{_NUMBERS[count]} {text}" if count > 1 else _article(text)


def _centre(g: list[Thing]) -> tuple[float, float]:
    """Mean box centre of a group of things (one thing, or identical copies)."""
    return (sum(t.box[0] + t.box[2] for t in g) / (2 * len(g)), sum(t.box[1] + t.box[3] for t in g) / (2 * len(g)))


def _where(g: list[Thing], size: int) -> str:
    cx, cy = (c / size for c in _centre(g))
    if abs(cx - 0.5) < 0.17 and abs(cy - 0.5) < 0.17:
        return "in the middle"
    if abs(cx - 0.5) >= abs(cy - 0.5):
        return "on the left" if cx < 0.5 else "on the right"
    return "at the top" if cy < 0.5 else "at the bottom"


def _relation(a: list[Thing], b: list[Thing]) -> str:
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _captions(rng: np.random.Generator, groups: list[list[Thing]], background: str, bg_entity: int,
              group_entity: int, size: int) -> list[str]:
    def bg() -> tuple:
        return (bg_entity, ("scene",), _pick(rng, BACKGROUNDS[background][2]))

    def ref(g: list[Thing], detail: float):
        t = g[0]
        types = {"shape": ("other",), "person": ("people",), "car": ("vehicles",), "dog": ("animals",),
                 "tree": ("other",)}[t.kind]
        return (t.entity, types, _describe(rng, t, len(g), detail))

    def with_shirt(g: list[Thing], detail: float) -> list:
        out: list = [ref(g, detail)]
        t = g[0]
        if t.kind == "person" and len(g) == 1 and rng.random() < 0.8:
            out += [_pick(rng, ("in", "wearing")),
                    (t.part_entity, ("clothing",), _article(f"{t.colour} {_pick(rng, ('shirt', 'top', 'sweater'))}"))]
        return out

    order = list(rng.permutation(len(groups)))
    first = groups[order[0]]
    captions: list[list] = []
    # 1. everything, on the background.
    parts: list = []
    for i, gi in enumerate(order):
        if i:
            parts.append("and" if i == len(order) - 1 else ",")
        parts += with_shirt(groups[gi], 0.7)
    captions.append(parts + [_pick(rng, ("on", "in front of", "against")), bg(), "."])
    # 2. one thing and where it is.
    verb = {"person": ("stands", "is standing", "waits"), "dog": ("runs", "plays", "stands"),
            "car": ("is parked", "drives", "sits"), "tree": ("grows", "stands", "is")}.get(first[0].kind,
                                                                                         ("is", "sits", "lies"))
    captions.append(with_shirt(first, 0.9) + [_pick(rng, verb), _where(first, size), "."])
    # 3. a relation between two things, or the thing on its background.
    if len(groups) >= 2:
        a, b = groups[order[0]], groups[order[1]]
        rel = _relation(a, b)
        captions.append([ref(a, 0.5), "is" if len(a) == 1 else "are", rel, ref(b, 0.5), "."])
    else:
        captions.append([ref(first, 0.5), "on", bg(), "."])
    # 4. a count of everything (a group entity whose boxes are all the things), then one of them.
    total = sum(len(g) for g in groups)
    if total >= 2 and total in _NUMBERS:
        kinds = {t.kind for g in groups for t in g}
        noun = "shapes" if kinds == {"shape"} else _pick(rng, ("things", "objects"))
        last = groups[order[-1]]
        captions.append([(group_entity, ("other",), f"{_NUMBERS[total]} {noun}"), "including", ref(last, 0.6), "."])
    else:
        picture = (0, ("notvisual",), "this picture")
        captions.append([_pick(rng, ("There is", "We see")), ref(first, 1.0), "in", picture, "."])
    # 5. short: the background and what stands out.
    captions.append([bg(), "with", ref(groups[order[-1]], 0.3), "."])
    rng.shuffle(captions)
    return [format_caption(c) for c in captions]


# -- one scene, the dataset -------------------------------------------------------------------------


def generate_scene(seed: int, index: int, size: int = 128) -> tuple[Image.Image, list[str], str]:
    """Image, caption lines (Entities markup) and Annotations XML (without <filename>) of one scene."""
    rng = np.random.default_rng([seed, index])
    while True:
        background = _pick(rng, tuple(BACKGROUNDS))
        n_groups = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
        groups: list[list[Thing]] = []
        for _ in range(n_groups):
            thing = _sample_thing(rng, background)
            if any(g[0].identity == thing.identity for g in groups):
                continue
            copies = 2 if thing.kind != "tree" and rng.random() < 0.15 else 1
            groups.append([Thing(**asdict(thing)) for _ in range(copies)])
        extents = [_extent(t, size, rng) for g in groups for t in g]
        positions = _place(rng, extents, size)
        if positions is not None:
            break
    canvas = _background(rng, background, size)
    entity = 1
    boxes: list[Box] = []
    things = [t for g in groups for t in g]
    for t, (x, y, w, h) in zip(things, positions, strict=True):
        _draw_thing(canvas, t, x, y, w, h)
    for g in groups:
        for t in g:
            t.entity = entity
        entity += 1
        if g[0].kind == "person":
            for t in g:
                t.part_entity = entity
            entity += 1
    bg_entity, group_entity = entity, entity + 1
    grouped = len(things) in _NUMBERS
    for t in things:
        names = (t.entity, group_entity) if grouped else (t.entity,)
        boxes.append(Box(names, *t.box))
        if t.part_box is not None:
            boxes.append(Box((t.part_entity,), *t.part_box))
    captions = _captions(rng, groups, background, bg_entity, group_entity, size)
    xml = format_annotation("", (size, size), boxes, no_box=[(bg_entity, True, False)])
    return canvas, captions, xml


def _split(config: SyntheticConfig, index: int) -> str:
    u = np.random.default_rng([config.seed, index, 7]).random()
    return "val" if u < config.val_fraction else "test" if u < config.val_fraction + config.test_fraction else "train"


def generate_dataset(out: Path, config: SyntheticConfig | None = None, progress: bool = True) -> Path:
    """Write `config.n` scenes to `out` in the Flickr30k Entities layout; skip if already written."""
    config = config or SyntheticConfig()
    if config.n < 1 or config.size < 64:
        raise InputError(f"synthetic dataset needs n >= 1 and size >= 64 (got n={config.n}, size={config.size})")
    out = Path(out)
    stamp = out / "synthetic.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == asdict(config):
        _logger.info("%s already holds this synthetic dataset; not regenerating", out)
        return out
    for sub in ("images", "Sentences", "Annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for index in tqdm(range(config.n), desc="synthetic scenes", unit="img", disable=not progress):
        image_id = f"s{config.seed}_{index:06d}"
        image, captions, xml = generate_scene(config.seed, index, config.size)
        buffer = _jpeg(image, config.jpeg_quality)
        atomic_write_bytes(out / "images" / f"{image_id}.jpg", buffer)
        atomic_write_bytes(out / "Sentences" / f"{image_id}.txt", ("\n".join(captions) + "\n").encode())
        xml = xml.replace("<filename></filename>", f"<filename>{image_id}.jpg</filename>")
        atomic_write_bytes(out / "Annotations" / f"{image_id}.xml", xml.encode())
        splits[_split(config, index)].append(image_id)
    for name, ids in splits.items():
        atomic_write_bytes(out / f"{name}.txt", "".join(f"{i}\n" for i in ids).encode())
    atomic_write_json(stamp, asdict(config))  # last: its presence means the dataset is complete
    return out


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    # 4:4:4 chroma: the default 4:2:0 smears the colour of small shapes, which captions name.
    image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()
