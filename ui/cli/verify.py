"""`groundex verify`: check that a workdir's catalog, files, shards, indexes and model hashes agree."""

from __future__ import annotations

import argparse

from ._common import add_workdir, print_json, workdir_of
from ._options import add_json, add_no_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="check that a workdir is consistent (exit 0: sound, 1: problems found)",
        description="Check that the catalog's rows, the image files, the embedding shards, the FAISS indexes (their "
                    "ids against the embeddings), the model and captioner hashes and the files agree. Each "
                    "inconsistency is reported on its own line. Problems make the exit code 1; notes (leftovers of "
                    "an interrupted command, such as an unreferenced shard) do not. Nothing is written.")
    add_workdir(p)
    p.add_argument("--deep", action="store_true", help="also re-hash every image file against its ingest sha256")
    add_json(p, "the report")
    add_no_progress(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from indexer.verify import verify_workdir

    report = verify_workdir(workdir_of(args), deep=args.deep, progress=not (args.json or args.no_progress))
    if args.json:
        print_json(report.as_dict())
    else:
        print(f"workdir {report.workdir}: checked " + ", ".join(f"{n:,} {what}" for what, n in report.checked.items()))
        for finding in report.findings:
            print(f"  {'PROBLEM' if finding.problem else 'note   '} [{finding.area}] {finding.message}")
        print(f"{'sound' if report.sound else f'{len(report.problems)} problem(s)'}; "
              f"{len(report.findings) - len(report.problems)} note(s)")
    return 0 if report.sound else 1
