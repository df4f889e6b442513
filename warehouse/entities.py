"""The Flickr30k Entities formats: `Sentences/<id>.txt` phrase markup and `Annotations/<id>.xml` boxes.

Sentences: one caption per line; a phrase is `[/EN#<entity_id>/<type>[/<type>...] <words>]`. Words are
whitespace tokens, as in the official `get_sentence_data`; `first_word_index` counts the caption's
words (markup removed) before the phrase. Entity id 0 marks `notvisual` phrases.

Annotations: PASCAL-VOC style XML. `<size>` is the size of the image the boxes were drawn on; each
`<object>` has one or more `<name>` (entity ids) and either a `<bndbox>` (1-based inclusive pixels) or
`<nobndbox>1</nobndbox>` / `<scene>1</scene>` flags.

Parsers raise `FormatError` naming the problem; callers add the file (and line) to the message.
Writers produce the same formats, so generated datasets go through the real parsers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _safe_fromstring

from .records import Box, Caption, Entity, Phrase

ENTITY_TYPES = ("people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other",
                "notvisual")
_PHRASE_HEAD = re.compile(r"^\[/EN#(\d+)((?:/[^/\s]+)+)$")


class FormatError(ValueError):
    """Input that does not follow the format; the message says what is wrong."""


# -- Sentences ------------------------------------------------------------------------------------


def parse_caption(line: str) -> Caption:
    """Parse one marked-up caption line into plain text and its phrases."""
    words: list[str] = []
    phrases: list[Phrase] = []
    open_head: tuple[int, tuple[str, ...], int] | None = None  # (entity id, types, first word index)
    phrase_words: list[str] = []
    for token in line.split():
        if token.startswith("["):
            if open_head is not None:
                raise FormatError(f"nested phrase markup at {token!r}")
            match = _PHRASE_HEAD.match(token)
            if not match:
                raise FormatError(f"bad phrase head {token!r} (expected [/EN#<id>/<type>...)")
            types = tuple(t for t in match.group(2).split("/") if t)
            open_head = (int(match.group(1)), types, len(words))
            phrase_words = []
            continue
        closes = open_head is not None and token.endswith("]")
        if closes:
            token = token[:-1]
        if "[" in token or "]" in token:
            raise FormatError(f"stray bracket in {token!r}")
        if token:
            words.append(token)
            if open_head is not None:
                phrase_words.append(token)
        if closes:
            entity_id, types, first = open_head
            if not phrase_words:
                raise FormatError(f"empty phrase for entity {entity_id}")
            phrases.append(Phrase(entity_id, types, " ".join(phrase_words), first))
            open_head = None
    if open_head is not None:
        raise FormatError(f"phrase for entity {open_head[0]} is not closed with ']'")
    if not words:
        raise FormatError("caption has no words")
    return Caption(" ".join(words), tuple(phrases))


def decode_text(data: bytes) -> str:
    """Strict UTF-8 (a BOM is allowed); the error says at which byte decoding failed."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FormatError(f"not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def parse_sentences(text: str) -> list[tuple[int, Caption]]:
    """Parse a Sentences file's text into (1-based line number, caption) pairs, skipping blank lines.

    A malformed line raises `FormatError` whose message starts with `line N:`.
    """
    captions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            captions.append((number, parse_caption(line)))
        except FormatError as e:
            raise FormatError(f"line {number}: {e}") from None
    return captions


def format_caption(segments: Sequence[str | tuple[int, Sequence[str], str]]) -> str:
    """Build a marked-up caption from plain strings and (entity_id, types, phrase text) tuples."""
    out = []
    for seg in segments:
        if isinstance(seg, str):
            out.append(seg)
        else:
            entity_id, types, text = seg
            out.append(f"[/EN#{entity_id}/{'/'.join(types)} {text}]")
    return " ".join(out)


# -- Annotations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    size: tuple[int, int]  # (width, height) the boxes refer to
    boxes: list[Box]       # continuous edges in that size: x1 = xmin - 1, x2 = xmax
    entities: list[Entity]


def _number(elem: Element, tag: str, what: str) -> float:
    text = elem.findtext(tag)
    if text is None or not text.strip():
        raise FormatError(f"{what}: missing <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise FormatError(f"{what}: <{tag}> is not a number: {text.strip()!r}") from None


def parse_annotation(data: bytes) -> Annotation:
    """Parse an Annotations XML document. Boxes are returned as given (possibly inverted or outside
    the image): checking them against the stored image is the ingest's job."""
    try:
        root = _safe_fromstring(data)
    except ParseError as e:
        raise FormatError(f"malformed XML: {e}") from None
    except DefusedXmlException as e:
        raise FormatError(f"unsafe XML refused ({type(e).__name__})") from None
    size = root.find("size")
    if size is None:
        raise FormatError("missing <size> (needed to place the boxes)")
    width, height = _number(size, "width", "<size>"), _number(size, "height", "<size>")
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise FormatError(f"<size> must be positive integers, got {width} x {height}")
    boxes: list[Box] = []
    flags: dict[int, list[int]] = {}  # entity id -> [n_boxes, scene, nobndbox]
    for index, obj in enumerate(root.findall("object"), start=1):
        what = f"<object> #{index}"
        names = [n.text.strip() if n.text else "" for n in obj.findall("name")]
        if not names:
            raise FormatError(f"{what}: no <name>")
        try:
            entity_ids = tuple(int(n) for n in names)
        except ValueError:
            raise FormatError(f"{what}: entity id is not an integer: {names}") from None
        bndbox = obj.find("bndbox")
        scene = (obj.findtext("scene") or "0").strip() == "1"
        nobndbox = (obj.findtext("nobndbox") or "0").strip() == "1"
        for entity_id in entity_ids:
            f = flags.setdefault(entity_id, [0, 0, 0])
            f[0] += bndbox is not None
            f[1] |= scene
            f[2] |= nobndbox
        if bndbox is not None:
            xmin, ymin = _number(bndbox, "xmin", what), _number(bndbox, "ymin", what)
            xmax, ymax = _number(bndbox, "xmax", what), _number(bndbox, "ymax", what)
            boxes.append(Box(entity_ids, xmin - 1, ymin - 1, xmax, ymax))
    entities = [Entity(eid, n, bool(s), bool(nb)) for eid, (n, s, nb) in sorted(flags.items())]
    return Annotation((int(width), int(height)), boxes, entities)


def format_annotation(filename: str, size: tuple[int, int], boxes: Sequence[Box],
                      no_box: Sequence[tuple[int, bool, bool]] = ()) -> str:
    """Write an Annotations XML document. `boxes` are continuous edges (written back as 1-based
    inclusive integers); `no_box` holds (entity_id, scene, nobndbox) for entities without a box."""
    lines = ["<annotation>", f"\t<filename>{filename}</filename>", "\t<size>",
             f"\t\t<width>{size[0]}</width>", f"\t\t<height>{size[1]}</height>", "\t\t<depth>3</depth>", "\t</size>"]
    for b in boxes:
        lines.append("\t<object>")
        lines += [f"\t\t<name>{e}</name>" for e in b.entity_ids]
        lines += ["\t\t<bndbox>", f"\t\t\t<xmin>{round(b.x1) + 1}</xmin>", f"\t\t\t<ymin>{round(b.y1) + 1}</ymin>",
                  f"\t\t\t<xmax>{round(b.x2)}</xmax>", f"\t\t\t<ymax>{round(b.y2)}</ymax>", "\t\t</bndbox>",
                  "\t</object>"]
    for entity_id, scene, nobndbox in no_box:
        lines += ["\t<object>", f"\t\t<name>{entity_id}</name>", f"\t\t<scene>{int(scene)}</scene>",
                  f"\t\t<nobndbox>{int(nobndbox)}</nobndbox>", "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def read_split_file(path: Path) -> list[str]:
    """Ids listed one per line in `train.txt` / `val.txt` / `test.txt` (blank lines ignored)."""
    text = decode_text(path.read_bytes())
    return [line.strip() for line in text.splitlines() if line.strip()]
