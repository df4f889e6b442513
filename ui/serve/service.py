"""What `groundex serve` answers, without HTTP: one warm `Searcher` (model, indexes) over a workdir, and the
catalog's metadata. The HTTP layer (`ui.serve.app`) only parses requests and shapes responses.

Model calls are serialized by one lock: torch already uses every core for one forward pass, and the text tower and
the indexes are shared. Catalog filters are resolved before taking it (a slow filter holds up no other request),
under a time limit. Indexes are reloaded when `groundex index` records a newer version (`Searcher.index`), so a
build running in the same workdir never breaks a query: readers follow the catalog's current version, which a
build switches only once its files are complete. The catalog is read through one shared connection
(`warehouse.SharedReader`), which lets go whenever a writer (`ingest`, `index`, `tag`) asks for the file.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from indexer.search import Hit, Searcher
from warehouse import (
    DEFAULT_MAX_PIXELS,
    ArtefactError,
    Condition,
    ImageError,
    InputError,
    SharedReader,
    Workdir,
    load_image,
    load_image_bytes,
)

__all__ = ["decode_image", "Filters", "ServerFault", "Service", "THUMB_SIDE"]

THUMB_SIDE = 256
FILTER_TIME_LIMIT_S = 5.0  # a request's catalog filter is stopped past this (the app's console has the same)
HIDDEN_COLUMNS = ("path", "sha256")


class ServerFault(Exception):
    """Something on the server's side (a catalog image's file unreadable): a 500 whose details stay in the log."""


def decode_image(data: bytes | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An uploaded image (bytes, or base64 text with or without a data: prefix), at most `max_pixels`."""
    if isinstance(data, str):
        text = data.split(",", 1)[1] if data.startswith("data:") else data
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("image: not valid base64") from None
    if not data:
        raise InputError("image: empty")
    return load_image_bytes(data, max_pixels)


@dataclass
class Filters:
    """The catalog filters a query may carry: a split, tags every hit must have, and an SQL condition over the
    images' columns (the same locked-down condition as `--where`)."""

    split: str | None = None
    tags: tuple[str, ...] = ()
    where: str | None = None

    def condition(self) -> Condition | None:
        parts, params = [], []
        if self.split:
            parts, params = [*parts, "split = ?"], [*params, self.split]
        if self.tags:
            parts, params = [*parts, "list_has_all(tags, ?)"], [*params, tuple(self.tags)]
        if self.where:
            parts.append(f"({self.where})")
        # a client never learns where the files are: `path` (and the file hash) are not columns to it
        return Condition(" AND ".join(parts), tuple(params), hidden=HIDDEN_COLUMNS) if parts else None


class Service:
    """One workdir and model, warm: search by text, image, catalog image or raw embedding; image metadata."""

    def __init__(self, workdir: Workdir, model: str | None = None, device: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, filter_time_limit_s: float = FILTER_TIME_LIMIT_S):
        self.workdir = workdir
        self.catalogs = SharedReader(workdir)
        self.searcher = Searcher(workdir, model, device, catalogs=self.catalogs)
        self.filter_time_limit_s = filter_time_limit_s
        self.model_id = self.searcher.model_id
        self.max_pixels = max_pixels
        self.device = device
        self.lock = threading.Lock()
        self._grounder: Any = None
        self._taggers: dict[str, Any] = {}   # method -> (Tagger, TagData) of the fitted ones loaded so far
        self._captioner: Any = None

    def warm_up(self) -> None:
        """Load the text encoder and the image index now, so the first request does not pay for them."""
        with self.lock:
            self.searcher.text_vector("warm up")
            self.searcher.index("image")

    # -- queries ------------------------------------------------------------------------------------------------

    def query_vector(self, text: str | None = None, image: Image.Image | None = None, image_id: int | None = None,
                     embedding: list[float] | None = None) -> tuple[np.ndarray, int | None]:
        """The query's embedding from exactly one input, and the catalog image to leave out of its own results."""
        given = [x is not None for x in (text, image, image_id, embedding)]
        if sum(given) != 1:
            raise InputError("give exactly one of: text, image, image_id, embedding")
        with self.lock:
            if text is not None:
                return self.searcher.text_vector(text), None
            if image is not None:
                return self.searcher.image_vector(image), None
            if image_id is not None:
                try:
                    return self.searcher.image_vector(int(image_id)), int(image_id)
                except KeyError:
                    raise InputError(f"image id {image_id} is not in the catalog or has no embedding") from None
        return np.asarray(embedding, dtype=np.float32), None

    def search(self, vector: np.ndarray, k: int, modality: str = "image", filters: Filters | None = None,
               exclude: int | None = None) -> list[Hit]:
        """The k nearest images (modality "image") or captions ("text") matching the filters."""
        if modality not in ("image", "text"):
            raise InputError(f"modality must be image or text, got {modality!r}")
        allowed = self.allowed(filters)
        with self.lock:
            if modality == "text":
                return self.searcher.vector_to_text(vector, k, allowed)
            hits = self.searcher.vector_to_image(vector, k + (exclude is not None), allowed)
        return [h for h in hits if h.id != exclude][:k]

    def ground(self, phrase: str, image: Image.Image | None = None, image_id: int | None = None, k: int = 10,
               filters: Filters | None = None) -> list[dict[str, Any]]:
        """`phrase` grounded in one image (an upload or a catalog image: one result), or across the collection (the
        k best regions of images matching the filters), each with its point, boxes and patch heatmap."""
        if image is not None and image_id is not None:
            raise InputError("give an image or an image_id, not both (or neither: search the collection)")
        allowed = self.allowed(filters) if image is None and image_id is None else None
        with self.lock:
            if self._grounder is None:
                from grounding import Grounder

                self._grounder = Grounder(self.workdir, searcher=self.searcher)  # one warm model and set of indexes
            if image is not None or image_id is not None:
                try:
                    grounded = [self._grounder.ground(phrase, image if image is not None else int(image_id))]
                except ImageError as e:
                    if image is not None:
                        raise
                    raise ServerFault(f"image {image_id}: {e}") from None  # the catalog's file, not the client's
            else:
                grounded = self._grounder.search(phrase, k, allowed)
        return [{k: v for k, v in g.as_dict(heatmap=True).items() if k != "path"} for g in grounded]  # no file paths

    def tags(self, image: Image.Image | None = None, image_id: int | None = None) -> dict[str, list[dict[str, Any]]]:
        """Each fitted tagger's tags (at or above its threshold, best first) for an upload or a catalog image."""
        from heads.config import METHODS
        from heads.tagging import load_tagger

        vector, ids = self._image_query(image, image_id)
        out = {}
        with self.lock:
            for method in METHODS:
                if method not in self._taggers:
                    try:  # not cached when absent: a tagger fitted while the server runs is found next time
                        self._taggers[method] = load_tagger(self.workdir, method, self.model_id)
                    except ArtefactError:
                        continue
                tagger, data = self._taggers[method]
                out[method] = [{"keyword": w, "score": round(s, 4)} for w, s in tagger.predict(data, vector, ids)[0]]
        if not out:
            raise InputError("no tagger is fitted for this model yet: run `groundex tag`")
        return out

    def caption(self, image: Image.Image | None = None, image_id: int | None = None, memory: str = "train"
                ) -> dict[str, Any]:
        """The newest captioner's caption of an upload or a catalog image, with the captions it retrieved from the
        caption memory `memory` ('train', 'SPLIT,SPLIT' or 'all'; read once per server and memory)."""
        self._image_query(image, image_id)  # checks that exactly one is given
        with self.lock:
            if self._captioner is None:
                from heads.captioning import Captioner

                self._captioner = Captioner(self.workdir, device=self.device)
            if image_id is not None:
                captions, retrieved = self._captioner.caption_images(np.array([int(image_id)], dtype=np.int64),
                                                                     memory=memory)
                caption, retrieved = captions[0], retrieved[0]
            else:
                caption, retrieved = self._captioner.caption_image(image, memory=memory)
        return {"captioner_id": self._captioner.id, "caption": caption, "retrieved": retrieved, "memory": memory}

    def _image_query(self, image: Image.Image | None, image_id: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(1, D) the image's embedding and (1,) its catalog id (None for an upload)."""
        if (image is None) == (image_id is None):
            raise InputError("give exactly one of: image, image_id")
        vector, _ = self.query_vector(image=image, image_id=image_id)
        return vector[None, :], None if image_id is None else np.array([int(image_id)], dtype=np.int64)

    # -- the catalog --------------------------------------------------------------------------------------------

    def allowed(self, filters: Filters | None) -> np.ndarray | None:
        """The ids of the images the filters allow (None: no filter), found within the filter time limit."""
        filters = filters or Filters()
        condition = filters.condition()
        if condition is None:
            return None
        with self.catalogs.reading() as catalog:
            if filters.where:  # the client's own text, checked alone: no placeholders of its own
                catalog.check_client_filter(filters.where, HIDDEN_COLUMNS)
            return np.array(catalog.image_ids_where(condition, self.filter_time_limit_s), dtype=np.int64)

    def models(self) -> list[dict[str, Any]]:
        with self.catalogs.reading() as catalog:
            return [{"id": m.id, "label": m.label, "name": m.info.get("name"), "source": m.source,
                     "created_at": str(m.created_at), "indexes": catalog.index_kinds(m.id),
                     "serving": m.id == self.model_id} for m in catalog.models()]

    def image(self, image_id: int) -> dict[str, Any]:
        """An image's metadata, human and generated captions, phrases with boxes, and tags."""
        found = self.images([image_id])
        if image_id not in found:
            raise KeyError(image_id)
        return found[image_id]

    def images(self, image_ids: list[int]) -> dict[int, dict[str, Any]]:
        """`image` for several ids at once (one query per table), by id; ids not in the catalog are left out."""
        with self.catalogs.reading() as catalog:
            details = catalog.image_details(image_ids)
            found = sorted(details)
            phrases: dict[int, list[Any]] = {i: [] for i in found}
            for row in catalog.grounding_rows(image_ids=found) if found else []:
                phrases[row.image_id].append(row)
            generated = catalog.generated_captions(found) if found else {}
            tags = catalog.tags_of(found) if found else {}
        return {i: {"id": i, "split": d["split"], "width": d["width"], "height": d["height"], "dataset": d["dataset"],
                    "key": d["key"], "captions": d["captions"], "generated_captions": generated.get(i, []),
                    "phrases": [{"text": r.text, "types": list(r.types), "boxes": [list(b) for b in r.boxes]}
                                for r in phrases[i]],
                    "tags": tags.get(i, [])} for i, d in details.items()}

    def image_path(self, image_id: int) -> str:
        with self.catalogs.reading() as catalog:
            details = catalog.image_details([image_id]).get(image_id)
        if details is None:
            raise KeyError(image_id)
        return details["path"]

    def thumbnail(self, image_id: int, side: int = THUMB_SIDE) -> bytes:
        path = self.image_path(image_id)
        try:
            image = load_image(path)
        except ImageError as e:
            raise ServerFault(f"image {image_id}: {e}") from None
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def close(self) -> None:
        """Lets go of the catalog (the shared connection), e.g. when the server shuts down."""
        self.catalogs.close()
