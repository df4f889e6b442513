"""`groundex search`: text -> image, image -> image, image -> text."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UserError, add_workdir, print_json, workdir_of
from ._options import add_device, add_json, add_k, add_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search images by text or image, or captions by image",
        description="Text -> image by default; --image PATH or --image-id ID for image -> image; add --captions "
                    "for image -> text. --where filters on catalog columns of `images` (id, split, dataset, "
                    "width, height, path, key) and still returns k hits when k images match.")
    add_workdir(p)
    p.add_argument("query", nargs="?", help="text query")
    p.add_argument("--image", type=Path, help="query with this image file")
    p.add_argument("--image-id", type=int, help="query with this catalog image (its stored embedding)")
    p.add_argument("--captions", action="store_true", help="return captions (image -> text)")
    add_k(p, "hits")
    p.add_argument("--where", default=None, help="SQL condition on images, e.g. \"split = 'val'\"")
    add_model(p)
    add_device(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from indexer.search import Searcher

    given = sum(x is not None for x in (args.query, args.image, args.image_id))
    if given != 1:
        raise UserError("give exactly one of: a text query, --image PATH, --image-id ID")
    if args.captions and args.query is not None:
        raise UserError("--captions searches captions with an image query (--image or --image-id)")
    searcher = Searcher(workdir_of(args), args.model, device=args.device)
    image = args.image if args.image is not None else args.image_id
    if args.query is not None:
        hits = searcher.text_to_image(args.query, args.k, args.where)
    elif args.captions:
        hits = searcher.image_to_text(image, args.k, args.where)
    else:
        hits = searcher.image_to_image(image, args.k, args.where)
    if args.json:
        print_json({"model_id": searcher.model_id, "hits": [h.as_dict() for h in hits]})
        return 0
    if not hits:
        print("no hits")
    for rank, h in enumerate(hits, 1):
        what = h.text if h.text is not None else (h.captions[0] if h.captions else "")
        print(f"{rank:>3}. {h.score:.3f}  image {h.image_id} [{h.split}] {h.path}\n       {what}")
    return 0
