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
    g = tasks.add_parser(
        "grounding", help="pointing game and box accuracy on Flickr30k Entities phrases",
        description="Every phrase occurrence of the split whose entity has a box, given its image: pointing game "
                    "(the heatmap's maximum inside one of its boxes) and box_acc@0.5 (the top box has IoU >= 0.5 "
                    "with one of them), overall and by phrase type, with the centre-point and whole-image "
                    "baselines, in percent. --tune first chooses the heatmap-to-box parameters on this split "
                    "(val) and saves them for the model; `groundex ground` then uses them.")
    add_workdir(g)
    g.add_argument("--split", required=True)
    g.add_argument("--model", default=None, help="model hash or prefix (default: the newest)")
    g.add_argument("--tune", action="store_true", help="choose the parameters on this split first (not on test)")
    g.add_argument("--json", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(run=run_grounding)


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


def run_grounding(args: argparse.Namespace) -> int:
    from grounding import evaluate_grounding

    result = evaluate_grounding(workdir_of(args), args.split, args.model, tune_params=args.tune,
                                progress=not args.no_progress)
    if args.json:
        print_json(result)
        return 0
    base = result["baselines"]
    print(f"split {result['split']}: {result['phrases']:,} phrases with boxes in {result['images']:,} images, "
          f"model {result['model_id']}" + (" (parameters tuned on this split)" if args.tune else ""))
    print(f"  {'':<12} {'phrases':>8} {'pointing':>9} {'centre':>7} {'box@0.5':>8} {'whole':>6}")
    rows = [("all", result["phrases"], result["pointing_game"], base["center"]["pointing_game"],
             result["box_acc@0.5"], base["whole_image"]["box_acc@0.5"])]
    rows += [(t, v["phrases"], v["pointing_game"], v["center_pointing_game"], v["box_acc@0.5"],
              v["whole_image_box_acc@0.5"]) for t, v in result["by_type"].items()]
    for name, n, pointing, centre, box, whole in rows:
        print(f"  {name:<12} {n:>8,} {pointing:>9.1f} {centre:>7.1f} {box:>8.1f} {whole:>6.1f}")
    return 0
