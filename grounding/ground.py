"""Grounding a phrase: in one image, or across the whole collection (phrase -> region search).

Collection search finds candidate images, then scores every patch of each candidate exactly (from the
stored float16 patch embeddings) and grounds the k images whose best patch matches best:

- `patch-index` (the default when `groundex index` built one): the phrase is searched in the index of
  all patch vectors (exact for small collections, IVF-PQ above 100k vectors); the images of the nearest
  `PATCH_HITS` patch vectors, best first, are the candidates (at most `RERANK_IMAGES`). `where` becomes
  an id selector inside FAISS.
- `two-stage`: the image index shortlists the `shortlist` images whose global embedding is nearest.

`benchmarks/region_search.py` compares both with exact scoring of every patch (docs/grounding.md): on the
real sample, patch IVF-PQ + re-ranking agrees 0.935 with exact top-10 in 5.5 ms, two-stage with a
shortlist of 200 only 0.49 (a small region rarely dominates the global embedding). The patch index costs
P x (code + id) bytes per image in RAM (P = 64 cells for `tiny`, 40 bytes each with PQ32).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from indexer import Searcher, Where, check_text_query
from indexer.box_head import BoxHead, load_box_head
from indexer.data import FULL_FRAME, crop_window
from indexer.index import patch_ids
from indexer.knn import search_allowed
from indexer.model_spec import load_spec, spec_patch_grid
from indexer.shards import load_embeddings
from warehouse import Catalog, InputError, Workdir, load_image, recorded_run

from .config import DEFAULT_SHORTLIST, GroundingConfig, check_rank_global, load_config
from .heatmap import ScoredBox, boxes_from_head, boxes_from_map, cell_of, in_window, points, score_maps

if TYPE_CHECKING:  # open_clip is imported only when an image must be embedded
    from indexer.models import GroundexModel

_logger = logging.getLogger(__name__)
PATCH_HITS = 1000          # patch-index: nearest patch vectors looked at
RERANK_IMAGES = 100        # patch-index: candidate images scored exactly
METHODS = ("auto", "patch-index", "two-stage")


@dataclass
class Grounding:
    """A phrase grounded in one image; coordinates in the image's pixels."""

    phrase: str
    image_id: int | None          # None for an image that is not in the catalog
    width: int
    height: int
    score: float                  # best patch cosine similarity in the image
    point: tuple[float, float]    # where the heatmap peaks (the pointing game's answer)
    boxes: list[ScoredBox]              # best first
    heatmap: np.ndarray           # (gh, gw) what the point is the maximum of: the box head's scores of the cells when
    #                               the model has one, else the raw cosine similarities
    path: str | None = None
    split: str | None = None
    captions: list[str] = field(default_factory=list)
    # the part of the image the heatmap covers (x1, y1, x2, y2); None: all of it. A "center-crop" model's
    # patch grid covers the central square only (indexer.data.crop_window)
    window: tuple[float, float, float, float] | None = None
    # region search: the image's global cosine with the phrase (images rank by score + rank_global x image_score)
    image_score: float | None = None

    def score_label(self) -> str:
        """The score as the CLI prints it: the best patch's cosine, and the image's when the search used it."""
        return f"{self.score:.3f}" + (f" (image {self.image_score:.3f})" if self.image_score is not None else "")

    @property
    def heatmap_window(self) -> tuple[float, float, float, float]:
        return self.window or (0.0, 0.0, float(self.width), float(self.height))

    def as_dict(self, heatmap: bool = False) -> dict[str, Any]:
        out = {"phrase": self.phrase, "image_id": self.image_id, "path": self.path, "split": self.split,
               "width": self.width, "height": self.height, "score": round(self.score, 4),
               "point": [round(v, 1) for v in self.point],
               "boxes": [{"x1": round(b.x1, 1), "y1": round(b.y1, 1), "x2": round(b.x2, 1), "y2": round(b.y2, 1),
                          "score": round(b.score, 4)} for b in self.boxes],
               "captions": self.captions, "window": [round(v, 1) for v in self.heatmap_window]}
        if self.image_score is not None:
            out["image_score"] = round(self.image_score, 4)
        if heatmap:
            out["heatmap"] = np.round(self.heatmap, 4).tolist()
        return out


class Grounder:
    """Loads a model (and, for collection search, its image index) once; grounds phrases on demand."""

    def __init__(self, workdir: Workdir, model_id: str | None = None, device: str | None = None,
                 config: GroundingConfig | None = None, searcher: Searcher | None = None):
        """`searcher`: an already warm one of the same model to share (its model and indexes), e.g. a server's."""
        self.workdir = workdir
        self.searcher = searcher or Searcher(workdir, model_id, device)
        self.model_id = self.searcher.model_id
        self.config = config or load_config(workdir, self.model_id)
        self.spec = load_spec(self.searcher.model_record.path)  # grid and resize without loading the model
        self._box_head: BoxHead | None | bool = False  # False: not looked for yet
        grid = spec_patch_grid(self.spec)
        if grid is None:
            raise InputError(f"model {self.model_id} ({self.spec.name}) has no patch grid: grounding needs a ViT "
                             "image tower")
        self.grid: tuple[int, int] = grid

    @property
    def model(self) -> GroundexModel:
        """The whole model, loaded when an image must be embedded (an upload, or an image not indexed)."""
        return self.searcher.model

    # -- one image --------------------------------------------------------------------------------

    def ground(self, phrase: str, image: Image.Image | str | Path | int) -> Grounding:
        """Ground `phrase` in a catalog image (by id), an image file, or a PIL image."""
        return self.ground_phrases([phrase], image)[0]

    @torch.no_grad()
    def ground_phrases(self, phrases: list[str], image: Image.Image | str | Path | int) -> list[Grounding]:
        """Ground each of `phrases` in one image (its patches are read or embedded once; the phrases are embedded in
        one batch)."""
        if not phrases:
            return []
        if isinstance(image, (int, np.integer)):
            return self.ground_in_images([(int(image), phrases)])[0]
        vectors = self._phrase_vectors(phrases)
        pil = image if isinstance(image, Image.Image) else load_image(image)
        patches = self._patches(pil)[0]
        details = {"width": pil.width, "height": pil.height, "path": None if isinstance(image, Image.Image)
                   else str(image), "split": None, "captions": []}
        return [self._grounding(phrase, vectors[phrase], patches, None, details) for phrase in phrases]

    @torch.no_grad()
    def ground_in_images(self, requests: Sequence[tuple[int, Sequence[str]]]) -> list[list[Grounding]]:
        """`ground_phrases` for many catalog images at once: for each (image id, phrases) of `requests` the
        groundings of its phrases. The catalog is opened once, the stored patches of every image read in one pass
        (an image indexed without patches is embedded now), and each distinct phrase embedded once. Memory grows
        with the number of images: callers pass a few hundred at a time. An image with no phrases is not read."""
        vectors = self._phrase_vectors([phrase for _, phrases in requests for phrase in phrases])
        image_ids = sorted({int(image_id) for image_id, phrases in requests if phrases})
        if not image_ids:  # nothing to ground (captions without a visual phrase): no catalog read
            return [[] for _ in requests]
        with self.searcher.reading() as catalog:
            details = catalog.image_details(image_ids)
            unknown = [i for i in image_ids if i not in details]
            if unknown:
                raise InputError(f"image id(s) {unknown[:5]} not in the catalog")
            patches = self._stored_patches(image_ids, catalog)
        out = []
        for image_id, phrases in requests:
            image_id = int(image_id)
            if not phrases:
                out.append([])
                continue
            if image_id not in patches:  # not indexed (or indexed without patches): embed it now
                patches[image_id] = self._patches(load_image(details[image_id]["path"]))[0]
            out.append([self._grounding(phrase, vectors[phrase], patches[image_id], image_id, details[image_id])
                        for phrase in phrases])
        return out

    def _phrase_vectors(self, phrases: Sequence[str], batch: int = 256) -> dict[str, np.ndarray]:
        """Each distinct phrase's text embedding (checked first, embedded in batches)."""
        for phrase in phrases:
            check_text_query(phrase)
        distinct = list(dict.fromkeys(phrases))
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(distinct), batch):
            part = distinct[i:i + batch]
            out.update(zip(part, self.searcher.text_encoder.encode_text(part).cpu().numpy(), strict=True))
        return out

    def _stored_patches(self, image_ids: Sequence[int], catalog: Catalog) -> dict[int, np.ndarray]:
        """The stored patch embeddings (P, D) of those of `image_ids` this model has embedded (none when it stored
        no patches)."""
        located = [i for i, _, _ in catalog.embedding_locations(self.model_id, "image", list(image_ids))]
        if not located:
            return {}
        try:
            ids, patches = load_embeddings(self.workdir, self.model_id, "patch", located, catalog)
        except FileNotFoundError:  # indexed without patches
            return {}
        return dict(zip(ids.tolist(), patches, strict=True))

    @torch.no_grad()
    def _patches(self, image: Image.Image) -> np.ndarray:
        return self.model.encode_patches(self.model.pixels_from_images([image])).float().cpu().numpy()

    @property
    def box_head(self) -> BoxHead | None:
        """The model's box head (loaded once), or None: boxes then come from the heatmap."""
        if self._box_head is False:
            self._box_head = load_box_head(self.searcher.model_record.path)
        return self._box_head

    def _grounding(self, phrase: str, vector: np.ndarray, patches: np.ndarray, image_id: int | None,
                   details: dict[str, Any]) -> Grounding:
        grid = self.grid
        cosine = (patches @ vector).reshape(grid).astype(np.float32)  # (gh, gw)
        heatmap, cells = cosine, None
        if self.box_head is not None and self.config.boxes != "heatmap":  # the head's scores pick the point
            scores, boxes = self.box_head.predict(torch.from_numpy(np.asarray(patches, np.float32))[None],
                                                  torch.from_numpy(np.asarray(vector, np.float32))[None])
            heatmap, cells = scores[0].reshape(grid).numpy(), boxes[0].numpy()
        raw, scored = score_maps(heatmap[None], self.config)
        width, height = int(details["width"]), int(details["height"])
        window = crop_window(width, height, self.spec.resize)  # the patch grid covers this part of the image
        point = points(scored)
        px, py = in_window(point, window)[0]
        if cells is not None:
            found = boxes_from_head(cells, heatmap, cosine, cell_of(point[0], grid), self.config)
        else:
            found = boxes_from_map(raw[0], scored[0], self.config)
        boxes = [b.in_window(window).scaled(width, height) for b in found]
        window_px = ScoredBox(*window, 0.0).scaled(width, height)
        return Grounding(phrase, image_id, width, height, float(cosine.max()), (px * width, py * height), boxes,
                         heatmap, details.get("path"), details.get("split"), list(details.get("captions") or []),
                         None if window == FULL_FRAME else (window_px.x1, window_px.y1, window_px.x2, window_px.y2))

    # -- the collection ---------------------------------------------------------------------------

    def search(self, phrase: str, k: int = 10, where: Where = None, shortlist: int = DEFAULT_SHORTLIST,
               method: str = "auto", rank_global: float | None = None) -> list[Grounding]:
        """The k images (matching `where`) whose best patch, plus `rank_global` (default: the config's) times the
        image's global cosine, matches `phrase` best, each grounded.

        `method`: 'patch-index', 'two-stage' (with `shortlist`), or 'auto' (the patch index when there is one)."""
        weight = check_rank_global(self.config.rank_global if rank_global is None else rank_global)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        vector = self.searcher.text_vector(phrase)
        with self.searcher.reading() as catalog:  # one catalog connection for the whole query
            if method == "auto":
                method = "patch-index" if self.searcher.has_index("patch", catalog) else "two-stage"
            if method == "two-stage" and shortlist < k:
                raise InputError(f"the shortlist ({shortlist}) must hold at least k ({k}) images")
            allowed = self.searcher.allowed_images(where, catalog)
            if allowed is not None:  # only images this model has embedded can be found and scored
                allowed = np.array([i for i, _, _ in catalog.embedding_locations(self.model_id, "image", allowed)],
                                   dtype=np.int64)
            if method == "patch-index":
                candidates = self._patch_candidates(vector, k, allowed, catalog)
                if weight > 0:  # the images nearest overall are candidates too
                    nearest, _ = self.searcher.nearest_images(vector, RERANK_IMAGES, catalog=catalog, allowed=allowed)
                    candidates = np.union1d(candidates, nearest)
            else:
                candidates, _ = self.searcher.nearest_images(vector, shortlist, catalog=catalog, allowed=allowed)
            if len(candidates) == 0:
                return []
            try:
                ids, patches = load_embeddings(self.workdir, self.model_id, "patch", candidates, catalog)  # (n, P, D)
            except FileNotFoundError:
                raise FileNotFoundError(f"model {self.model_id} has no stored patch embeddings; run `groundex "
                                        "index` with patches (the default)") from None
            best = (patches @ vector).max(axis=1)  # (n,) exact: each candidate's best patch
            overall = self._image_cosines(ids, vector, catalog) if weight > 0 else None
            rank = best if overall is None else best + weight * overall
            top = np.argsort(-rank, kind="stable")[:k]
            details = catalog.image_details(ids[top])
        return [replace(self._grounding(phrase, vector, patches[t], int(ids[t]), details[int(ids[t])]),
                        image_score=None if overall is None else float(overall[t])) for t in top]

    def _image_cosines(self, ids: np.ndarray, vector: np.ndarray, catalog: Catalog) -> np.ndarray:
        """(n,) the global embedding's cosine with `vector` of each image of `ids` (ascending, all embedded: the
        ids the patch embeddings were read for)."""
        found, vectors = load_embeddings(self.workdir, self.model_id, "image", ids, catalog)
        if found.tolist() != np.asarray(ids).tolist():
            raise RuntimeError(f"model {self.model_id}: image and patch embeddings of the candidates disagree")
        return (vectors @ vector).astype(np.float32)

    def _patch_candidates(self, vector: np.ndarray, k: int, allowed: np.ndarray | None, catalog: Catalog
                          ) -> np.ndarray:
        """Images of the patch vectors nearest to `vector`, best first (at most RERANK_IMAGES).

        The search is `indexer.knn.search_allowed` over patch ids; its exact fallback happens here, per image
        rather than per patch: when the filter leaves few images, or the index found patches of fewer than k
        of them, every allowed image is a candidate and `search` scores all their patches exactly."""
        index = self.searcher.index("patch", catalog)
        cells = catalog.patch_cells(self.model_id)
        allowed_patches = None
        if allowed is not None:  # (images this model has embedded: `search` keeps only those)
            if len(allowed) <= RERANK_IMAGES:  # few enough to score them all exactly
                return allowed
            allowed_patches = patch_ids(allowed, cells)
        found, _ = search_allowed(index, np.asarray(vector)[None, :], PATCH_HITS, allowed_patches)
        found = found[0][found[0] >= 0] // cells  # patch id -> image id, nearest first
        _, first = np.unique(found, return_index=True)
        candidates = found[np.sort(first)][:RERANK_IMAGES]
        if allowed is not None and len(candidates) < k:  # the approximate index missed some: take them all
            candidates = allowed
        return candidates

    def save(self, phrase: str, results: list[Grounding]) -> int:
        """Store a search's top boxes in the catalog's `regions` table (replacing the phrase's earlier ones)."""
        regions = [(g.image_id, g.boxes[0].x1, g.boxes[0].y1, g.boxes[0].x2, g.boxes[0].y2, g.boxes[0].score)
                   for g in results if g.image_id is not None]
        with recorded_run(self.workdir, "ground", {"phrase": phrase, "k": len(results)}, self.model_id) as (run, rec):
            with Catalog.open(self.workdir) as catalog:
                n = catalog.add_regions(self.model_id, phrase, regions, run)
            rec.update(regions=n)
        return n
