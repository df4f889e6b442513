"""Phrase -> region search quality: how images are ranked for a phrase.

    python benchmarks/region_rank.py --workdir W [--model M] [--split val] [--queries 1000]
                                     [--weights 0.25 0.5 1 2] [--out docs/results/x.json]

The collection is the split's images with boxed phrases, scored exactly (no index: this measures the ranking, not
the search).
Queries are distinct phrase texts of the split (with boxes, lower-cased; at most --queries, drawn at random);
the images relevant to a query are those with a phrase of the same text, and its boxes are where it is.

Rankings, each an image score for the phrase vector q:
- `patch`: the image's best patch cosine (groundex up to issue 20);
- `patch + w global`: that plus w times the image's global cosine (`GroundingConfig.rank_global`), for each w;
- `global`: the global cosine alone (text -> image search).

Per ranking: P@10 (relevant images among the top 10), R@10 (queries with a relevant image in the top 10), and
grounded P@10 (top-10 images that are relevant and whose best cell, by the model's box head when it has one,
else by cosine, lies inside one of the phrase's boxes there). Ratios are against `patch`, measured in the same run.
Exact text matches miss synonyms and near-duplicates ("a man" is in most images), so absolute precision is a
lower bound; the rankings are compared on the same queries.

--show "a yellow car" ...: for each phrase and each weight (0 and --weights), the product's region search
(`Grounder.search`, every split) and what the point in each of its top 5 images lies on: the smallest annotated
box holding it (docs/grounding.md, "Ranking images for a phrase").
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit  # noqa: E402

from grounding.heatmap import in_window  # noqa: E402
from indexer.box_head import cell_centres, load_box_head  # noqa: E402
from indexer.data import crop_window  # noqa: E402
from indexer.models import load_checkpoint  # noqa: E402
from indexer.shards import load_embeddings  # noqa: E402
from warehouse import Catalog, Workdir  # noqa: E402

K = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model", default=None, help="model hash, prefix or label (default: the newest)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--show", nargs="+", default=None, metavar="PHRASE",
                        help="print what the top 5 regions of these phrases show, for each weight, and stop")
    args = parser.parse_args()
    if args.show:
        show(Workdir(args.workdir), args.model, args.show, [0.0, *args.weights])
        return

    workdir = Workdir(args.workdir)
    with Catalog.open(workdir, read_only=True) as catalog:
        info = catalog.model(args.model)
        rows = [r for r in catalog.grounding_rows(args.split) if r.boxes]
        ids, images = load_embeddings(workdir, info.id, "image", sorted({r.image_id for r in rows}), catalog)
        _, patches = load_embeddings(workdir, info.id, "patch", ids.tolist(), catalog)
        details = catalog.image_details(ids.tolist())
    where: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))  # text -> image -> boxes
    for r in rows:
        where[r.text.lower().strip(" .")][r.image_id].extend(r.boxes)
    texts = sorted(where)
    rng = np.random.default_rng(args.seed)
    texts = [texts[i] for i in sorted(rng.choice(len(texts), min(args.queries, len(texts)), replace=False))]
    model = load_checkpoint(info.path, "cpu")
    head = load_box_head(info.path)
    with torch.no_grad():
        queries = torch.cat([model.encode_text(texts[s:s + 256]).float() for s in range(0, len(texts), 256)]).numpy()
    centres = cell_centres(model.patch_grid).numpy()  # (P, 2) x, y of the model's input
    window = {int(i): crop_window(int(details[int(i)]["width"]), int(details[int(i)]["height"]), model.resize)
              for i in ids}  # the part of each image the grid covers (all of it unless center-crop)

    global_cos = queries @ images.T                                     # (Q, N)
    best_patch = np.stack([(patches @ q).max(axis=1) for q in queries])  # (Q, N)
    rankings = {"patch": best_patch, **{f"patch + {w:g} global": best_patch + w * global_cos for w in args.weights},
                "global": global_cos}
    row_of = {int(i): k for k, i in enumerate(ids)}
    result = {"workdir": str(args.workdir), "model": info.id, "split": args.split, "images": len(ids),
              "queries": len(texts), "box_head": head is not None, "rankings": {}}
    for name, scores in rankings.items():
        p10 = r10 = grounded = 0.0
        for q, text in enumerate(texts):
            top = np.argsort(-scores[q], kind="stable")[:K]
            relevant = [int(ids[t]) in where[text] for t in top]
            p10 += sum(relevant) / K
            r10 += any(relevant)
            hit_images = [int(ids[t]) for t, rel in zip(top, relevant, strict=True) if rel]
            if hit_images:
                vectors = torch.from_numpy(patches[[row_of[i] for i in hit_images]].astype(np.float32))
                if head is not None:
                    cell_scores, _ = head.predict(vectors, torch.from_numpy(queries[q])[None].expand(len(vectors), -1))
                else:
                    cell_scores = torch.einsum("npd,d->np", vectors, torch.from_numpy(queries[q]))
                for i, cell in zip(hit_images, cell_scores.argmax(dim=1).tolist(), strict=True):
                    x, y = in_window(centres[cell][None], np.asarray(window[i]))[0]
                    grounded += any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in where[text][i]) / K
        n = len(texts)
        result["rankings"][name] = {"P@10": round(100 * p10 / n, 2), "R@10": round(100 * r10 / n, 2),
                                    "grounded_P@10": round(100 * grounded / n, 2)}
    base = result["rankings"]["patch"]
    for figures in result["rankings"].values():
        figures["ratio_P@10"] = round(figures["P@10"] / max(base["P@10"], 1e-9), 3)
        figures["ratio_grounded_P@10"] = round(figures["grounded_P@10"] / max(base["grounded_P@10"], 1e-9), 3)
    lines = [f"{len(texts)} {args.split} phrases over {len(ids)} images, model {info.id[:8]} "
             f"(box head: {'yes' if head is not None else 'no'})", "",
             "| ranking | P@10 | R@10 | grounded P@10 | P@10 vs patch | grounded vs patch |",
             "|---|---|---|---|---|---|"]
    for name, f in result["rankings"].items():
        lines.append(f"| {name} | {f['P@10']:.1f} | {f['R@10']:.1f} | {f['grounded_P@10']:.1f} | "
                     f"{f['ratio_P@10']:.2f}x | {f['ratio_grounded_P@10']:.2f}x |")
    emit(result, args.out, "\n".join(lines) + "\n")


def show(workdir: Workdir, model: str | None, phrases: list[str], weights: list[float]) -> None:
    from grounding import Grounder

    grounder = Grounder(workdir, model)
    with Catalog.open(workdir, read_only=True) as catalog:
        splits = [s for (s,) in catalog.query("SELECT DISTINCT split FROM images ORDER BY split")]
        rows = [r for split in splits for r in catalog.grounding_rows(split) if not r.scene]
    by_image = defaultdict(list)
    for r in rows:
        by_image[r.image_id].extend((b, r.text) for b in r.boxes)
    for phrase in phrases:
        for weight in weights:
            labels = []
            for g in grounder.search(phrase, k=5, rank_global=weight):
                x, y = g.point[0] / g.width, g.point[1] / g.height
                holding = sorted(((b[2] - b[0]) * (b[3] - b[1]), text) for b, text in by_image[g.image_id]
                                 if b[0] <= x <= b[2] and b[1] <= y <= b[3])
                labels.append(holding[0][1] if holding else "(background)")
            print(f"{phrase!r}, rank_global {weight:g}: " + "; ".join(labels))


if __name__ == "__main__":
    main()
