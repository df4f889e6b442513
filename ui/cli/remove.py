"""`groundex remove`: take images out of a workdir (their vectors leave the indexes at the next `index`)."""

from __future__ import annotations

import argparse

from warehouse import Catalog

from ._common import UserError, add_workdir, print_json, workdir_of
from ._options import add_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "remove", help="remove images (and their captions, phrases, boxes) from the catalog",
        description="Deletes the images from the catalog with everything attached to them. Image files on disk "
                    "are not touched. The next `groundex index` removes their vectors from the FAISS indexes.")
    add_workdir(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--image-id", type=int, nargs="+", help="catalog ids of the images to remove")
    target.add_argument("--where", help="SQL condition over images, e.g. \"dataset = 'photos'\"")
    p.add_argument("--yes", action="store_true", help="remove without asking for --where matches")
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with Catalog.open(workdir_of(args)) as catalog:
        ids = args.image_id if args.image_id else catalog.image_ids_where(args.where)
        if args.where and not args.yes:
            raise UserError(f"--where matches {len(ids):,} images; add --yes to remove them")
        removed = catalog.remove_images(ids)
        with catalog.run("remove", {"image_ids": ids[:1000], "where": args.where}) as (_, result):
            result["removed"] = removed
    if args.json:
        print_json({"removed": removed})
        return 0
    print(f"removed {removed:,} images; run `groundex index --workdir {args.workdir}` to update the indexes")
    return 0
