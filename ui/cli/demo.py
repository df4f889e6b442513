"""`groundex demo`: build a working workdir from the embedded default, no download needed."""

from __future__ import annotations

import argparse

import warehouse
from warehouse import Catalog, IngestConfig

from ._common import add_workdir, workdir_of
from .ingest import add_synthetic_options, synthetic_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="build a demo workdir from the embedded synthetic scenes",
        description="Generate the synthetic scenes dataset (Flickr30k Entities format) and ingest it into a "
                    "workdir. Safe to run again: finished steps are skipped.")
    add_workdir(p)
    add_synthetic_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    workdir = workdir_of(args)
    print(f"[1/1] synthetic scenes: {args.n} images, seed {args.seed} -> {workdir.root}")
    report = warehouse.ingest_synthetic(workdir, synthetic_config(args), IngestConfig())
    print(f"      {report.added:,} added, {report.already_present:,} already present, {report.rejected:,} rejected")
    with Catalog.open(workdir, read_only=True) as catalog:
        counts = catalog.counts()
    print(f"demo workdir ready: {counts['images']:,} images, {counts['captions']:,} captions, "
          f"{counts['phrases']:,} phrases, {counts['boxes']:,} boxes; splits {counts['splits']}")
    print(f"next: groundex info --workdir {workdir.root}")
    return 0
