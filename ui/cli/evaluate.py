"""`groundex eval`: built-in evaluation on held-out data."""

from __future__ import annotations

import argparse

from ._common import add_workdir, print_json, workdir_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate on a split", description="Built-in evaluation on held-out data.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    r = tasks.add_parser(
        "retrieval", help="recall@K, text->image and image->text",
        description="Standard Flickr30k protocol on the split's images (gallery) and their captions (queries). "
                    "Uses the embeddings stored by `groundex index`.")
    add_workdir(r)
    r.add_argument("--split", required=True)
    r.add_argument("--model", default=None, help="model hash or prefix (default: the newest)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(run=run_retrieval)


def run_retrieval(args: argparse.Namespace) -> int:
    from indexer.pipeline import evaluate_retrieval

    result = evaluate_retrieval(workdir_of(args), args.split, args.model)
    if args.json:
        print_json(result)
        return 0
    print(f"split {result['split']}: {result['images']:,} images, {result['queries']:,} caption queries, "
          f"model {result['model_id']}")
    for task in ("text_to_image", "image_to_text"):
        print(f"  {task:<14} " + "  ".join(f"{k} {v:5.1f}" for k, v in result[task].items()))
    return 0
