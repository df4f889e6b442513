"""`groundex ground`: which part of an image shows a phrase, in one image or across the collection."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UserError, add_workdir, print_json, workdir_of
from ._options import add_device, add_json, add_k, add_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    from grounding.config import DEFAULT_SHORTLIST

    p = sub.add_parser(
        "ground", help="find the region that shows a phrase (one image or the whole collection)",
        description="With --image-id or --image: the phrase's heatmap, point and boxes in that image (--out saves "
                    "an overlay PNG). Without: phrase -> region search over the collection: candidate images come "
                    "from the index of all patch vectors (or, with --method two-stage, from the image index), --where "
                    "filters them, every patch of each candidate is scored exactly, images rank by their best "
                    "patch's cosine plus W x the image's global cosine (--rank-global W; with W > 0 the images "
                    "nearest overall are candidates too), and the top k (image, box, score) come back (--out DIR "
                    "saves one overlay per hit, --save stores them in the catalog's regions table). Boxes are in "
                    "the stored image's pixels. The heatmap-to-box parameters are those chosen on val by "
                    "`groundex eval grounding --split val --tune`.")
    add_workdir(p)
    p.add_argument("phrase", help='the phrase to ground, e.g. "the man in the red jacket"')
    p.add_argument("--image-id", type=int, help="ground in this catalog image")
    p.add_argument("--image", type=Path, help="ground in this image file")
    add_k(p, "regions (collection search)")
    p.add_argument("--where", default=None, help="collection search: SQL condition on images, e.g. \"split = 'val'\"")
    p.add_argument("--method", choices=("auto", "patch-index", "two-stage"), default="auto",
                   help="collection search: where candidates come from; auto: the patch index when `groundex index` "
                        "built one (default: auto)")
    p.add_argument("--shortlist", type=int, default=None,
                   help=f"two-stage: images shortlisted by the image index (default: {DEFAULT_SHORTLIST}, or k if "
                        "larger)")
    p.add_argument("--rank-global", type=float, default=None, metavar="W",
                   help="collection search: rank images by best patch cosine + W x the image's global cosine "
                        "(default: the grounding config's rank_global, 0.25 unless set there; 0: the best patch alone; "
                        "docs/grounding.md, \"Ranking images for a phrase\")")
    p.add_argument("--out", type=Path, default=None,
                   help="overlay PNG (one image), or a folder of overlays (collection search)")
    p.add_argument("--save", action="store_true", help="collection search: store the regions in the catalog")
    p.add_argument("--heatmap", action="store_true", help="include the patch-grid heatmap in --json output")
    add_model(p)
    add_device(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from grounding import DEFAULT_SHORTLIST, Grounder

    if args.image_id is not None and args.image is not None:
        raise UserError("give at most one of --image-id and --image")
    single = args.image_id is not None or args.image is not None
    if single and (args.where or args.save or args.shortlist is not None or args.method != "auto"
                   or args.rank_global is not None):
        raise UserError("--where, --method, --shortlist, --rank-global and --save are for collection search (without "
                        "--image or --image-id)")
    grounder = Grounder(workdir_of(args), args.model, device=args.device)
    if single:
        results = [grounder.ground(args.phrase, args.image_id if args.image_id is not None else args.image)]
    else:
        results = grounder.search(args.phrase, args.k, args.where, args.shortlist or max(DEFAULT_SHORTLIST, args.k),
                                  args.method, args.rank_global)
    if args.out is not None:
        _write_overlays(results, args.out, single, args.image)
    saved = grounder.save(args.phrase, results) if args.save else 0
    if args.json:
        print_json({"model_id": grounder.model_id, "phrase": args.phrase, "config": grounder.config.__dict__,
                    "results": [g.as_dict(heatmap=args.heatmap) for g in results], "saved": saved})
        return 0
    if not results:
        print("no images match")
    for rank, g in enumerate(results, 1):
        where = f"image {g.image_id}" if g.image_id is not None else str(g.path)
        top = g.boxes[0]
        print(f"{rank:>3}. {g.score_label()}  {where}  box ({top.x1:.0f}, {top.y1:.0f}, {top.x2:.0f}, {top.y2:.0f})"
              f"  point ({g.point[0]:.0f}, {g.point[1]:.0f})" + (f"  {g.path}" if g.image_id is not None else ""))
        for b in g.boxes[1:]:
            print(f"       also ({b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}) {b.score:.3f}")
    if saved:
        print(f"stored {saved} regions in the catalog")
    if grounder.config.tuned_on is None:
        print("note: default heatmap-to-box parameters; choose them for this model with "
              f"`groundex eval grounding --workdir {args.workdir} --split val --tune`")
    return 0


def _write_overlays(results: list, out: Path, single: bool, image_file: Path | None) -> None:
    from grounding import render_overlay
    from warehouse import load_image

    if single:
        if out.suffix.lower() != ".png":
            raise UserError(f"--out {out}: give a .png file name")
        out.parent.mkdir(parents=True, exist_ok=True)
        g = results[0]
        render_overlay(load_image(g.path or image_file), g).save(out)
        print(f"overlay written to {out}")
        return
    if out.suffix:
        raise UserError(f"--out {out}: collection search writes one PNG per hit into a folder; give a folder name")
    out.mkdir(parents=True, exist_ok=True)
    for rank, g in enumerate(results, 1):
        render_overlay(load_image(g.path), g).save(out / f"{rank:03d}-image-{g.image_id}.png")
    print(f"{len(results)} overlays written to {out}/")
