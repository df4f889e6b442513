"""`groundex chunk`: the phrase chunker (train it; find and ground the phrases of a caption)."""

from __future__ import annotations

import argparse

from ._common import UserError, add_workdir, print_json, workdir_of
from ._options import add_device, add_json, add_model, add_no_progress


def add_chunker(parser: argparse.ArgumentParser) -> None:
    """--chunker: a recorded phrase chunker, as --model is a recorded CLIP model."""
    parser.add_argument("--chunker", default=None, help="chunker label or hash prefix (default: the newest)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from heads import ChunkerConfig

    c = ChunkerConfig()
    p = sub.add_parser(
        "chunk", help="the phrase chunker: train it, or find (and ground) the phrases of a caption",
        description="The chunker tags each word of a caption as the beginning, inside or outside of a phrase of one "
                    "of the Flickr30k Entities types (people, clothing, bodyparts, animals, vehicles, instruments, "
                    "scene, other, notvisual). It learns from the train split's phrase markup (`[/EN#id/type "
                    "words]`) in seconds to a minute on CPU. `groundex caption generate --ground` uses it to store "
                    "generated captions with their phrases and boxes; `groundex eval chunks` measures it.")
    steps = p.add_subparsers(dest="step", metavar="STEP", required=True)
    t = steps.add_parser("train", help="learn a chunker from the train split's phrase markup",
                         description="Trains on the human captions of the train split that carry phrase markup, "
                                     "prints span F1 and type accuracy on val beside the rule baseline, and stores "
                                     "the chunker in the workdir (chunkers/<hash>).")
    add_workdir(t)
    t.add_argument("--epochs", type=int, default=c.epochs,
                   help="passes over the training captions (default: %(default)s); a small collection gets more, so "
                        f"that training takes at least {c.min_steps} steps")
    t.add_argument("--seed", type=int, default=c.seed, help="random seed (default: %(default)s)")
    t.add_argument("--label", default=None, help="a name for the chunker, usable wherever a hash is")
    add_no_progress(t)
    add_json(t)
    t.set_defaults(run=run_train)
    x = steps.add_parser("text", help="print the phrases of a caption (and, with --image, their boxes)",
                         description="Finds the phrases of TEXT with their types; with --image, grounds each visual "
                                     "phrase in that catalog image (id) or image file and prints its box.")
    add_workdir(x)
    x.add_argument("text", help="a caption, e.g. 'a man in a red jacket rides a bike'")
    x.add_argument("--image", default=None, metavar="ID|FILE", help="ground the phrases in this image")
    add_chunker(x)
    add_model(x, "embedding model that grounds the phrases")
    add_device(x)
    add_json(x)
    x.set_defaults(run=run_text)


def run_train(args: argparse.Namespace) -> int:
    from heads import ChunkerConfig, train_workdir_chunker

    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")
    result = train_workdir_chunker(workdir_of(args), ChunkerConfig(epochs=args.epochs, seed=args.seed), args.label,
                                   progress=not args.no_progress)
    if args.json:
        print_json(result)
        return 0
    print(f"chunker {result['chunker_id']}: trained on {result['train_captions']:,} captions in {result['seconds']} s")
    if result["val_captions"]:
        print(span_table({"chunker": result["val"], "rule baseline": result["rule_val"]},
                         f"val ({result['val_captions']:,} captions)"))
    return 0


def span_table(rows: dict[str, dict], title: str) -> str:
    lines = [f"{title:<28} {'F1':>6} {'prec':>6} {'recall':>6} {'type acc':>9}"]
    for name, s in rows.items():
        lines.append(f"{name:<28} {s['f1']:>6.1f} {s['precision']:>6.1f} {s['recall']:>6.1f} "
                     f"{s['type_accuracy']:>9.1f}")
    return "\n".join(lines)


def run_text(args: argparse.Namespace) -> int:
    from heads import open_chunker

    workdir = workdir_of(args)
    chunker = open_chunker(workdir, args.chunker)
    if not args.text.strip():
        raise UserError("the text is empty")
    if args.model is not None and args.image is None:
        raise UserError("--model chooses the model that grounds the phrases: give it with --image")
    if args.image is None:
        phrases = [c.as_dict() for c in chunker.chunk(args.text)]
    else:
        from grounding.ground import Grounder
        from heads import ground_caption

        image = int(args.image) if args.image.isdigit() else args.image
        grounder = Grounder(workdir, args.model, args.device)
        phrases = [p.as_dict() for p in ground_caption(grounder, chunker, args.text, image)]
    if args.json:
        print_json({"chunker_id": chunker.id, "text": args.text, "phrases": phrases})
        return 0
    for p in phrases:
        kind = p["type"] if "type" in p else "/".join(p["types"])
        box = p.get("box")
        where = "" if args.image is None else ("  (no box)" if box is None else
                                               "  box " + ", ".join(f"{v:.0f}" for v in box) + f"  score {p['score']}")
        print(f"[{kind}] {p['text']}{where}")
    return 0
