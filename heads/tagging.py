"""Fit, evaluate and apply the keyword taggers on a workdir, for one embedding model.

Every tagger is fitted on the train split and its free choices (kNN's K, the threshold) are made on
val, so `groundex eval tags --split val` reports figures with that choice's (small) optimism and
`--split test` none. The vocabulary comes from the training captions (heads.vocabulary); an image's
labels are the words its human captions mention.

    knn       similarity-weighted votes of the K nearest training images (FAISS, own image left out)
    probe     linear probe on the image embedding
    zeroshot  "a photo of a {tag}" prompts against the image embedding; no labels used but the threshold
    fusion    linear probe on [image embedding ; caption embedding]: the mean embedding of the image's own
              human captions where it has some, else of its nearest training images' captions. The labels
              of a captioned image come from the same captions, so on captioned images fusion is
              **caption-assisted** (keyword extraction, not vision): the evaluation's `fusion` hides an
              image's own captions (the figure comparable with the other taggers, and what an uncaptioned
              image gets), and `fusion_caption_assisted` reads them, named as such.

Thresholds: one global threshold per tagger (micro-F1 on val); with `TaggingConfig.per_tag_thresholds` (off by
default), each tag with at least 5 positive val images gets its own (its F1 on val). The evaluation always
scores per-tag thresholds too, on val cross-fitted: chosen on one half of val, scored on the other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from indexer.devices import default_device
from indexer.index import load_index
from indexer.shards import load_embeddings
from indexer.text_tower import load_text_tower
from warehouse import Artefact, ArtefactStore, Catalog, InputError, Workdir, atomic_write_json, recorded_run

from .config import METHODS, TaggingConfig
from .neighbours import training_neighbours
from .tag_methods import (
    KNN_KS,
    MIN_TAG_POSITIVES,
    LinearProbe,
    best_threshold,
    cross_fitted_predictions,
    f1_scores,
    knn_scores,
    per_tag_thresholds,
    prior_scores,
    prompts,
    tag_metrics,
    train_probe,
    zeroshot_scores,
)
from .vocabulary import Vocabulary, mine_vocabulary

_logger = logging.getLogger(__name__)
@dataclass
class Labelled:
    """The captioned images of a split: ids (N,), labels (N, V) bool, image vectors (N, D)."""

    image_ids: np.ndarray
    labels: np.ndarray
    vectors: np.ndarray


class TagData:
    """What the taggers read of a workdir for one model: its FAISS image index, the training gallery
    (captioned train images with labels and vectors) and the keyword vocabulary (mined from the training
    captions, or the one saved when the taggers were fitted)."""

    def __init__(self, workdir: Workdir, model_id: str | None = None, config: TaggingConfig | None = None,
                 vocabulary: Vocabulary | None = None, device: str | torch.device | None = None):
        self.workdir, self.config = workdir, config or TaggingConfig()
        self.device = torch.device(device) if device is not None else default_device()
        with Catalog.open(workdir, read_only=True) as catalog:
            self.model_record = catalog.model(model_id)
            self.model_id = self.model_record.id
            current = catalog.current_index(self.model_id, "image")
            if current is None:
                raise FileNotFoundError(f"no image index for model {self.model_id}: run `groundex index` first")
            if vocabulary is None and self.config.keywords is not None:
                vocabulary = Vocabulary(list(self.config.keywords), [0] * len(self.config.keywords), 0, "given")
            if vocabulary is None:
                train_captions = [(i, t) for _, i, t in catalog.caption_rows("train")]
                phrases = [(r.image_id, r.text) for r in catalog.grounding_rows("train") if r.entity_id != 0]
                vocabulary = mine_vocabulary(train_captions, phrases, self.config.vocabulary)
        if len(vocabulary) == 0:
            raise InputError(f"no keyword is mentioned for at least {self.config.vocabulary.min_images} training "
                             "images: lower --min-images")
        self.vocabulary = vocabulary
        self.index = load_index(current["path"])
        self.train = self.split("train")
        self._own_train_captions: np.ndarray | None = None
        self._reference: np.ndarray | None = None

    @property
    def reference_vectors(self) -> np.ndarray:
        """Image vectors that standardize zero-shot scores: the training images, or (a collection without
        captions) up to 10,000 of the model's embedded images."""
        if len(self.train.image_ids):
            return self.train.vectors
        if self._reference is None:
            with Catalog.open(self.workdir, read_only=True) as catalog:
                ids = np.array(catalog.embedded_ids(self.model_id, "image"), dtype=np.int64)
            keep = np.random.default_rng(0).permutation(len(ids))[:10_000]
            self._reference = self.image_vectors(np.sort(ids[keep]))[1]
        return self._reference

    def split(self, name: str) -> Labelled:
        """The split's captioned images with labels and stored image embeddings."""
        with Catalog.open(self.workdir, read_only=True) as catalog:
            rows = catalog.caption_rows(name)
        texts: dict[int, list[str]] = {}
        for _, image_id, text in rows:
            texts.setdefault(image_id, []).append(text)
        image_ids, labels = self.vocabulary.labels(texts)
        _, vectors = self.image_vectors(image_ids)
        return Labelled(image_ids, labels, vectors)

    def image_vectors(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(image_ids) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.index.d), dtype=np.float32)
        return load_embeddings(self.workdir, self.model_id, "image", image_ids)

    def neighbours(self, vectors: np.ndarray, image_ids: np.ndarray | None, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest training images of each vector (rows into `self.train`), never the image itself."""
        return training_neighbours(self.index, vectors, self.train.image_ids, k, exclude_ids=image_ids,
                                   gallery_vectors=self.train.vectors)

    def own_caption_vectors(self, image_ids: np.ndarray) -> np.ndarray:
        """(N, D) the normalized mean embedding of each image's human captions (zeros where it has none)."""
        with Catalog.open(self.workdir, read_only=True) as catalog:
            rows = catalog.caption_rows(image_ids=image_ids.tolist())
        out = np.zeros((len(image_ids), self.index.d), dtype=np.float32)
        if not rows:
            return out
        caption_ids, vectors = load_embeddings(self.workdir, self.model_id, "caption", [r[0] for r in rows])
        image_of = {c: i for c, i, _ in rows}
        position = {int(i): p for p, i in enumerate(image_ids.tolist())}
        np.add.at(out, [position[image_of[int(c)]] for c in caption_ids], vectors)
        return _normalized(out)

    def retrieved_caption_vectors(self, vectors: np.ndarray, image_ids: np.ndarray | None) -> np.ndarray:
        """(N, D) the normalized mean caption embedding of each image's nearest training images (not its own)."""
        if self._own_train_captions is None:
            self._own_train_captions = self.own_caption_vectors(self.train.image_ids)
        rows, _ = self.neighbours(vectors, image_ids, self.config.caption_neighbours)
        gathered = self._own_train_captions[np.maximum(rows, 0)] * (rows >= 0)[..., None]  # (N, k, D)
        return _normalized(gathered.sum(axis=1))

    def prompt_vectors(self) -> np.ndarray:
        """(V, D) the text embedding of each keyword's zero-shot prompt, encoded on `self.device`."""
        return encode_texts(self.model_record.path, prompts(self.vocabulary.words, self.config.prompt), self.device)

    def has_captions(self, image_ids: np.ndarray | None, n: int) -> np.ndarray:
        """(N,) bool: which images have human captions."""
        if image_ids is None:
            return np.zeros(n, dtype=bool)
        with Catalog.open(self.workdir, read_only=True) as catalog:
            captioned = {i for _, i, _ in catalog.caption_rows(image_ids=image_ids.tolist())}
        return np.array([int(i) in captioned for i in image_ids], dtype=bool)

    def fusion_features(self, vectors: np.ndarray, image_ids: np.ndarray | None, own_captions: bool) -> np.ndarray:
        """[image ; caption] features: own captions where the image has some (when `own_captions`), else
        the retrieved ones (searched only for the images that need them)."""
        captions = np.zeros_like(vectors)
        retrieve = np.ones(len(vectors), dtype=bool)
        if own_captions and image_ids is not None:
            captions = self.own_caption_vectors(image_ids)
            retrieve = np.linalg.norm(captions, axis=1) == 0
        if retrieve.any():
            captions[retrieve] = self.retrieved_caption_vectors(
                vectors[retrieve], None if image_ids is None else image_ids[retrieve])
        return np.concatenate([vectors, captions], axis=1)


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# -- one fitted tagger ------------------------------------------------------------------------------


@dataclass
class Tagger:
    """A tagger fitted on train with its choices made on val; `scores` works on any image vectors."""

    method: str
    model_id: str
    threshold: float
    captioned_threshold: float | None = None  # fusion: for images read with their own captions
    tag_thresholds: np.ndarray | None = None  # (V,) per tag, chosen on val (`per_tag_thresholds`); None: `threshold`
    k: int | None = None                  # knn: neighbours that vote
    probe: LinearProbe | None = None      # probe, fusion
    prompt_vectors: np.ndarray | None = None  # zeroshot: (V, D)
    val: dict[str, Any] = field(default_factory=dict)  # val figures at the chosen K / threshold

    def scores(self, data: TagData, vectors: np.ndarray, image_ids: np.ndarray | None = None,
               own_captions: bool = True) -> np.ndarray:
        """(N, V) tag scores in [0, 1]. `image_ids` (catalog ids of the vectors, None for new images) keep an
        image out of its own neighbours and give fusion the image's captions."""
        if self.method == "knn":
            rows, sims = data.neighbours(vectors, image_ids, self.k)
            return knn_scores(rows, sims, data.train.labels, self.k)
        if self.method == "probe":
            return self.probe.scores(vectors)
        if self.method == "fusion":
            return self.probe.scores(data.fusion_features(vectors, image_ids, own_captions))
        return zeroshot_scores(vectors, self.prompt_vectors, data.reference_vectors)

    def predict(self, data: TagData, vectors: np.ndarray, image_ids: np.ndarray | None = None,
                max_tags: int = 20) -> list[list[tuple[str, float]]]:
        """Per image its tags, best first: those at or above their threshold (each tag's own where chosen, else
        the global one; fusion: the captioned threshold for images read with their own captions), at most
        `max_tags`."""
        scores = self.scores(data, vectors, image_ids)
        thresholds = self.thresholds(*scores.shape)
        if self.captioned_threshold is not None:
            thresholds[data.has_captions(image_ids, len(scores))] = self.captioned_threshold
        words, out = data.vocabulary.words, []
        for row, threshold in zip(scores, thresholds, strict=True):
            order = np.argsort(-row)
            out.append([(words[t], float(row[t])) for t in order if row[t] >= threshold[t]][:max_tags])
        return out

    def ranked(self, data: TagData, vectors: np.ndarray, image_ids: np.ndarray | None = None, n: int = 5
               ) -> list[list[tuple[str, float]]]:
        """Per image its n best-scoring tags whether or not they pass a threshold (for showing something when no
        tag does, labelled as such)."""
        scores = self.scores(data, vectors, image_ids)
        words = data.vocabulary.words
        return [[(words[t], float(row[t])) for t in np.argsort(-row)[:n]] for row in scores]

    def thresholds(self, n: int, v: int) -> np.ndarray:
        """(n, v) the threshold of each of v tags for n images: its own where chosen, else the global one."""
        if self.tag_thresholds is None:
            return np.full((n, v), self.threshold, dtype=np.float32)
        return np.broadcast_to(self.tag_thresholds.astype(np.float32), (n, v)).copy()

    def save(self, workdir: Workdir, data: TagData, run_id: int | None = None) -> Artefact:
        """Store the fitted tagger (its vocabulary, weights and choices) as an artefact of the workdir."""
        store = ArtefactStore(workdir)
        with store.staging("tagger") as folder:
            data.vocabulary.save(folder / "vocabulary.json")
            if self.probe is not None:
                self.probe.save(folder / "weights.safetensors")
            atomic_write_json(folder / "tagger.json",
                              {"method": self.method, "model_id": self.model_id, "threshold": self.threshold,
                               "captioned_threshold": self.captioned_threshold, "k": self.k, "val": self.val,
                               "tag_thresholds": None if self.tag_thresholds is None
                               else [round(float(t), 4) for t in self.tag_thresholds],
                               "config": asdict(data.config)})
            return store.commit("tagger", folder, source="trained", parent_id=self.model_id, run_id=run_id,
                                metrics=self.val, info={"method": self.method})


def fit_tagger(data: TagData, method: str, val: Labelled) -> Tagger:
    """Fit `method` on the training gallery and choose its K (knn) and threshold on `val`."""
    if method not in METHODS:
        raise InputError(f"unknown tagging method {method!r}; choose one of {', '.join(METHODS)}")
    train = data.train
    if method != "zeroshot" and len(train.image_ids) == 0:
        raise InputError(f"{method} learns from captioned train images and this workdir has none: without captions, "
                         "tag with `--method zeroshot --keywords WORDS` (your own keyword list)")
    labelled_val = len(val.image_ids) > 0 and val.labels.any()
    if not labelled_val and (method != "zeroshot" or data.config.keywords is None):
        raise InputError("the val split has no captioned images mentioning the keywords: the taggers choose their "
                         "threshold on val (or give zeroshot your keywords: `--method zeroshot --keywords WORDS`)")
    tagger = Tagger(method, data.model_id, threshold=0.5)
    if method == "knn":
        ks = [k for k in KNN_KS if k <= len(train.image_ids)]
        rows, sims = data.neighbours(val.vectors, val.image_ids, max(ks))
        sweep = {}
        for k in ks:
            threshold, f1 = best_threshold(knn_scores(rows, sims, train.labels, k), val.labels)
            sweep[k] = (f1, threshold)
        tagger.k = max(ks, key=lambda k: (sweep[k][0], -k))
        tagger.threshold = sweep[tagger.k][1]
        tagger.val["micro_f1_by_k"] = {str(k): f1 for k, (f1, _) in sweep.items()}
    elif method == "probe":
        tagger.probe = train_probe(train.vectors, train.labels, data.config.probe)
    elif method == "fusion":  # each training image twice: with its own captions and with retrieved ones
        own = data.fusion_features(train.vectors, train.image_ids, own_captions=True)
        retrieved = data.fusion_features(train.vectors, train.image_ids, own_captions=False)
        tagger.probe = train_probe(np.concatenate([own, retrieved]), np.concatenate([train.labels] * 2),
                                   data.config.probe)
    else:
        tagger.prompt_vectors = data.prompt_vectors()
    if not labelled_val:  # zeroshot with given keywords and nothing to tune on
        tagger.threshold = data.config.untuned_threshold
        tagger.val = {"threshold": "untuned", "images": 0}
        return tagger
    if method != "knn":
        tagger.threshold, _ = best_threshold(tagger.scores(data, val.vectors, val.image_ids, own_captions=False),
                                             val.labels)
    if method == "fusion":
        tagger.captioned_threshold, _ = best_threshold(tagger.scores(data, val.vectors, val.image_ids), val.labels)
    fair = tagger.scores(data, val.vectors, val.image_ids, own_captions=False)
    tagger.val.update(tag_metrics(fair, val.labels, tagger.threshold))
    if data.config.per_tag_thresholds:
        tagger.tag_thresholds = per_tag_thresholds(fair, val.labels, tagger.threshold)
        tagger.val["tags_with_own_threshold"] = int((val.labels.sum(axis=0) >= MIN_TAG_POSITIVES).sum())
    return tagger


def load_tagger(workdir: Workdir, method: str, model_id: str | None = None,
                device: str | torch.device | None = None) -> tuple[Tagger, TagData]:
    """A tagger fitted by `groundex tag`, with the data it reads (for tagging new images, e.g. uploads)."""
    with Catalog.open(workdir, read_only=True) as catalog:
        model_id = catalog.model(model_id).id
        folder = catalog.artefact("tagger", parent_id=model_id, method=method).path
    saved = json.loads((folder / "tagger.json").read_text())
    data = TagData(workdir, model_id, TaggingConfig(**saved["config"]),
                   vocabulary=Vocabulary.load(folder / "vocabulary.json"), device=device)
    tagger = Tagger(method, model_id, saved["threshold"], captioned_threshold=saved["captioned_threshold"],
                    k=saved["k"], val=saved["val"])
    if saved.get("tag_thresholds") is not None:  # taggers saved before per-tag thresholds have none
        tagger.tag_thresholds = np.asarray(saved["tag_thresholds"], dtype=np.float32)
    if method in ("probe", "fusion"):
        tagger.probe = LinearProbe.load(folder / "weights.safetensors")
    elif method == "zeroshot":
        tagger.prompt_vectors = data.prompt_vectors()
    return tagger, data


# -- commands -------------------------------------------------------------------------------------


def tag_workdir(workdir: Workdir, method: str = "knn", model_id: str | None = None, split: str | None = None,
                config: TaggingConfig | None = None, batch_size: int = 4096, device: str | torch.device | None = None,
                progress: bool = True) -> dict[str, Any]:
    """`groundex tag`: fit `method` (choices on val), save it, then tag the split's images (all images when
    `split` is None, captioned or not) and store each image's tags in the catalog, replacing the method's
    earlier tags of those images. `device` encodes the zero-shot prompts (default: cuda when available)."""
    data = TagData(workdir, model_id, config, device=device)
    with recorded_run(workdir, "tag", {"method": method, "split": split, **asdict(data.config)},
                      data.model_id) as (run_id, result):
        tagger = fit_tagger(data, method, data.split("val"))
        tagger.save(workdir, data, run_id)
        with Catalog.open(workdir, read_only=True) as catalog:
            image_ids = np.array([i for i, _ in catalog.image_rows(split)], dtype=np.int64)
        ids, vectors = data.image_vectors(image_ids)
        if len(ids) < len(image_ids):
            _logger.warning("%d images have no embedding yet and are not tagged; run `groundex index`",
                            len(image_ids) - len(ids))
        rows: list[tuple[int, str, float]] = []
        for s in tqdm(range(0, len(ids), batch_size), desc=f"tag ({method})", unit="batch",
                      disable=not progress):
            tags = tagger.predict(data, vectors[s:s + batch_size], ids[s:s + batch_size], data.config.max_tags)
            for image_id, image_tags in zip(ids[s:s + batch_size].tolist(), tags, strict=True):
                rows += [(image_id, word, score) for word, score in image_tags]
        with Catalog.open(workdir) as catalog:
            stored = catalog.replace_tags(data.model_id, method, ids.tolist(), rows, run_id)
        if method == "fusion":  # these images' tags read their own captions
            result["caption_assisted_images"] = int(data.has_captions(ids, len(ids)).sum())
        result.update({"method": method, "model_id": data.model_id, "images": int(len(ids)), "tags": stored,
                       "vocabulary": len(data.vocabulary), "k": tagger.k, "threshold": tagger.threshold,
                       "val": tagger.val})
    return result


def evaluate_tags(workdir: Workdir, split: str, model_id: str | None = None, methods: tuple[str, ...] = METHODS,
                  config: TaggingConfig | None = None, device: str | torch.device | None = None) -> dict[str, Any]:
    """`groundex eval tags`: micro-F1, macro-F1 and mAP (percent) of each method on the split's captioned
    images, with K and thresholds chosen on val, and the prior baseline (each tag at its training
    frequency, threshold chosen on val)."""
    if split == "train":
        raise InputError("the taggers are fitted on train: evaluate on val or test")
    data = TagData(workdir, model_id, config, device=device)
    with recorded_run(workdir, "eval tags", {"split": split, "methods": list(methods), **asdict(data.config)},
                      data.model_id) as (_, result):
        val = data.split("val")
        target = val if split == "val" else data.split(split)
        if len(target.image_ids) == 0:
            raise InputError(f"split {split!r} has no captioned images to evaluate tags on")
        prior = data.vocabulary.prior()
        threshold, _ = best_threshold(prior_scores(prior, len(val.image_ids)), val.labels)

        def per_tag(scores: np.ndarray, chosen: Callable[[], np.ndarray]) -> dict[str, Any]:
            """Per-tag thresholds: on val cross-fitted (chosen on one half, scored on the other), beside one
            threshold cross-fitted the same way (the fair comparison); elsewhere the ones chosen on val (`chosen()`,
            only computed then)."""
            if split != "val":
                micro, macro = f1_scores(scores >= chosen(), target.labels)
                return {"micro_f1": micro, "macro_f1": macro, "thresholds": "chosen on val"}
            micro, macro = f1_scores(cross_fitted_predictions(scores, target.labels), target.labels)
            one_micro, one_macro = f1_scores(cross_fitted_predictions(scores, target.labels, per_tag=False),
                                             target.labels)
            return {"micro_f1": micro, "macro_f1": macro, "thresholds": "cross-fitted on val",
                    "one_threshold_micro_f1": one_micro, "one_threshold_macro_f1": one_macro}

        prior_target = prior_scores(prior, len(target.image_ids))
        report: dict[str, Any] = {"prior": {
            **tag_metrics(prior_target, target.labels, threshold),
            "per_tag": per_tag(prior_target, lambda: per_tag_thresholds(
                prior_scores(prior, len(val.image_ids)), val.labels, threshold))}}
        for method in methods:
            tagger = fit_tagger(data, method, val)
            # fusion: an image's own captions hidden, as for an uncaptioned image; the fair figure
            scores = tagger.scores(data, target.vectors, target.image_ids, own_captions=False)

            def chosen(tagger: Tagger = tagger) -> np.ndarray:  # the tagger's own, or chosen on val now
                if tagger.tag_thresholds is not None:
                    return tagger.tag_thresholds
                val_scores = tagger.scores(data, val.vectors, val.image_ids, own_captions=False)
                return per_tag_thresholds(val_scores, val.labels, tagger.threshold)

            report[method] = {**tag_metrics(scores, target.labels, tagger.threshold), "k": tagger.k,
                              "per_tag": per_tag(scores, chosen)}
            if method == "knn":
                report["knn"]["micro_f1_by_k_on_val"] = tagger.val["micro_f1_by_k"]
            if method == "fusion":  # reading the image's own captions, which its labels come from: not vision
                scores = tagger.scores(data, target.vectors, target.image_ids, own_captions=True)
                report["fusion_caption_assisted"] = {
                    **tag_metrics(scores, target.labels, tagger.captioned_threshold), "caption_assisted": True}
        result.update({"split": split, "model_id": data.model_id, "images": int(len(target.image_ids)),
                       "vocabulary": len(data.vocabulary), "vocabulary_source": data.vocabulary.source,
                       "labels_per_image": round(float(target.labels.sum(axis=1).mean()), 2),
                       "methods": report})
    return result


def encode_texts(model_path: Path, texts: list[str], device: Any = "cpu", batch_size: int = 512) -> np.ndarray:
    """(N, D) float32 L2-normalized text embeddings of `texts` by the embedding model in `model_path`."""
    model = load_text_tower(model_path, device)
    if model is None:  # a text tower only open_clip computes
        from indexer.models import load_checkpoint

        model = load_checkpoint(model_path, device)
    with torch.no_grad():  # no texts: one empty batch, so the shape is (0, D) as the model gives it
        chunks = [model.encode_text(texts[s:s + batch_size]).float().cpu().numpy()
                  for s in range(0, max(len(texts), 1), batch_size)]
    return np.concatenate(chunks)
