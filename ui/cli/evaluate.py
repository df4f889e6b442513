"""`groundex eval`: built-in evaluation on held-out data."""

from __future__ import annotations

import argparse

from ._common import UserError, add_workdir, print_json, workdir_of
from ._options import add_captioner, add_device, add_json, add_memory, add_model, add_no_progress, add_renamed
from .chunk import add_chunker, span_table


def _task(tasks: argparse._SubParsersAction, name: str, help: str, description: str, run,
          model: bool = True) -> argparse.ArgumentParser:
    """A `groundex eval` task with the options every task takes."""
    t = tasks.add_parser(name, help=help, description=description)
    add_workdir(t)
    t.add_argument("--split", required=True, help="the split to evaluate on (val, or test once choices are made)")
    if model:
        add_model(t)
    add_json(t)
    t.set_defaults(run=run)
    return t


def add_parser(sub: argparse._SubParsersAction) -> None:
    from heads.config import METHODS

    p = sub.add_parser("eval", help="evaluate on a split", description="Built-in evaluation on held-out data.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    _task(tasks, "retrieval", "recall@K, text->image and image->text",
          "Standard Flickr30k protocol on the split's images (gallery) and their captions (queries). "
          "Uses the embeddings stored by `groundex index`.", run_retrieval)
    g = _task(tasks, "grounding", "pointing game and box accuracy on Flickr30k Entities phrases",
              "Every phrase occurrence of the split whose entity has a box, given its image: pointing game "
              "(the heatmap's maximum inside one of its boxes; also within 15 px of one, Zhang et al.'s "
              "tolerance) and box accuracy at IoU 0.5 of the top box, any-box (IoU >= 0.5 with one of the "
              "phrase's boxes: MDETR's ANY-BOX) and merged-box (with the box enclosing them all: Plummer et al.'s "
              "protocol, MDETR's MERGED-BOX), overall and by phrase type, with the centre-point and whole-image "
              "baselines, in percent. --tune first chooses the heatmap-to-box parameters on this split "
              "(val) and saves them for the model; `groundex ground` then uses them.", run_grounding)
    g.add_argument("--tune", action="store_true", help="choose the parameters on this split first (not on test)")
    add_device(g)
    add_no_progress(g)
    t = _task(tasks, "tags", "micro-F1, macro-F1 and mAP of every tagger against the prior",
              "Fits each tagger on train, chooses kNN's K and every threshold on val, and scores the split's "
              "captioned images against their labels (the vocabulary words their captions mention), in "
              "percent; with the prior baseline (each tag at its training frequency). Thresholds: one global, and "
              "per tag (each tag with >= 5 positive val images; on val scored cross-fitted, chosen on one half and "
              "scored on the other). fusion hides an image's own captions; fusion_caption_assisted reads them, and "
              "the labels come from those captions, so it measures keyword extraction, not vision.", run_tags)
    t.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated taggers to evaluate (default: %(default)s)")
    add_device(t)
    c = _task(tasks, "captions", "BLEU-1..4, ROUGE-L and CIDEr of the captioner against its baselines",
              "Captions the split's images with the captioner (its retrieved captions), the same model without "
              "retrieved captions, and the nearest-neighbour-caption baseline (the caption of the nearest "
              "training image), and scores them against the split's human captions, in percent; also the "
              "captioner with each number of retrieved captions in --neighbours.", run_captions, model=False)
    add_captioner(c)
    c.add_argument("--neighbours", default="0,1,2,4", metavar="N,N,...",
                   help="comma-separated numbers of retrieved captions to score the captioner with; 0 and the "
                        "captioner's own are always scored (default: %(default)s)")
    c.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images of the split")
    c.add_argument("--baseline", default=None, metavar="CAPTIONER",
                   help="also score this captioner with no retrieved captions: one trained without retrieval "
                        "(`caption train --neighbours 0`) with the same budget is the honest baseline")
    c.add_argument("--beams", type=int, default=None,
                   help="beam search width for every captioner scored (default: each captioner's own setting)")
    add_memory(c)
    add_device(c)
    add_no_progress(c)
    add_renamed(c, "--ks", "--neighbours (numbers of retrieved captions)")
    k = _task(tasks, "chunks", "phrase chunker: span F1 and type accuracy, then box accuracy of grounded chunks",
              "Chunks the split's human captions that carry phrase markup and scores the chunks against the annotated "
              "phrases: exact-match span precision, recall and F1, and the type accuracy of the matched spans (right "
              "when the type is one of the annotated ones), beside the rule baseline (phrases between function words, "
              "typed by their last word). Then grounds every chunk that matches an annotated phrase with a box in "
              "its image, through the same path as `caption generate --ground` (the box head's best box), and "
              "reports box accuracy at IoU 0.5 (any-box) of the matched chunks, of all annotated phrases grounded the "
              "same way, and end to end (an annotated phrase no chunk matches is a miss).", run_chunks)
    add_chunker(k)
    k.add_argument("--no-ground", action="store_true", help="chunk only: no model, no boxes")
    k.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N captions of the split")
    add_device(k)
    add_no_progress(k)


def run_retrieval(args: argparse.Namespace) -> int:
    from indexer.evaluate import evaluate_retrieval

    result = evaluate_retrieval(workdir_of(args), args.split, args.model)
    if args.json:
        print_json(result)
        return 0
    print(f"split {result['split']}: {result['images']:,} images, {result['queries']:,} caption queries, "
          f"model {result['model_id']}")
    for task in ("text_to_image", "image_to_text"):
        print(f"  {task:<14} " + "  ".join(f"{k} {v:5.1f}" for k, v in result[task].items()))
    return 0


def run_grounding(args: argparse.Namespace) -> int:
    from grounding import evaluate_grounding

    result = evaluate_grounding(workdir_of(args), args.split, args.model, tune_params=args.tune,
                                device=args.device, progress=not args.no_progress)
    if args.json:
        print_json(result)
        return 0
    base = result["baselines"]
    print(f"split {result['split']}: {result['phrases']:,} phrases with boxes in {result['images']:,} images, "
          f"model {result['model_id']}" + (" (parameters tuned on this split)" if args.tune else ""))
    print(f"  {'':<12} {'phrases':>8} {'pointing':>9} {'15px':>6} {'centre':>7} {'any-box':>8} {'merged':>7} "
          f"{'whole':>6}")
    rows = [("all", result["phrases"], result, base["center"]["pointing_game"], base["whole_image"]["box_acc@0.5"])]
    rows += [(t, v["phrases"], v, v["center_pointing_game"], v["whole_image_box_acc@0.5"])
             for t, v in result["by_type"].items()]
    for name, n, r, centre, whole in rows:
        print(f"  {name:<12} {n:>8,} {r['pointing_game']:>9.1f} {r.get('pointing_game_15px', float('nan')):>6.1f} "
              f"{centre:>7.1f} {r['box_acc@0.5']:>8.1f} {r.get('box_acc@0.5_merged', float('nan')):>7.1f} "
              f"{whole:>6.1f}")
    for key, chosen, other in (("heatmap_path", "the model's box head", "the heatmap"),
                               ("box_head_path", "the heatmap", "the model's box head")):
        if key in result:
            h = result[key]
            print(f"  points and boxes from {chosen}; from {other} instead: pointing {h['pointing_game']:.1f}, "
                  f"any-box {h['box_acc@0.5']:.1f}, merged {h['box_acc@0.5_merged']:.1f}")
    print("  pointing: no pixel tolerance; 15px: within 15 px of a box (Zhang et al.). any-box: IoU >= 0.5 with one "
          "of the phrase's boxes; merged: with their enclosing box (Plummer et al.; docs/grounding.md)")
    return 0


def run_tags(args: argparse.Namespace) -> int:
    from heads.tagging import evaluate_tags

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    result = evaluate_tags(workdir_of(args), args.split, args.model, methods, device=args.device)
    if args.json:
        print_json(result)
        return 0
    print(f"split {result['split']}: {result['images']:,} captioned images, {result['vocabulary']} keywords "
          f"({result['labels_per_image']} labels per image), model {result['model_id']}")
    per_tag_header = "per-tag thresholds (one threshold), both cross-fitted on val" if result["split"] == "val" \
        else "per-tag thresholds chosen on val"
    print(f"  {'method':<26} {'micro-F1':>9} {'macro-F1':>9} {'mAP':>6} {'threshold':>10}   micro-F1 / macro-F1 with "
          + per_tag_header)
    for name, m in result["methods"].items():
        k = f" (K={m['k']})" if m.get("k") else ""
        per_tag = m.get("per_tag")
        one = f" ({per_tag['one_threshold_micro_f1']:.1f} / {per_tag['one_threshold_macro_f1']:.1f})" \
            if per_tag and "one_threshold_micro_f1" in per_tag else ""
        tail = f"   {per_tag['micro_f1']:.1f} / {per_tag['macro_f1']:.1f}{one}" if per_tag else \
            "   (caption-assisted: reads the captions the labels come from)" if m.get("caption_assisted") else ""
        print(f"  {name + k:<26} {m['micro_f1']:>9.1f} {m['macro_f1']:>9.1f} {m['mAP']:>6.1f} {m['threshold']:>10.2f}"
              + tail)
    return 0


def run_captions(args: argparse.Namespace) -> int:
    from heads.captioning import evaluate_captions

    try:
        ks = tuple(int(k) for k in args.neighbours.split(",") if k.strip())
    except ValueError:
        raise UserError(f"--neighbours takes comma-separated integers, got {args.neighbours!r}") from None
    if any(k < 0 for k in ks):
        raise UserError(f"--neighbours must be >= 0, got {args.neighbours!r}")
    if args.beams is not None and args.beams < 1:
        raise UserError(f"--beams must be >= 1, got {args.beams}")
    result = evaluate_captions(workdir_of(args), args.split, args.captioner, ks, args.limit, device=args.device,
                               progress=not args.no_progress, memory=args.memory, baseline_id=args.baseline,
                               beams=args.beams)
    if args.json:
        print_json(result)
        return 0
    print(f"split {result['split']}: {result['images']:,} images, captioner {result['captioner_id']} "
          f"(k={result['k']}, {result['beams']} beams), embedding model {result['model_id']}")
    memory = result["memory"]
    print(f"  caption memory {memory['memory']}: {memory['captions']:,} captions of {memory['images']:,} images "
          "(never an image's own)")
    names = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")
    print(f"  {'':<22}" + "".join(f"{n:>9}" for n in names))
    rows = list(result["methods"].items()) + [(f"k={k}", m) for k, m in result["by_k"].items()]
    for name, m in rows:
        print(f"  {name:<22}" + "".join(f"{m[n]:>9.1f}" for n in names))
    print("first images of the split (not chosen): the captioner's prompt (retrieved captions) and its caption")
    for example in result["examples"][:3]:
        print(f"  image {example['image_id']}: {example['retrieval_augmented']!r}  (no retrieval: "
              f"{example['no_retrieval']!r})")
        for text in example["retrieved"]:
            print(f"      prompt: {text}")
    return 0


def run_chunks(args: argparse.Namespace) -> int:
    from heads import evaluate_chunks

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    result = evaluate_chunks(workdir_of(args), args.split, args.chunker, args.model, ground=not args.no_ground,
                             limit=args.limit, device=args.device, progress=not args.no_progress)
    if args.json:
        print_json(result)
        return 0
    print(span_table({f"chunker {result['chunker_id']}": result["chunker"], "rule baseline": result["rule"]},
                     f"{result['split']} ({result['captions']:,} captions)"))
    g = result.get("grounding")
    if g:
        print(f"\nbox acc@0.5 (any-box), model {g['model_id']}, {g['phrases_with_boxes']:,} annotated phrases with "
              f"boxes, {g['matched_with_boxes']:,} matched by a chunk:")
        print(f"  matched chunks                     {g['box_acc@0.5_matched_chunks']:5.1f}")
        print(f"  the same phrases, annotated spans  {g['box_acc@0.5_same_annotated_phrases']:5.1f}")
        print(f"  all annotated phrases              {g['box_acc@0.5_annotated_phrases']:5.1f}")
        print(f"  end to end (unmatched = miss)      {g['box_acc@0.5_end_to_end']:5.1f}")
    return 0
