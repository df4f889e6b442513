"""What the pages show, computed without Streamlit: thumbnails, Entities box overlays, highlighted phrases,
collection statistics, the 2-D embedding map and the latest evaluation figures."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from warehouse import Catalog, InputError, Workdir, load_image

THUMB_SIDE = 192
TYPE_COLOURS = {"people": "#e6194b", "clothing": "#3cb44b", "bodyparts": "#ffe119", "animals": "#4363d8",
                "vehicles": "#f58231", "instruments": "#911eb4", "scene": "#46f0f0", "other": "#f032e6"}
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


def boxes_overlay(image: Image.Image, rows: list[Any], max_side: int = 512) -> Image.Image:
    """The image with its Entities boxes drawn (one colour per phrase type), from `Catalog.grounding_rows`."""
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side))
    draw = ImageDraw.Draw(image)
    seen = set()
    for row in rows:
        for box in row.boxes:
            if box in seen:
                continue
            seen.add(box)
            x1, y1, x2, y2 = (box[0] * image.width, box[1] * image.height, box[2] * image.width, box[3] * image.height)
            draw.rectangle([x1, y1, x2, y2], outline=type_colour(row.types), width=max(2, image.width // 160))
    return image


def highlighted_caption(text: str, phrases: list[Any]) -> str:
    """HTML of a caption with each of its phrases (GroundingRow: text and types) in its type's colour."""
    out, at, lowered = [], 0, text.lower()
    for phrase in sorted(phrases, key=lambda p: lowered.find(p.text.lower())):
        start = lowered.find(phrase.text.lower(), at)
        if start < 0:
            continue
        out.append(html.escape(text[at:start]))
        colour = type_colour(phrase.types)
        out.append(f'<span style="border-bottom: 3px solid {colour}" title="{html.escape("/".join(phrase.types))}">'
                   f"{html.escape(text[start:start + len(phrase.text)])}</span>")
        at = start + len(phrase.text)
    return "".join(out) + html.escape(text[at:])


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
