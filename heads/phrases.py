"""Grounded captions: a caption's phrases found by the chunker (heads.chunker) and located by the grounding.

- `train_workdir_chunker` (`groundex chunk train`) learns a chunker from the train split's phrase markup, scores it
  and the rule baseline on val, and stores it as an artefact.
- `ground_caption` chunks one caption (generated, human or typed) and grounds each visual phrase in its image with
  a `Grounder` (the box head's best box); `notvisual` phrases get no box.
- `evaluate_chunks` (`groundex eval chunks`) measures, on a split's human captions: exact-match span F1 and type
  accuracy of the chunker against the rule baseline, then, with a model, the box accuracy at IoU 0.5 (any-box, as
  `eval grounding`) of the matched chunks grounded through the same path, beside the annotated phrases grounded
  the same way, and end to end (an annotated phrase that no chunk matches counts as a miss).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from warehouse import Catalog, GeneratedPhrase, InputError, Workdir, recorded_run

from .chunker import (
    Chunk,
    Chunker,
    ChunkerConfig,
    RuleChunker,
    marked_captions,
    matched_chunks,
    open_chunker,
    span_scores,
    train_chunker,
)

if TYPE_CHECKING:
    from grounding.ground import Grounder

_logger = logging.getLogger(__name__)
UNGROUNDED_TYPES = ("notvisual",)  # phrases of these types get no box


def train_workdir_chunker(workdir: Workdir, config: ChunkerConfig | None = None, label: str | None = None,
                          progress: bool = True) -> dict[str, Any]:
    """Train a chunker on the train split's annotated phrases, score it and the rule baseline on val, store it."""
    config = config or ChunkerConfig()
    with Catalog.open(workdir, read_only=True) as catalog:
        train, val = marked_captions(catalog, "train"), marked_captions(catalog, "val")
    with recorded_run(workdir, "chunk train", asdict(config)) as (run_id, result):
        bar = tqdm(total=None, desc="chunker", unit="step", disable=not progress, leave=False)

        def step(done: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        started = time.perf_counter()
        chunker, report = train_chunker(train, val, config, step)
        bar.close()
        seconds = round(time.perf_counter() - started, 1)
        rule = span_scores(RuleChunker.fit(train).chunk_words([c.words for c in val]), val) if val else {}
        metrics = {"val": report["val"], "rule_val": rule, "train_captions": len(train), "val_captions": len(val)}
        artefact = chunker.save(workdir, metrics, run_id, label)
        result.update({"chunker_id": artefact.id, "seconds": seconds, **report, "rule_val": rule})
    return result


def ground_caption(grounder: Grounder, chunker: Chunker, text: str, image: Image.Image | str | Path | int,
                   chunks: Sequence[Chunk] | None = None) -> list[GeneratedPhrase]:
    """The caption's phrases with their types, each visual one with the grounding's best box in `image`."""
    chunks = chunker.chunk(text) if chunks is None else chunks
    visual = _visual(chunks)
    return _phrases(grounder, chunker, chunks, grounder.ground_phrases([c.text for c in visual], image))


def ground_captions(grounder: Grounder, chunker: Chunker, image_ids: Sequence[int], captions: Sequence[str],
                    progress: bool = True, batch: int = 256) -> list[list[GeneratedPhrase]]:
    """`ground_caption` for catalog images: chunked in one batch, grounded `batch` captions at a time (one catalog
    read and one pass over the stored patches per batch)."""
    chunked = chunker.chunk_many(list(captions))
    out: list[list[GeneratedPhrase]] = []
    with tqdm(total=len(chunked), desc="grounding", unit="caption", disable=not progress, leave=False) as bar:
        for i in range(0, len(chunked), batch):
            part = list(zip(image_ids[i:i + batch], chunked[i:i + batch], strict=True))
            groundings = grounder.ground_in_images([(int(image_id), [c.text for c in _visual(chunks)])
                                                    for image_id, chunks in part])
            out.extend(_phrases(grounder, chunker, chunks, found)
                       for (_, chunks), found in zip(part, groundings, strict=True))
            bar.update(len(part))
    return out


def _visual(chunks: Sequence[Chunk]) -> list[Chunk]:
    """The chunks to ground: not of an ungrounded type, with some text."""
    return [c for c in chunks if c.type not in UNGROUNDED_TYPES and c.text.strip()]


def _phrases(grounder: Grounder, chunker: Chunker, chunks: Sequence[Chunk], groundings) -> list[GeneratedPhrase]:
    """Each chunk as a stored phrase, with the best box of its grounding (`groundings`: one per `_visual` chunk)."""
    grounded = dict(zip(_visual(chunks), groundings, strict=True))
    out = []
    for chunk in chunks:
        g = grounded.get(chunk)
        box = g.boxes[0] if g is not None and g.boxes else None
        out.append(GeneratedPhrase((chunk.type,), chunk.text, chunk.start, chunker.id or "",
                                   grounder.model_id if box is not None else None,
                                   None if box is None else (box.x1, box.y1, box.x2, box.y2),
                                   None if box is None else float(box.score)))
    return out


def evaluate_chunks(workdir: Workdir, split: str, chunker_ref: str | None = None, model_id: str | None = None,
                    ground: bool = True, limit: int | None = None, device: str | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Chunk F1 and type accuracy (chunker and rule baseline) on `split`'s human captions; with `ground`, box
    accuracy of the grounded chunks (see the module's docstring)."""
    if split == "train":
        raise InputError("the chunker learns on train: evaluate on val or test")
    chunker = open_chunker(workdir, chunker_ref)
    with Catalog.open(workdir, read_only=True) as catalog:
        train, gold = marked_captions(catalog, "train"), marked_captions(catalog, split)
    if limit is not None:
        gold = gold[:limit]
    if not gold:
        raise InputError(f"split {split!r} has no captions with phrase markup to evaluate the chunker on")
    predicted = chunker.chunk_words([c.words for c in gold])
    result: dict[str, Any] = {"split": split, "chunker_id": chunker.id, "captions": len(gold),
                              "chunker": span_scores(predicted, gold),
                              "rule": span_scores(RuleChunker.fit(train).chunk_words([c.words for c in gold]), gold)}
    if ground:
        result["grounding"] = _grounded_chunks(workdir, model_id, device, gold, predicted, progress)
    with recorded_run(workdir, "eval chunks", {"split": split, "ground": ground, "limit": limit},
                      result.get("grounding", {}).get("model_id")) as (_, record):
        record.update(result)
    return result


def _grounded_chunks(workdir: Workdir, model_id: str | None, device: str | None, gold, predicted,
                     progress: bool, batch: int = 256) -> dict[str, Any]:
    from grounding import iou
    from grounding.ground import Grounder

    grounder = Grounder(workdir, model_id, device)
    with Catalog.open(workdir, read_only=True) as catalog:
        image_ids = sorted({c.image_id for c in gold})
        rows = {r.phrase_id: r for r in catalog.grounding_rows(image_ids=image_ids) if r.boxes}
        sizes = {i: (d["width"], d["height"]) for i, d in catalog.image_details(image_ids).items()}
    matched = {(n, k): chunk for n, k, chunk in matched_chunks(predicted, gold)}
    by_image: dict[int, list[tuple[str, tuple[int, int], bool]]] = {}
    for n, caption in enumerate(gold):
        for k, phrase_id in enumerate(caption.phrase_ids):
            if phrase_id not in rows:
                continue  # no box (notvisual, or none drawn): not scored, as in `eval grounding`
            chunk = matched.get((n, k))
            # the annotated words as `eval grounding` grounds them (edge punctuation kept): the chunk's own text
            # differs at most by that punctuation, so the two columns show what chunking changes
            annotated = " ".join(caption.words[caption.spans[k][0]:caption.spans[k][1]])
            by_image.setdefault(caption.image_id, []).append((annotated, (n, k), False))
            if chunk is not None:
                by_image[caption.image_id].append((chunk.text, (n, k), True))
    hits: dict[bool, dict[tuple[int, int], bool]] = {False: {}, True: {}}
    images = sorted(by_image.items())
    for i in tqdm(range(0, len(images), batch), desc="grounding", unit="batch", disable=not progress, leave=False):
        part = [(image_id, list(dict.fromkeys(t for t, _, _ in items)))  # each distinct text grounded once
                for image_id, items in images[i:i + batch]]
        for (image_id, texts), found in zip(part, grounder.ground_in_images(part), strict=True):
            width, height = sizes[image_id]
            tops = {text: (g.boxes[0] if g.boxes else None) for text, g in zip(texts, found, strict=True)}
            for text, key, is_chunk in by_image[image_id]:
                row = rows[gold[key[0]].phrase_ids[key[1]]]
                truth = np.array([(x1 * width, y1 * height, x2 * width, y2 * height) for x1, y1, x2, y2 in row.boxes])
                top = tops[text]
                hits[is_chunk][key] = bool(top is not None
                                           and iou((top.x1, top.y1, top.x2, top.y2), truth).max() >= 0.5)
    annotated, chunks = hits[False], hits[True]

    def percent(values) -> float:
        values = list(values)
        return round(100 * float(np.mean(values)), 1) if values else 0.0

    return {"model_id": grounder.model_id, "phrases_with_boxes": len(annotated), "matched_with_boxes": len(chunks),
            "box_acc@0.5_matched_chunks": percent(chunks.values()),
            "box_acc@0.5_same_annotated_phrases": percent(annotated[key] for key in chunks),
            "box_acc@0.5_annotated_phrases": percent(annotated.values()),
            "box_acc@0.5_end_to_end": percent(chunks.get(key, False) for key in annotated)}
