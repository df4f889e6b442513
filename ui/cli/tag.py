"""`groundex tag`: keyword tags for the collection's images, stored in the catalog."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ._common import add_workdir, print_json, workdir_of
from ._options import add_device, add_json, add_model, add_no_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    from heads.config import METHODS, TaggingConfig

    d = TaggingConfig()
    p = sub.add_parser(
        "tag", help="predict keyword tags for the images and store them in the catalog",
        description="Mines the keyword vocabulary from the training captions, fits the tagger on the train split's "
                    "image embeddings and chooses its threshold (and kNN's K among 1, 3, 5, 7, 11, 21, 31, 51) on "
                    "val, then tags every image of --split (default: all, captioned or not) and stores the tags at or "
                    "above the threshold in the catalog (earlier tags of the same method and images are replaced). "
                    "Search filters read them: --where \"tag = 'dog'\". Needs `groundex index` first.")
    add_workdir(p)
    p.add_argument("--method", choices=METHODS, default="knn",
                   help="knn: votes of the nearest training images; probe: linear probe on the image embedding; "
                        "zeroshot: 'a photo of a {tag}' prompts; fusion: probe on image + caption embeddings "
                        "(own captions where the image has them, else its neighbours': on captioned images it is "
                        "caption-assisted, the labels come from those captions) (default: %(default)s)")
    p.add_argument("--split", default=None, help="tag only this split's images (default: all)")
    add_model(p, "embedding model")
    p.add_argument("--min-images", type=int, default=d.vocabulary.min_images,
                   help="vocabulary: keep words that at least this many training images mention (default: "
                        "%(default)s)")
    p.add_argument("--max-tags", type=int, default=d.max_tags,
                   help="store at most this many tags per image (default: %(default)s)")
    p.add_argument("--keywords", default=None, metavar="WORDS|FILE",
                   help="your own keyword vocabulary instead of one mined from the captions: comma-separated words, "
                        "or a text file with one per line. With --method zeroshot this tags collections without "
                        "any captions (any model, trained here or added with `groundex model add`)")
    z = math.log(d.untuned_threshold / (1 - d.untuned_threshold))  # the z-score whose sigmoid is the threshold
    top = 50 * (1 - math.erf(z / math.sqrt(2)))  # percent of a normal distribution above z
    p.add_argument("--threshold", type=float, default=None,
                   help="zeroshot without captioned val images: keep a tag when sigmoid(z) of its prompt's match, "
                        f"standardized over the collection, reaches this (default: {d.untuned_threshold}, {z:.1f} "
                        f"standard deviations above the collection's usual match: about the top {top:.0f}%% of images "
                        "per keyword); with captioned val images it is chosen on val")
    p.add_argument("--per-tag-thresholds", action="store_true",
                   help="give each tag with >= 5 positive val images a threshold of its own, chosen on val for its "
                        "F1 (default: one threshold for all; `groundex eval tags` shows both, per-tag ones scored "
                        "cross-fitted on val, so you can see whether your val split is large enough for them)")
    add_device(p)
    add_no_progress(p)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from heads.config import TaggingConfig, VocabularyConfig
    from heads.tagging import tag_workdir

    keywords = None
    if args.keywords is not None:
        path = Path(args.keywords).expanduser()
        text = path.read_text() if path.is_file() else args.keywords.replace(",", "\n")
        keywords = tuple(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    options = {"untuned_threshold": args.threshold} if args.threshold is not None else {}
    config = TaggingConfig(vocabulary=VocabularyConfig(min_images=args.min_images), max_tags=args.max_tags,
                           keywords=keywords, per_tag_thresholds=args.per_tag_thresholds, **options)
    result = tag_workdir(workdir_of(args), args.method, args.model, args.split, config, device=args.device,
                         progress=not args.no_progress)
    if args.json:
        print_json(result)
        return 0
    choice = f"K={result['k']}, " if result["k"] else ""
    val = result["val"]
    if val.get("threshold") == "untuned":
        print(f"{result['method']}: {result['tags']:,} tags stored for {result['images']:,} images "
              f"({result['vocabulary']} given keywords; threshold {result['threshold']:.2f}, not tuned: no captioned "
              "val images)")
        return 0
    print(f"{result['method']}: {result['tags']:,} tags stored for {result['images']:,} images "
          f"({result['vocabulary']} keywords; {choice}threshold {result['threshold']:.2f} chosen on val: "
          f"micro-F1 {val['micro_f1']:.1f}, macro-F1 {val['macro_f1']:.1f}, mAP {val['mAP']:.1f}"
          + (f"; {val['tags_with_own_threshold']} tags with a threshold of their own" if
             "tags_with_own_threshold" in val else "") + ")")
    if result.get("caption_assisted_images"):
        print(f"  caption-assisted: {result['caption_assisted_images']:,} of these images were tagged from their own "
              "captions as well as their pixels (fusion reads an image's captions where it has some)")
    return 0
