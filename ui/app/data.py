"""What the pages show, computed without Streamlit: thumbnails, box overlays (annotated or grounded phrases),
captions with their phrases underlined, collection statistics, the 2-D embedding map and the latest evaluation
figures."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from warehouse import Catalog, InputError, Workdir, load_image

THUMB_SIDE = 192
TYPE_COLOURS = {"people": "#e6194b", "clothing": "#3cb44b", "bodyparts": "#ffe119", "animals": "#4363d8",
                "vehicles": "#f58231", "instruments": "#911eb4", "scene": "#46f0f0", "other": "#f032e6",
                "notvisual": "#a9a9a9"}  # notvisual phrases never get a box: grey
EVAL_COMMANDS = ("eval retrieval", "eval grounding", "eval tags", "eval captions")


def thumbnail(path: str, side: int = THUMB_SIDE) -> bytes:
    """A JPEG of the image shrunk to at most `side` pixels (what a grid cell shows)."""
    image = load_image(path)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def thumbnail_data_url(path: str, side: int = 64) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(thumbnail(path, side)).decode()


def type_colour(types: tuple[str, ...] | list[str]) -> str:
    return TYPE_COLOURS.get(types[0] if types else "other", TYPE_COLOURS["other"])


def type_legend(phrase_types: Iterable[Sequence[str]]) -> str:
    """HTML: one coloured square per phrase type among `phrase_types` (each phrase's types), so that the colours of
    the boxes and of the underlined words can be read."""
    shown = sorted({types[0] for types in phrase_types if types})
    return " ".join(f'<span style="color:{type_colour([t])}">■ {t}</span>' for t in shown)


def boxes_overlay(image: Image.Image, rows: list[Any], max_side: int = 512) -> Image.Image:
    """The image with its Entities boxes drawn (one colour per phrase type), from `Catalog.grounding_rows`."""
    return _draw_boxes(image, [(row.types, box) for row in rows for box in row.boxes], max_side)


def phrase_boxes_overlay(image: Image.Image, phrases: Sequence[Any], max_side: int = 512) -> Image.Image:
    """The image with the boxes of grounded phrases (`GeneratedPhrase.box`, in pixels of `image`) drawn in the
    colour of their type, as `boxes_overlay` draws the annotated ones; phrases without a box are left out."""
    width, height = image.size
    return _draw_boxes(image, [(p.types, (p.box[0] / width, p.box[1] / height, p.box[2] / width, p.box[3] / height))
                               for p in phrases if p.box is not None], max_side)


def _draw_boxes(image: Image.Image, boxes: list[tuple[Sequence[str], tuple[float, ...]]],
                max_side: int) -> Image.Image:
    """A copy of the image shrunk to `max_side`, with each (types, box in [0, 1] of the image) drawn once."""
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side))
    draw = ImageDraw.Draw(image)
    seen = set()
    for types, box in boxes:
        if box in seen:  # one entity's box comes with each caption that mentions it
            continue
        seen.add(box)
        x1, y1, x2, y2 = (box[0] * image.width, box[1] * image.height, box[2] * image.width, box[3] * image.height)
        draw.rectangle([x1, y1, x2, y2], outline=type_colour(types), width=max(2, image.width // 160))
    return image


def highlighted_caption(text: str, phrases: Sequence[Any]) -> str:
    """HTML of a caption with each of its phrases underlined in its type's colour, its type (and box score) on hover.

    A phrase is anything with `text` and `types`: an annotated `GroundingRow`, or a `GeneratedPhrase`, whose
    `first_word_index` (among the caption's whitespace tokens) says where to look for it, since a short phrase
    ("a man") may also occur earlier in the caption; others are looked for in caption order."""
    lowered = text.lower()
    word_starts = [m.start() for m in re.finditer(r"\S+", text)]

    def anchor(phrase: Any) -> int:
        first = getattr(phrase, "first_word_index", None)
        if first is not None and 0 <= first < len(word_starts):
            return word_starts[first]
        return lowered.find(phrase.text.lower())

    out, at = [], 0
    for begin, phrase in sorted(((anchor(p), p) for p in phrases if p.text), key=lambda pair: pair[0]):
        start = lowered.find(phrase.text.lower(), max(at, begin))
        if start < 0:
            continue
        score = getattr(phrase, "score", None)
        title = "/".join(phrase.types) + ("" if score is None else f" · box {score:.2f}")
        out.append(html.escape(text[at:start]))
        out.append(f'<span style="border-bottom: 3px solid {type_colour(phrase.types)}" title="{html.escape(title)}">'
                   f"{html.escape(text[start:start + len(phrase.text)])}</span>")
        at = start + len(phrase.text)
    return "".join(out) + html.escape(text[at:])


def phrases_source(phrases: Sequence[Any]) -> str:
    """The line under a generated caption: which chunker found its phrases and which model located them, or how to
    get them when none were stored."""
    if not phrases:
        return "no phrases stored with it: `groundex caption generate --ground` finds and grounds them"
    chunkers = ", ".join(sorted({p.chunker_id[:8] for p in phrases}))
    models = ", ".join(sorted({p.model_id[:8] for p in phrases if p.model_id}))
    located = sum(p.box is not None for p in phrases)
    return (f"{len(phrases)} phrases found by chunker {chunkers}; {located} located"
            + (f" by model {models}" if models else ""))


MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # decoded size; larger images are refused before decoding (decompression bombs)


def decode_upload(name: str, payload: bytes, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """An uploaded file as upright RGB; ValueError naming the file when it is too large or not an image."""
    from warehouse import ImageError, load_image_bytes

    if len(payload) > max_bytes:
        raise InputError(f"{name} is {len(payload) / 2**20:.1f} MB; uploads are limited to {max_bytes / 2**20:g} MB")
    if not payload:
        raise InputError(f"{name} is empty")
    try:
        return load_image_bytes(payload, max_pixels=max_pixels)
    except ImageError as e:
        raise InputError(f"{name}: {e}") from None


def first_image_id(workdir: Workdir) -> int | None:
    with Catalog.open(workdir, read_only=True) as catalog:
        return catalog.first_image_id()


def statistics(workdir: Workdir) -> dict[str, Any]:
    """Counts, tag and phrase-type frequencies and caption lengths (in words) of the catalog."""
    with Catalog.open(workdir, read_only=True) as catalog:
        counts = catalog.counts()
        splits = catalog.split_counts()
        types = catalog.phrase_type_counts()
        lengths = catalog.caption_word_counts()
        tags = catalog.tag_counts(limit=30)
    return {"counts": counts, "splits": splits, "phrase_types": types, "caption_lengths": lengths, "tags": tags}


def embedding_map(workdir: Workdir, model_id: str, method: str = "pca", limit: int = 2000, seed: int = 0
                  ) -> dict[str, Any]:
    """2-D coordinates of up to `limit` images' embeddings (PCA or t-SNE), with id, split, first caption
    and path for each point."""
    from sklearn.decomposition import PCA

    from indexer.shards import load_embeddings

    with Catalog.open(workdir, read_only=True) as catalog:
        ids = np.array(catalog.embedded_ids(model_id, "image"), dtype=np.int64)
        if len(ids) > limit:
            ids = np.sort(np.random.default_rng(seed).choice(ids, limit, replace=False))
        details = catalog.image_details(ids)
    if len(ids) < 3:
        raise InputError("the embedding map needs at least 3 embedded images")
    _, vectors = load_embeddings(workdir, model_id, "image", ids)
    vectors = vectors.astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        reduced = PCA(n_components=min(50, vectors.shape[1], len(ids) - 1), random_state=seed).fit_transform(vectors)
        xy = TSNE(n_components=2, perplexity=min(30.0, (len(ids) - 1) / 3), random_state=seed,
                  init="pca").fit_transform(reduced)
    elif method == "pca":
        xy = PCA(n_components=2, random_state=seed).fit_transform(vectors)
    else:
        raise InputError(f"method must be pca or tsne, got {method!r}")
    return {"id": ids.tolist(), "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(),
            "split": [details[int(i)]["split"] for i in ids],
            "caption": [(details[int(i)]["captions"] or [""])[0] for i in ids],
            "path": [details[int(i)]["path"] for i in ids]}


def latest_evaluations(workdir: Workdir) -> dict[str, list[dict[str, Any]]]:
    """The finished evaluation runs of each kind, newest first (each: id, model, when, config, result)."""
    out: dict[str, list[dict[str, Any]]] = {}
    with Catalog.open(workdir, read_only=True) as catalog:
        for command in EVAL_COMMANDS:
            out[command] = [r for r in catalog.runs(command, limit=50) if r["status"] == "ok" and r["result"]]
    return out


def workdir_state(root: str | Path | None) -> tuple[Workdir | None, str]:
    """(the workdir, '') when `root` holds a built one (a catalog with a model), else (None, why not)."""
    if not root:
        return None, "no workdir given"
    workdir = Workdir(root)
    if not workdir.catalog_path.is_file():
        return None, f"{workdir.root} holds no catalog"
    try:
        with Catalog.open(workdir, read_only=True) as catalog:
            if not catalog.models():
                return None, f"{workdir.root} has no trained model yet"
    except Exception as e:  # a damaged or locked catalog: say so rather than crash the app
        return None, f"{workdir.root}: cannot read the catalog ({e})"
    return workdir, ""
