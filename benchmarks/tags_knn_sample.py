"""A first look at keyword tagging on a workdir: kNN per K, the linear probe and zero-shot prompts, vs the prior.

    python benchmarks/tags_knn_sample.py --workdir /tmp/gw-sample [--model M]

Vocabulary from the train split's phrases (captions when there are none); labels from the captions.
Gallery: the train images' stored embeddings (`groundex index`). K and the thresholds are chosen on
every 7th train image (leave-one-out for kNN; the probe trains on the other train images); the figures
are on val. `groundex eval tags` (to come) replaces this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heads import KNN_KS, best_threshold, knn_scores, mine_vocabulary, prior_scores, tag_metrics  # noqa: E402
from heads.tags import prompts, train_probe, zeroshot_scores  # noqa: E402
from indexer.embed import load_embeddings  # noqa: E402
from indexer.models import load_checkpoint  # noqa: E402
from warehouse import Catalog, Workdir  # noqa: E402


def by_image(rows) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for _, image_id, text in rows:
        out.setdefault(image_id, []).append(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    workdir = Workdir(args.workdir)
    with Catalog.open(workdir, read_only=True) as catalog:
        info = catalog.model(args.model)
        model_id = info["id"]
        train, val = catalog.caption_rows("train"), catalog.caption_rows("val")
        phrases = [(r.image_id, r.text) for r in catalog.grounding_rows("train") if r.entity_id != 0]
    vocab = mine_vocabulary([(i, t) for _, i, t in train], phrases)
    train_ids, train_labels = vocab.labels(by_image(train))
    val_ids, val_labels = vocab.labels(by_image(val))
    _, train_vectors = load_embeddings(workdir, model_id, "image", train_ids)
    _, val_vectors = load_embeddings(workdir, model_id, "image", val_ids)
    held = np.arange(0, len(train_ids), 7)
    print(f"model {model_id}: {len(vocab)} keywords ({vocab.source}), {len(train_ids)} train / {len(val_ids)} val")
    for k in KNN_KS:
        threshold, held_f1 = best_threshold(knn_scores(train_vectors[held], train_vectors, train_labels, k,
                                                       exclude=held), train_labels[held])
        metrics = tag_metrics(knn_scores(val_vectors, train_vectors, train_labels, k), val_labels, threshold)
        print(f"kNN K={k:<3} held-out micro-F1 {held_f1:5.1f} | val {metrics}")
    rest = np.setdiff1d(np.arange(len(train_ids)), held)
    probe = train_probe(train_vectors[rest], train_labels[rest])
    threshold, held_f1 = best_threshold(probe.scores(train_vectors[held]), train_labels[held])
    metrics = tag_metrics(probe.scores(val_vectors), val_labels, threshold)
    print(f"probe      held-out micro-F1 {held_f1:5.1f} | val {metrics}")
    import torch

    with torch.no_grad():
        prompt_vectors = load_checkpoint(Path(info["path"]), "cpu").encode_text(prompts(vocab.words)).numpy()
    threshold, held_f1 = best_threshold(zeroshot_scores(train_vectors[held], prompt_vectors, train_vectors),
                                        train_labels[held])
    metrics = tag_metrics(zeroshot_scores(val_vectors, prompt_vectors, train_vectors), val_labels, threshold)
    print(f"zero-shot  held-out micro-F1 {held_f1:5.1f} | val {metrics}")
    threshold, _ = best_threshold(prior_scores(vocab.prior(), len(held)), train_labels[held])
    print(f"prior      val {tag_metrics(prior_scores(vocab.prior(), len(val_ids)), val_labels, threshold)}")


if __name__ == "__main__":
    main()
