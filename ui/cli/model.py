"""`groundex model`: the CLIP models of a workdir: add one without training, list, export, remove, label."""

from __future__ import annotations

import argparse

from warehouse import Catalog

from ._common import add_workdir, print_json, workdir_of
from ._options import add_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model", help="add a model without training, list, export, label or remove models",
        description="Models are content-addressed folders recorded in the catalog. Every command that takes "
                    "--model (index, search, ground, tag, caption train, eval, ui) takes a model's label or a unique "
                    "prefix of its hash, whether it was trained here, added from open_clip, or exported from "
                    "another workdir.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    a = verbs.add_parser(
        "add", help="record a model without training it",
        description="SOURCE is an open_clip model name (see open_clip.list_models(); an `hf-hub:ORG/NAME` id works "
                    "too) or a folder written by `groundex model export`. With a name, --pretrained gives the "
                    "weights: an open_clip pretrained tag (fetched from the hub, or read from its cache when offline) "
                    "or a local .safetensors file. Nothing is downloaded for a folder or a file.",
        epilog="examples:\n  groundex model add ViT-B-32 --pretrained laion2b_s34b_b79k --label b32\n"
               "  groundex model add ViT-B-32 --pretrained ./vit-b-32.safetensors\n"
               "  groundex model add ../other-workdir-export/ --label from-demo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workdir(a)
    a.add_argument("source", metavar="SOURCE", help="open_clip model name, hf-hub:ORG/NAME, or an exported folder")
    a.add_argument("--pretrained", default=None, metavar="TAG|FILE",
                   help="open_clip pretrained tag or a local .safetensors file (with a model name)")
    a.add_argument("--label", default=None, help="a name for it, usable wherever --model is")
    a.add_argument("--resize", choices=("squash", "center-crop"), default=None,
                   help="how images become the model's square input: center-crop (open_clip's own preprocessing, "
                        "the default for open_clip models: what their weights were trained with) or squash (the "
                        "whole frame, as groundex trains: every pixel reaches a patch, which grounding prefers)")
    add_json(a, "the model's record")
    a.set_defaults(run=run_add)

    ls = verbs.add_parser("list", help="every model with its source, parent, runs and figures")
    add_workdir(ls)
    add_json(ls, "the records")
    ls.set_defaults(run=run_list)

    e = verbs.add_parser(
        "export", help="write a self-contained model folder that `model add` takes in another workdir",
        description="Writes the weights, config and tokenizer (byte for byte: the same hash), the model's record "
                    "(groundex-model.json: label, source, parent, runs, figures) and a short MODEL_CARD.md.")
    add_workdir(e)
    e.add_argument("model", metavar="MODEL", help="label or hash prefix")
    e.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    add_json(e)
    e.set_defaults(run=run_export)

    r = verbs.add_parser(
        "remove", help="remove a model with its embeddings, indexes, tags and regions",
        description="Refused while a captioner or tagger reads the model's vectors, unless --with-dependents. "
                    "Models fine-tuned from it keep working (they hold their own weights).")
    add_workdir(r)
    r.add_argument("model", metavar="MODEL", help="label or hash prefix")
    r.add_argument("--with-dependents", action="store_true",
                   help="also remove the captioners (with their generated captions) and taggers that read it")
    add_json(r)
    r.set_defaults(run=run_remove)

    lb = verbs.add_parser("label", help="name a model (or clear its name with --clear)")
    add_workdir(lb)
    lb.add_argument("model", metavar="MODEL", help="label or hash prefix")
    group = lb.add_mutually_exclusive_group(required=True)
    group.add_argument("label", nargs="?", default=None, metavar="LABEL")
    group.add_argument("--clear", action="store_true")
    add_json(lb, "the model's record")
    lb.set_defaults(run=run_label)


def run_add(args: argparse.Namespace) -> int:
    from indexer.model_store import add_model

    artefact = add_model(workdir_of(args), args.source, args.pretrained, args.label, args.resize)
    if args.json:
        print_json(artefact.as_dict())
        return 0
    print(f"model {artefact.display}: {artefact.info.get('name')} from {artefact.source}, input "
          f"{artefact.info.get('image_size')} px ({artefact.info.get('resize')})")
    print(f"next: groundex index --workdir {args.workdir} --model {artefact.label or artefact.id}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from indexer.model_store import model_records

    records = model_records(workdir_of(args))
    if args.json:
        print_json(records)
        return 0
    if not records:
        print("no models yet: `groundex train` or `groundex model add`")
        return 0
    for r in records:
        info = r["info"]
        r10 = (r["metrics"].get("text_to_image") or {}).get("R@10")
        line = (f"{r['id']}  {(r['label'] or '-'):<12} {info.get('name', '?'):<16} {info.get('mode') or 'none':<12} "
                f"from {r['source']}")
        if r["parent_id"]:
            line += f" (parent {r['parent_id']})"
        if r10 is not None:
            line += f"  val t2i R@10 {r10:.1f}"
        if r["indexes"]:
            line += "  indexes: " + ", ".join(f"{k} {n:,}" for k, n in r["indexes"].items())
        print(line)
        runs = ([f"made by run {r['made_by']['run_id']} ({r['made_by']['command']})"] if r["made_by"] else []) + [
            f"{command} run {figures['run_id']}" for command, figures in sorted(r["evaluations"].items())]
        if runs:
            print("    " + "; ".join(runs))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from indexer.model_store import export_model

    out = export_model(workdir_of(args), args.model, args.out)
    if args.json:
        with Catalog.open(workdir_of(args), read_only=True) as catalog:
            print_json({"model_id": catalog.model(args.model).id, "out": str(out)})
        return 0
    print(f"exported to {out}; add it elsewhere with `groundex model add {out} --workdir OTHER`")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from indexer.model_store import remove_model

    result = remove_model(workdir_of(args), args.model, args.with_dependents)
    if args.json:
        print_json(result)
        return 0
    print(f"removed model {result['removed']}" + (f" ({result['label']})" if result["label"] else "")
          + (f" and {', '.join(result['dependents_removed'])}" if result["dependents_removed"] else ""))
    if result["children_kept"]:
        print(f"kept the models fine-tuned from it: {', '.join(result['children_kept'])}")
    return 0


def run_label(args: argparse.Namespace) -> int:
    from indexer.model_store import label_model

    artefact = label_model(workdir_of(args), args.model, None if args.clear else args.label)
    if args.json:
        print_json(artefact.as_dict())
        return 0
    print(f"model {artefact.id}: " + ("label cleared" if args.clear else f"labelled {args.label!r}"))
    return 0
