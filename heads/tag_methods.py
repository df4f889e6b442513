"""Multi-label keyword tagging: scores, thresholds and metrics shared by every tagger.

A tagger turns images into scores (N, V) in [0, 1] over the vocabulary. Here: the kNN tagger (similarity-weighted
votes of the nearest training images' labels), the linear probe (a multi-label linear classifier on
frozen embeddings, BCE with rare tags up-weighted; the fusion tagger is the same probe on image +
caption features), zero-shot prompts, and the prior baseline (every tag at its training frequency).
`heads.tagging` fits them on a workdir. Thresholds are chosen on val (`best_threshold`); metrics are
micro-F1, macro-F1 (over tags with at least one positive) and mAP (mean over those tags of average
precision).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score

from warehouse import InputError

from .config import PROMPT, ProbeConfig

KNN_KS = (1, 3, 5, 7, 11, 21, 31, 51)  # the K swept on val


def knn_scores(neighbour_rows: np.ndarray, neighbour_sims: np.ndarray, gallery_labels: np.ndarray, k: int
               ) -> np.ndarray:
    """Similarity-weighted label votes of each query's k nearest gallery images.

    neighbour_rows / neighbour_sims (N, K >= k): gallery rows by decreasing cosine (-1: none), as
    `heads.neighbours` returns them; gallery_labels (M, V) bool. Returns (N, V) in [0, 1]: the weighted
    share of the k neighbours that carry each tag (weights: cosines shifted to [0, 2])."""
    if not 1 <= k <= neighbour_rows.shape[1]:
        raise ValueError(f"k must be in [1, {neighbour_rows.shape[1]}] (the neighbours searched), got {k}")
    rows, sims = neighbour_rows[:, :k], neighbour_sims[:, :k]
    return weighted_votes(rows, np.where(rows >= 0, np.clip(sims + 1.0, 1e-6, None), 0.0), gallery_labels)


def weighted_votes(rows: np.ndarray, weights: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """(N, V) each query's gallery labels averaged with `weights` (N, k) over its neighbours `rows` (N, k; -1: none,
    which must weigh 0); a query whose weights are all 0 gets no votes."""
    weights = weights.astype(np.float32)
    votes = np.zeros((len(rows), gallery_labels.shape[1]), dtype=np.float32)
    for j in range(rows.shape[1]):  # one neighbour rank at a time: (N, V) in memory, not (N, k, V)
        votes += weights[:, j, None] * gallery_labels[np.maximum(rows[:, j], 0)]
    return votes / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)


def prior_scores(prior: np.ndarray, n: int) -> np.ndarray:
    """The baseline: every image gets each tag's training frequency as its score."""
    return np.broadcast_to(np.asarray(prior, dtype=np.float32), (n, len(prior))).copy()


def f1_scores(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(micro-F1, macro-F1) in percent; macro over tags with at least one positive label."""
    tp = (predicted & labels).sum(axis=0).astype(np.float64)
    fp = (predicted & ~labels).sum(axis=0).astype(np.float64)
    fn = (~predicted & labels).sum(axis=0).astype(np.float64)
    micro = 2 * tp.sum() / max(1e-12, 2 * tp.sum() + fp.sum() + fn.sum())
    present = labels.any(axis=0)
    per_tag = 2 * tp / np.maximum(1e-12, 2 * tp + fp + fn)
    macro = float(per_tag[present].mean()) if present.any() else 0.0
    return round(100 * float(micro), 2), round(100 * macro, 2)


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over tags with at least one positive of the average precision of their scores, in percent."""
    present = np.flatnonzero(labels.any(axis=0))
    if len(present) == 0:
        return 0.0
    ap = [average_precision_score(labels[:, t], scores[:, t]) for t in present]
    return round(100 * float(np.mean(ap)), 2)


def best_threshold(scores: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None) -> tuple[float, float]:
    """The global threshold maximizing micro-F1 on (val) `scores`, and that F1."""
    grid = np.round(np.arange(0.05, 1.0, 0.05), 2) if grid is None else grid
    best = max(((f1_scores(scores >= t, labels)[0], float(t)) for t in grid), key=lambda x: (x[0], -x[1]))
    return best[1], best[0]


MIN_TAG_POSITIVES = 5  # a tag gets a threshold of its own only with this many positive val images


def per_tag_thresholds(scores: np.ndarray, labels: np.ndarray, fallback: float, grid: np.ndarray | None = None,
                       min_positives: int = MIN_TAG_POSITIVES) -> np.ndarray:
    """(V,) each tag's threshold maximizing its own F1 on (val) `scores`; ties go to the threshold nearest
    `fallback`. Tags with fewer than `min_positives` positive images keep `fallback` (the global threshold): a
    threshold chosen on two or three examples is noise."""
    grid = np.round(np.arange(0.05, 1.0, 0.05), 2) if grid is None else np.asarray(grid)
    thresholds = np.full(scores.shape[1], fallback, dtype=np.float32)
    chosen = np.flatnonzero(labels.sum(axis=0) >= min_positives)
    if len(chosen) == 0:
        return thresholds
    s, y = scores[:, chosen], labels[:, chosen]
    predicted = s[:, None, :] >= grid[None, :, None]                      # (N, G, T)
    tp = (predicted & y[:, None, :]).sum(axis=0).astype(np.float64)       # (G, T)
    fp = predicted.sum(axis=0) - tp
    fn = y.sum(axis=0)[None, :] - tp
    f1 = 2 * tp / np.maximum(1e-12, 2 * tp + fp + fn)
    # the best F1 per tag; among equal ones the threshold nearest the fallback
    nearness = -np.abs(grid - fallback)[:, None] * 1e-6
    thresholds[chosen] = grid[np.argmax(np.round(f1, 9) + nearness, axis=0)]
    return thresholds


def cross_fitted_predictions(scores: np.ndarray, labels: np.ndarray, per_tag: bool = True, folds: int = 2,
                             seed: int = 0) -> np.ndarray:
    """(N, V) bool: thresholds applied to images they were not chosen on. The images are split into `folds` at
    random; each fold is thresholded with the global threshold chosen on the others (`best_threshold`) and, with
    `per_tag`, each tag's own (`per_tag_thresholds`, falling back to that global one). This is how thresholds are
    scored on the split they are chosen on (val) without grading their own choice; both kinds the same way, so
    they compare."""
    order = np.random.default_rng(seed).permutation(len(scores))
    predicted = np.zeros(scores.shape, dtype=bool)
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        threshold, _ = best_threshold(scores[rest], labels[rest])
        thresholds = per_tag_thresholds(scores[rest], labels[rest], threshold) if per_tag else threshold
        predicted[part] = scores[part] >= thresholds
    return predicted


def tag_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """micro-F1, macro-F1 and mAP (percent) of `scores` thresholded at one `threshold` for every tag."""
    micro, macro = f1_scores(scores >= threshold, labels)
    return {"micro_f1": micro, "macro_f1": macro, "mAP": mean_average_precision(scores, labels),
            "threshold": threshold}


# -- linear probe ---------------------------------------------------------------------------------


class LinearProbe:
    """A multi-label linear classifier on frozen embeddings: scores = sigmoid(x W + b)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias  # (D, V), (V,)

    def scores(self, features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)) @ self.weight + self.bias
        return torch.sigmoid(logits).numpy()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(path))

    @classmethod
    def load(cls, path: Path) -> LinearProbe:
        try:
            state = load_file(str(path))
            return cls(state["weight"], state["bias"])
        except Exception as e:  # safetensors raises its own error types; a missing key is a KeyError
            raise InputError(f"{path}: not a readable probe ({e})") from None


def train_probe(features: np.ndarray, labels: np.ndarray, config: ProbeConfig | None = None) -> LinearProbe:
    """Binary cross-entropy with positives of rare tags up-weighted (sqrt of the class ratio, capped)."""
    config = config or ProbeConfig()
    if len(features) != len(labels) or len(features) == 0:
        raise ValueError(f"{len(features)} feature rows for {len(labels)} label rows")
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(labels.astype(np.float32))
    positives = y.sum(dim=0).clamp(min=1)
    pos_weight = ((len(y) - positives) / positives).sqrt().clamp(1, config.pos_weight_cap)
    weight = (torch.randn(x.shape[1], y.shape[1], generator=generator) * 0.01).requires_grad_(True)
    prior = (y.mean(dim=0) * (1 - 2e-3) + 1e-3)
    bias = torch.log(prior / (1 - prior)).clone().requires_grad_(True)  # start at the prior
    optimizer = torch.optim.AdamW([weight, bias], lr=config.lr, weight_decay=config.weight_decay)
    for _ in range(config.epochs):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight + bias, y, pos_weight=pos_weight)
        loss.backward()
        optimizer.step()
    return LinearProbe(weight.detach(), bias.detach())


# -- zero-shot ------------------------------------------------------------------------------------



def prompts(words: list[str], template: str = PROMPT) -> list[str]:
    """One text per tag, e.g. 'a photo of a dog'."""
    if "{}" not in template:
        raise InputError(f"the prompt template needs a '{{}}' for the tag: {template!r}")
    return [template.format(w) for w in words]


def zeroshot_scores(image_vectors: np.ndarray, prompt_vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Prompt embeddings (V, D) against image embeddings (N, D), no labels used.

    Raw cosines of different prompts live on different scales, so each tag's cosine is standardized
    with its mean and spread over `reference` images (e.g. the unlabelled training images) and squashed
    with a sigmoid: (N, V) in [0, 1], comparable across tags for one threshold."""
    reference_cos = reference @ prompt_vectors.T  # (M, V)
    mean, spread = reference_cos.mean(axis=0), reference_cos.std(axis=0) + 1e-6
    z = (image_vectors @ prompt_vectors.T - mean) / spread
    return (1 / (1 + np.exp(-z))).astype(np.float32)
