"""`groundex demo`: build a working workdir from the embedded default, no download needed."""

from __future__ import annotations

import argparse
import time

import warehouse
from warehouse import ArtefactError, Catalog, IngestConfig

from ._common import add_workdir, phrase_line, workdir_of
from ._options import add_no_progress
from .ingest import add_synthetic_options, synthetic_config

DEMO_QUERY = "a black dog on the grass"
DEMO_PHRASE = "a black dog"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from heads.config import CaptionerConfig

    p = sub.add_parser(
        "demo", help="build a demo workdir from the embedded synthetic scenes",
        description="Generate the synthetic scenes dataset (Flickr30k Entities format), ingest it, train the tiny "
                    "CLIP on its train split (global and phrase-region objectives), index everything, evaluate "
                    "retrieval on val, choose the grounding parameters on val and evaluate grounding, tag every "
                    "image (kNN) and evaluate the taggers, train the retrieval-augmented captioner, evaluate it and "
                    "caption every image, train the phrase chunker on the phrase markup and store each generated "
                    "caption's phrases grounded in its image, and run a sample query and a sample phrase -> region "
                    "search. Safe to run again: finished steps are skipped.")
    add_workdir(p)
    add_synthetic_options(p, seed_help="seed of the generated scenes, of training and of the captioner")
    p.add_argument("--epochs", type=int, default=25, help="training epochs (default: %(default)s)")
    p.add_argument("--caption-epochs", type=int, default=CaptionerConfig.epochs,
                   help="captioner training epochs (default: %(default)s)")
    p.add_argument("--query", default=DEMO_QUERY, help="the sample text query")
    p.add_argument("--phrase", default=DEMO_PHRASE, help="the sample phrase to ground")
    add_no_progress(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from grounding import Grounder, evaluate_grounding
    from heads import open_chunker, train_workdir_chunker
    from heads.captioning import caption_workdir, evaluate_captions, find_captioner, train_captioner
    from heads.config import CaptionerConfig
    from heads.tagging import evaluate_tags, tag_workdir
    from indexer.config import EmbedConfig, TrainConfig
    from indexer.evaluate import evaluate_retrieval
    from indexer.pipeline import index_workdir
    from indexer.search import Searcher
    from indexer.train import train

    workdir = workdir_of(args)
    started = time.perf_counter()
    print(f"[1/7] synthetic scenes: {args.n} images, seed {args.seed} -> {workdir.root}")
    progress = not args.no_progress
    report = warehouse.ingest_synthetic(workdir, synthetic_config(args), IngestConfig(progress=progress))
    print(f"      {report.added:,} added, {report.already_present:,} already present, {report.rejected:,} rejected")
    with Catalog.open(workdir, read_only=True) as catalog:
        counts = catalog.counts()
        trained = [m for m in catalog.models() if m.metrics and m.info.get("mode") == "full"]
    if trained:
        print(f"[2/7] model {trained[0].id} already trained; skipping (`groundex model remove` it to retrain)")
    else:
        print(f"[2/7] training the tiny CLIP for {args.epochs} epochs on {counts['splits'].get('train', 0):,} images")
        result = train(workdir, TrainConfig(epochs=args.epochs, seed=args.seed, progress=progress))
        print(f"      model {result.model_id}: best epoch {result.best['epoch']}, {result.seconds:.0f} s")
    print("[3/7] embedding and indexing every image and caption")
    indexed = index_workdir(workdir, config=EmbedConfig(progress=progress))
    print(f"      {indexed['embedded_images']:,} images and {indexed['embedded_captions']:,} captions embedded")
    metrics = evaluate_retrieval(workdir, "val")
    chance = 100 * min(10, metrics["images"]) / metrics["images"]
    print(f"[4/7] val retrieval over {metrics['images']} images: text->image R@1/5/10 = "
          + "/".join(f"{v:.1f}" for v in metrics["text_to_image"].values())
          + f" (chance R@10 = {chance:.1f}); image->text R@10 = {metrics['image_to_text']['R@10']:.1f}")
    grounding = evaluate_grounding(workdir, "val", tune_params=True, progress=progress)
    print(f"[5/7] val grounding over {grounding['phrases']:,} phrases (parameters chosen on val): pointing game "
          f"{grounding['pointing_game']:.1f} (centre baseline {grounding['baselines']['center']['pointing_game']:.1f})"
          f", box acc@0.5 any-box {grounding['box_acc@0.5']:.1f} / merged-box {grounding['box_acc@0.5_merged']:.1f} "
          f"(whole image {grounding['baselines']['whole_image']['box_acc@0.5']:.1f} / "
          f"{grounding['baselines']['whole_image']['box_acc@0.5_merged']:.1f})")
    tags = evaluate_tags(workdir, "val", methods=("knn", "probe", "zeroshot"))
    tagged = tag_workdir(workdir, "knn", progress=progress)
    m = tags["methods"]
    print(f"[6/7] tags: {tagged['vocabulary']} keywords, {tagged['tags']:,} kNN tags stored; val micro-F1 / mAP: "
          + ", ".join(f"{name} {m[name]['micro_f1']:.1f} / {m[name]['mAP']:.1f}" for name in ("knn", "probe",
                                                                                         "zeroshot", "prior")))
    try:
        captioner_id = find_captioner(workdir).id
        print(f"[7/7] captioner {captioner_id} already trained; skipping training")
    except ArtefactError:  # none trained yet
        print(f"[7/7] training the retrieval-augmented captioner for {args.caption_epochs} epochs")
        trained = train_captioner(workdir, CaptionerConfig(epochs=args.caption_epochs, seed=args.seed),
                                  progress=progress)
        captioner_id = trained["captioner_id"]
        print(f"      captioner {captioner_id}: {trained['train_seconds']:.0f} s")
    captions = evaluate_captions(workdir, "val", captioner_id, ks=(0, 1), progress=progress)
    c = captions["methods"]
    print(f"      val BLEU-4 / CIDEr: retrieval-augmented (k={captions['k']}) {c['retrieval_augmented']['BLEU-4']:.1f} "
          f"/ {c['retrieval_augmented']['CIDEr']:.1f}, no retrieval {c['no_retrieval']['BLEU-4']:.1f} / "
          f"{c['no_retrieval']['CIDEr']:.1f}, nearest caption {c['nearest_caption']['BLEU-4']:.1f} / "
          f"{c['nearest_caption']['CIDEr']:.1f}")
    try:
        chunker_id = open_chunker(workdir).id
        print(f"      phrase chunker {chunker_id} already trained; skipping training")
    except ArtefactError:  # none trained yet
        chunked = train_workdir_chunker(workdir, progress=progress)
        chunker_id = chunked["chunker_id"]
        print(f"      phrase chunker {chunker_id}: val span F1 {chunked['val']['f1']:.1f} (rule baseline "
              f"{chunked['rule_val']['f1']:.1f}), {chunked['seconds']:.0f} s")
    generated = caption_workdir(workdir, captioner_id, ground=True, chunker=chunker_id, progress=progress)
    example = generated["examples"][0]
    print(f"      {generated['stored']:,} generated captions stored with {generated['grounded']['phrases']:,} grounded "
          f"phrases, e.g. image {example['image_id']}: {example['caption']!r}")
    for p in example["phrases"]:
        print(f"        {phrase_line(p)}")
    print(f"\nsample query: {args.query!r}")
    for rank, hit in enumerate(Searcher(workdir).text_to_image(args.query, k=5), 1):
        print(f"  {rank}. {hit.score:.3f}  image {hit.id} [{hit.split}]  {hit.captions[0] if hit.captions else ''}")
    print(f"\nsample phrase -> region: {args.phrase!r}")
    for rank, g in enumerate(Grounder(workdir).search(args.phrase, k=3), 1):
        b = g.boxes[0]
        print(f"  {rank}. {g.score_label()}  image {g.image_id} [{g.split}]  box ({b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, "
              f"{b.y2:.0f}) of {g.width}x{g.height}")
    print(f"\ndemo workdir ready in {time.perf_counter() - started:.0f} s: {counts['images']:,} images, "
          f"{counts['captions']:,} captions, {counts['phrases']:,} phrases, {counts['boxes']:,} boxes")
    root = workdir.root
    print(f"next: groundex search --workdir {root} \"a kid in a red sweater\" --where \"tag = 'dog'\"   |   "
          f"groundex ground --workdir {root} \"a yellow car\" -k 5   |   groundex info --workdir {root}")
    print(f"browse it: groundex ui --workdir {root}")
    return 0
