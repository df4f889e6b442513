"""`groundex export`: write the catalog out in a dataset format other tools read."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UserError, add_workdir, print_json, workdir_of
from ._options import add_captioner, add_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    from warehouse import IMAGE_MODES

    p = sub.add_parser("export", help="write a split out in the Flickr30k Entities format",
                       description="Export the catalog in a format other tools read.")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    e = formats.add_parser(
        "entities", help="the official Flickr30k Entities layout (Sentences/, Annotations/, images/, SPLIT.txt)",
        description="Writes the split's images in the official Flickr30k Entities layout: Sentences/<id>.txt (one "
                    "caption per line, phrases as [/EN#<entity>/<type> words]), Annotations/<id>.xml (the image's "
                    "size and its boxes in 1-based inclusive pixels, as the official reader expects), images/ and "
                    "<split>.txt. `groundex ingest flickr30k --root OUT --workdir NEW` reads it back (into a new "
                    "workdir: in the same one the images would be added again under new keys). By default the human "
                    "captions with their annotated phrases and boxes; with --generated the captioner's generated "
                    "captions with the phrases and boxes `caption generate --ground` stored (each phrase an entity "
                    "of its own; notvisual ones 0), so an uncaptioned collection can be pre-annotated, corrected in "
                    "any tool that reads the format, and ingested back.")
    add_workdir(e)
    e.add_argument("--split", required=True, help="the split to export")
    e.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new (or empty) folder to write into")
    e.add_argument("--generated", action="store_true",
                   help="write the generated captions and their grounded phrases instead of the human annotations")
    add_captioner(e)
    e.add_argument("--images", choices=IMAGE_MODES, default="link",
                   help="link: symbolic links to the image files; copy: copies; none: no images/ files "
                        "(default: %(default)s)")
    add_json(e)
    e.set_defaults(run=run_entities)


def run_entities(args: argparse.Namespace) -> int:
    from warehouse import SPLIT_NAMES, Catalog, export_entities

    if args.captioner is not None and not args.generated:
        raise UserError("--captioner chooses whose generated captions to write: give it with --generated")
    with Catalog.open(workdir_of(args), read_only=True) as catalog:
        report = export_entities(catalog, args.split, args.out, args.generated, args.captioner, args.images)
    if args.json:
        print_json(report.as_dict())
        return 0
    print(f"{report.out}: {report.images:,} images of {report.split} ({report.source}): {report.captions:,} captions, "
          f"{report.phrases:,} phrases, {report.boxes:,} boxes")
    if args.generated and report.phrases == 0:
        print("  no phrases were stored with these captions: run `groundex caption generate --ground` first")
    if report.split not in SPLIT_NAMES:
        print(f"  note: `ingest flickr30k` reads the splits of {', '.join(f'{s}.txt' for s in SPLIT_NAMES)}: rename "
              f"{report.split}.txt to one of them for its images to keep a split")
    if args.images == "none":
        print(f"  note: no image files written: put them in {report.out / 'images'} before ingesting it back")
    return 0
