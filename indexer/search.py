"""Search a workdir: text -> image, image -> image, image -> text, with catalog filters.

A `where` condition (SQL over the `images` columns, e.g. "split = 'val'", or a `warehouse.Condition` with
bound values) is applied inside the FAISS search with an id selector, so k hits come back whenever at least
k images match; if an approximate index finds fewer (a very selective filter on IVF), the search falls back
to exact scoring of the matching items' stored embeddings (the policy of `indexer.knn.search_allowed`). Hits
carry the catalog's metadata (path, split, captions).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch
from PIL import Image

from warehouse import Catalog, Condition, InputError, SharedReader, Workdir, load_image

from .index import load_index
from .knn import search_allowed
from .model_spec import load_spec
from .shards import load_embeddings
from .text_tower import TextTower, load_text_tower

if TYPE_CHECKING:  # open_clip is imported only when a query needs the whole model
    from .models import GroundexModel

_logger = logging.getLogger(__name__)
MAX_QUERY_CHARS = 2000

# A search's catalog filter: an SQL condition over the images' columns (text or a `Condition` with bound values),
# or the ids of the images it allows, resolved already (a server resolves filters outside its model lock).
Where = str | Condition | np.ndarray | None


@dataclass
class Hit:
    id: int                    # image id, or caption id for image -> text
    score: float               # cosine similarity
    image_id: int
    path: str
    split: str | None
    captions: list[str] = field(default_factory=list)  # the image's human captions
    text: str | None = None    # the caption, for image -> text hits

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_text_query(query: str) -> None:
    """Refuse an empty text query, or one longer than `MAX_QUERY_CHARS`."""
    if not isinstance(query, str) or not query.strip():
        raise InputError("the text query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise InputError(f"the text query is {len(query):,} characters; at most {MAX_QUERY_CHARS:,} are used")


class Searcher:
    """Loads a model and its indexes once; each query reads the catalog for filters and metadata."""

    def __init__(self, workdir: Workdir, model_id: str | None = None, device: str | None = None,
                 catalogs: SharedReader | None = None):
        """`catalogs`: where queries read the catalog from (a long-running process shares one connection); by
        default each query opens the catalog and closes it again."""
        self.workdir = workdir
        self.catalogs = catalogs
        with Catalog.open(workdir, read_only=True) as catalog:
            self.model_record = catalog.model(model_id)
        self.model_id: str = self.model_record.id
        self._device = device
        self._model: GroundexModel | None = None
        self._text: TextTower | GroundexModel | None = None
        self._width: int | None = None  # the embedding width, read from the checkpoint's config when needed
        self._indexes: dict[str, tuple[int, faiss.Index]] = {}

    @property
    def model(self) -> GroundexModel:
        """The whole model (image and text towers), loaded on first use."""
        if self._model is None:
            from .models import load_checkpoint

            self._model = load_checkpoint(self.model_record.path, self._device)
        return self._model

    @property
    def text_encoder(self) -> TextTower | GroundexModel:
        """What encodes text queries: the whole model once it is loaded, else the checkpoint's text tower run
        without open_clip where `indexer.text_tower` can (a text query then never imports open_clip)."""
        if self._model is not None:
            return self._model
        if self._text is None:
            self._text = load_text_tower(self.model_record.path, self._device) or self.model
        return self._text

    @contextmanager
    def reading(self, catalog: Catalog | None = None) -> Iterator[Catalog]:
        """A read-only catalog for one query: `catalog` when given, else one from the shared reader, else one
        opened (and closed) here. Opening costs ~20 ms, so a query takes one and passes it down; none is held
        between queries except by a `SharedReader`, which lets go when a writer asks."""
        if catalog is not None:
            yield catalog
        elif self.catalogs is not None:
            with self.catalogs.reading() as shared:
                yield shared
        else:
            with Catalog.open(self.workdir, read_only=True) as opened:
                yield opened

    def index(self, kind: str, catalog: Catalog | None = None) -> faiss.Index:
        """The current FAISS index of `kind` ('image', 'caption', 'patch') for this model, reloaded when a
        newer version was built."""
        with self.reading(catalog) as c:
            current = c.current_index(self.model_id, kind)
        if current is None:
            raise FileNotFoundError(f"no {kind} index for model {self.model_id}: run `groundex index`")
        cached = self._indexes.get(kind)
        if cached is None or cached[0] != current["version"]:
            self._indexes[kind] = (current["version"], load_index(current["path"]))
        return self._indexes[kind][1]

    def loaded_indexes(self) -> dict[str, int]:
        """The version of each index kind this searcher holds in memory now (what it answers from)."""
        return {kind: version for kind, (version, _) in sorted(self._indexes.items())}

    # -- query vectors ----------------------------------------------------------------------------

    @torch.no_grad()
    def text_vector(self, query: str) -> np.ndarray:
        check_text_query(query)
        return self.text_encoder.encode_text([query]).cpu().numpy()[0]

    @torch.no_grad()
    def image_vector(self, image: Image.Image | str | Path | int) -> np.ndarray:
        """A PIL image, an image file, or a catalog image id (whose stored embedding is used)."""
        if isinstance(image, (int, np.integer)):
            with self.reading() as catalog:
                _, vectors = load_embeddings(self.workdir, self.model_id, "image", [int(image)], catalog)
            return vectors[0]
        if not isinstance(image, Image.Image):
            image = load_image(image)
        pixels = self.model.pixels_from_images([image])
        return self.model.encode_image(pixels).cpu().numpy()[0]

    # -- searches ---------------------------------------------------------------------------------

    def text_to_image(self, query: str, k: int = 10, where: Where = None) -> list[Hit]:
        return self.vector_to_image(self.text_vector(query), k, where)

    def image_to_image(self, image: Image.Image | str | Path | int, k: int = 10, where: Where = None,
                       exclude_self: bool = True) -> list[Hit]:
        exclude = int(image) if isinstance(image, (int, np.integer)) and exclude_self else None
        hits = self.vector_to_image(self.image_vector(image), k + (exclude is not None), where)
        return [h for h in hits if h.id != exclude][:k]

    def image_to_text(self, image: Image.Image | str | Path | int, k: int = 10, where: Where = None
                      ) -> list[Hit]:
        return self.vector_to_text(self.image_vector(image), k, where)

    def vector_to_text(self, vector: np.ndarray, k: int = 10, where: Where = None) -> list[Hit]:
        """The k captions (of images matching `where`) nearest to an embedding of this model's space."""
        vector = self._query_vector(vector)
        allowed = None
        with self.reading() as catalog:
            images = self.allowed_images(where, catalog)
            if images is not None:
                allowed = np.array(catalog.caption_ids_of_images(images.tolist()), dtype=np.int64)
            ids, scores = self._search("caption", vector, k, allowed, catalog)
            captions = catalog.caption_details(ids)
            images = catalog.image_details({c["image_id"] for c in captions.values()})
        hits = []
        for i, s in zip(ids.tolist(), scores.tolist(), strict=True):
            c = captions[i]
            img = images[c["image_id"]]
            hits.append(Hit(i, s, c["image_id"], img["path"], img["split"], img["captions"], c["text"]))
        return hits

    def has_index(self, kind: str, catalog: Catalog | None = None) -> bool:
        with self.reading(catalog) as c:
            return c.current_index(self.model_id, kind) is not None

    def allowed_images(self, where: Where, catalog: Catalog | None = None) -> np.ndarray | None:
        """Ids of the images matching `where` (None: no filter; an array: these ids, filtered already)."""
        if isinstance(where, np.ndarray):
            return where.astype(np.int64, copy=False)
        if not where:
            return None
        with self.reading(catalog) as c:
            return np.array(c.image_ids_where(where), dtype=np.int64)

    def nearest_images(self, vector: np.ndarray, k: int, where: Where = None, catalog: Catalog | None = None,
                       allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the k images nearest to an embedding, among those matching `where` (or, instead, among
        `allowed`: the ids a `where` already selected)."""
        if where is not None and allowed is not None:
            raise ValueError("give `where` or `allowed`, not both")
        with self.reading(catalog) as c:
            return self._search("image", vector, k, allowed if where is None else self.allowed_images(where, c), c)

    def vector_to_image(self, vector: np.ndarray, k: int = 10, where: Where = None) -> list[Hit]:
        """The k images (matching `where`) nearest to an embedding of this model's space (normalized here)."""
        vector = self._query_vector(vector)
        with self.reading() as catalog:
            ids, scores = self.nearest_images(vector, k, where, catalog)
            details = catalog.image_details(ids)
        return [Hit(i, s, i, details[i]["path"], details[i]["split"], details[i]["captions"])
                for i, s in zip(ids.tolist(), scores.tolist(), strict=True)]

    def _query_vector(self, vector: np.ndarray) -> np.ndarray:
        """A query embedding checked and L2-normalized: one finite vector of the model's width."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self._width is None:
            self._width = int(load_spec(self.model_record.path).config["embed_dim"])
        width = self._width
        if vector.shape != (width,) or not np.isfinite(vector).all() or not np.linalg.norm(vector) > 0:
            raise InputError(f"an embedding query must be {width} finite numbers, not all zero, for model "
                             f"{self.model_id}")
        return vector / np.linalg.norm(vector)

    def _search(self, kind: str, vector: np.ndarray, k: int, allowed: np.ndarray | None, catalog: Catalog
                ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) in the `kind` index, restricted to `allowed` ids when given."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        index = self.index(kind, catalog)

        def stored(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # PQ re-ranking and the exact fallback
            return load_embeddings(self.workdir, self.model_id, kind, ids, catalog)

        ids, scores = search_allowed(index, np.asarray(vector)[None, :], k, allowed, vectors=stored, rerank=True)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

