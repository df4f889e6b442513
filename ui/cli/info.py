"""`groundex info`: what a workdir holds."""

from __future__ import annotations

import argparse

from warehouse import Catalog

from ._common import add_workdir, print_json, workdir_of
from ._options import add_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="counts of what a workdir holds",
                       description="Counts of images, captions, phrases, boxes, splits and rejects in a workdir.")
    add_workdir(p)
    add_json(p, "the counts")
    p.add_argument("--rejects", type=int, default=0, metavar="N", help="also list the first N rejected inputs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    workdir = workdir_of(args)
    with Catalog.open(workdir, read_only=True) as catalog:
        counts = catalog.counts()
        rejects = catalog.rejects()[: args.rejects] if args.rejects > 0 else []
        last_runs = catalog.runs(limit=5)
    if args.json:
        if args.rejects:
            counts["reject_list"] = [{"path": r.path, "line": r.line, "reason": r.reason} for r in rejects]
        print_json(counts)
        return 0
    print(f"workdir {workdir.root.resolve()}")
    for key in ("images", "captions", "generated_captions", "phrases", "generated_phrases", "boxes", "entities", "tags",
                "regions", "rejects", "runs"):
        print(f"  {key:<19}{counts[key]:>10,}")
    print("  splits             " + ", ".join(f"{k}={v:,}" for k, v in counts["splits"].items()))
    print("  datasets           " + ", ".join(f"{k}={v:,}" for k, v in counts["datasets"].items()))
    if last_runs:
        print("recent runs")
        for r in last_runs:
            print(f"  #{r['id']:<4} {r['status']:<7} {r['started_at']:%Y-%m-%d %H:%M:%S}  {r['command']}")
    for r in rejects:
        print(f"reject: {r}")
    if counts["rejects"] and not args.rejects:
        print(f"({counts['rejects']:,} rejected inputs: `groundex info --rejects 20` lists them)")
    return 0
