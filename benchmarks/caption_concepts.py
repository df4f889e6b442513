"""Does retrieval teach the captioner words its training never showed it? (issue 21, SmallCap's promise)

    python benchmarks/caption_concepts.py --workdir W --concepts car,purple [--epochs 10] [--copy]
                                          [--copy-substitution P] [--reference CAPTIONER] [--out docs/results/x.json]
                                          [--substitute-all] [--captioners RA,PLAIN] [--min-new-tokens N]
                                          [--held-back-images N]

Two decoders are trained with the default recipe (--copy: with the copy head) on the train images whose captions
never mention the concepts (`CaptionerConfig.exclude_words`; plurals count): one retrieval-augmented (the
default k), one without retrieval (k = 0), same epochs and seed. In training they retrieve from their own training
images, so the concepts appear nowhere in it. Afterwards the caption memory is every train caption, so the images
left out of training lend their captions to their neighbours. Then, for the val images whose human captions
mention a concept, and for the train images held back from the decoders (their own captions never in their memory):
- how often the generated caption names the concept (per concept and overall): retrieval-augmented (RA), the
  decoder trained without retrieval, the RA weights with no retrieved captions (k = 0), and the nearest memory
  caption returned as is;
- yardsticks: how often the images' own human captions name their concept, and how often the RA decoder's retrieved
  prompt (as far as it reads it) does, with each method's naming share over those images only (a retrieval that
  missed apart from a decoder that did not copy);
- CIDEr against the images' human captions;
- on the images whose human captions name no concept (the other val images), how often a caption names one
  anyway (`named_where_absent_pct`): copying the held-out words everywhere would name them often where they are.
On the other val images (no concept), CIDEr of the RA decoder against --reference (a captioner trained on every
train image, e.g. the demo's): what leaving the concepts out costs elsewhere. All in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from heads.caption_metrics import caption_metrics  # noqa: E402
from heads.captioning import Captioner, mentions, train_captioner  # noqa: E402
from heads.config import CaptionerConfig  # noqa: E402
from warehouse import Catalog, Workdir  # noqa: E402


def image_sets(workdir: Workdir, concepts: tuple[str, ...]) -> dict[str, dict[int, list[str]]]:
    """Image id -> human captions, for: val images naming a concept, train images naming one (held back from the
    decoders), and val images naming none."""
    sets: dict[str, dict[int, list[str]]] = {"val_concept": {}, "train_held_back": {}, "val_other": {}}
    with Catalog.open(workdir, read_only=True) as catalog:
        for split in ("train", "val"):
            by_image: dict[int, list[str]] = {}
            for _, image_id, text in catalog.caption_rows(split):
                by_image.setdefault(image_id, []).append(text)
            for image_id, texts in by_image.items():
                named = any(mentions(t, concepts) for t in texts)
                name = ("val_concept" if named else "val_other") if split == "val" else \
                    ("train_held_back" if named else None)
                if name:
                    sets[name][image_id] = texts
    return sets


def score(captions: list[str], references: list[list[str]], concepts: tuple[str, ...],
          prompts: list[list[str]]) -> dict:
    """CIDEr / BLEU-4, and per concept the share of its images (those whose references name it; an image naming two
    concepts counts once for each) whose caption names it, with two yardsticks:
    - `references_name_pct`: the share of those images' human captions that name it (an annotator's own rate: the
      images are chosen by any one of their captions naming the concept, and the others may say "bicycle");
    - `prompt_names_pct`: how often `prompts` (the RA decoder's retrieved captions, as far as it reads them) name it,
      and `named_where_prompt_names_pct`: the naming share over those images only, which tells a retrieval that
      missed from a decoder that did not copy.
    Percentages are computed from counts, and None where there is nothing to count."""
    named, totals = {}, np.zeros(5)  # images, named, references naming (share), prompt names, named where it does
    for concept in concepts:
        rows = [i for i, refs in enumerate(references) if any(mentions(r, (concept,)) for r in refs)]
        if not rows:
            continue
        says = np.array([bool(mentions(captions[i], (concept,))) for i in rows])
        shown = np.array([any(mentions(p, (concept,)) for p in prompts[i]) for i in rows])
        refs_share = np.array([np.mean([bool(mentions(r, (concept,))) for r in references[i]]) for i in rows])
        counts = np.array([len(rows), says.sum(), refs_share.sum(), shown.sum(), (says & shown).sum()], dtype=float)
        totals += counts
        named[concept] = _shares(counts)
    overall = _shares(totals)
    # naming a concept where no reference does: a decoder that copies the held-out words everywhere names them
    # often where they are, too, so the share above only counts next to this one
    unshown = [i for i, refs in enumerate(references) if not any(mentions(r, concepts) for r in refs)]
    wrongly = np.mean([bool(mentions(captions[i], concepts)) for i in unshown]) if unshown else None
    metrics = caption_metrics(captions, references)
    overall.pop("images")
    return {"CIDEr": metrics["CIDEr"], "BLEU-4": metrics["BLEU-4"], **overall, "by_concept": named,
            "named_where_absent_pct": None if wrongly is None else round(100 * float(wrongly), 1)}


def _shares(counts: np.ndarray) -> dict:
    """Percentages from (images, named, references naming, prompt names, named where it does); None over nothing."""
    images, says, refs, shown, both = counts

    def pct(part: float, whole: float) -> float | None:
        return round(100 * part / whole, 1) if whole else None

    return {"images": int(images), "named_pct": pct(says, images), "references_name_pct": pct(refs, images),
            "prompt_names_pct": pct(shown, images), "named_where_prompt_names_pct": pct(both, shown)}


def shown_prompts(tokenizer, retrieved: list[list[str]], max_tokens: int) -> list[list[str]]:
    """The retrieved captions as far as the decoder reads them (each cut to `max_tokens` tokens, as `encode_batch`
    cuts them), back as text."""
    return [[tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens]) for t in texts]
            for texts in retrieved]


def _pct(value: float | None) -> str:
    return "     -" if value is None else f"{value:5.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--concepts", required=True, help="comma-separated words (chosen on train/val counts)")
    parser.add_argument("--epochs", type=int, default=CaptionerConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copy", action="store_true", help="decoders with the copy head (CaptionerConfig.copy)")
    parser.add_argument("--copy-substitution", type=float, default=0.0, metavar="P",
                        help="with --copy: CaptionerConfig.copy_substitution (placeholders the pointer must copy)")
    parser.add_argument("--reference", default=None, help="a captioner trained on every train image")
    parser.add_argument("--captioners", default=None, metavar="RA,PLAIN",
                        help="decoders an earlier run trained (its captioner ids, in that order): decode again, "
                             "no training; leave one empty (',PLAIN') to train that one")
    parser.add_argument("--substitute-all", action="store_true",
                        help="with --copy-substitution: every shared content word "
                             "(CaptionerConfig.copy_substitute_all)")
    parser.add_argument("--min-new-tokens", type=int, default=None, metavar="N",
                        help="decoding: at least N new tokens, for every captioner (default: each one's own)")
    parser.add_argument("--held-back-images", type=int, default=None, metavar="N",
                        help="decode a random N of the held-back train images (seeded by --seed; default all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    workdir = Workdir(args.workdir)
    concepts = tuple(c.strip().lower() for c in args.concepts.split(",") if c.strip())
    sets = image_sets(workdir, concepts)
    held_back = sets["train_held_back"]
    report_held_back = len(held_back)
    if args.held_back_images is not None and args.held_back_images < 1:
        parser.error("--held-back-images must be >= 1")
    if args.held_back_images is not None and len(held_back) > args.held_back_images:
        # the decoders are trained without all of them; only the decoding is limited to a sample
        chosen = np.random.default_rng(args.seed).choice(sorted(held_back), args.held_back_images, replace=False)
        sets["train_held_back"] = {int(i): held_back[int(i)] for i in chosen}
    print("images: " + ", ".join(f"{name} {len(ids)}" for name, ids in sets.items()), flush=True)
    report: dict = {"concepts": list(concepts), "epochs": args.epochs, "copy": args.copy,
                    "copy_substitution": args.copy_substitution,
                    "images": {n: len(s) for n, s in sets.items()}, "held_back_from_training": report_held_back,
                    "decoders": {}, "sets": {}}
    report["min_new_tokens"] = args.min_new_tokens
    decoders = {}
    earlier = (args.captioners.split(",") + [""])[:2] if args.captioners else None
    for n, (name, k) in enumerate((("retrieval_augmented", CaptionerConfig.k), ("trained_without_retrieval", 0))):
        if earlier and earlier[n].strip():
            decoders[name] = Captioner(workdir, earlier[n])
            report["decoders"][name] = {"captioner_id": decoders[name].id, "trained_by": "an earlier run"}
            continue
        started = time.perf_counter()
        trained = train_captioner(workdir, CaptionerConfig(exclude_words=concepts, k=k, epochs=args.epochs,
                                                           seed=args.seed, copy=args.copy,
                                                           copy_substitution=args.copy_substitution,
                                                           copy_substitute_all=args.substitute_all),
                                  progress=False, resume=False)
        decoders[name] = Captioner(workdir, trained["captioner_id"])
        report["decoders"][name] = {"captioner_id": trained["captioner_id"], "train_images": trained["train_images"],
                                    "best_val_loss": trained["best_val_loss"],
                                    "seconds": round(time.perf_counter() - started, 1)}
        print(f"trained {name}: {report['decoders'][name]}", flush=True)
    ra, plain = decoders["retrieval_augmented"], decoders["trained_without_retrieval"]
    # the report says how the RA decoder was trained (an earlier run's, too), not what this command line would have
    report.update(epochs=ra.config.epochs, copy=ra.config.copy, copy_substitution=ra.config.copy_substitution,
                  copy_substitute_all=ra.config.copy_substitute_all, copy_content_only=ra.config.copy_content_only,
                  copy_grounding=ra.config.copy_grounding, model_id=ra.data.model_id)
    beams = CaptionerConfig.beams
    decoding = {"beams": beams, "min_new_tokens": args.min_new_tokens}
    for set_name, by_image in sets.items():
        ids = np.array(sorted(by_image), dtype=np.int64)
        if len(ids) == 0:
            continue
        references = [by_image[int(i)] for i in ids]
        vectors, inputs = ra.data.image_inputs(ids, ra.config)
        retrieved = ra.data.retrieve(vectors, ids, ra.config.k)
        shown = shown_prompts(ra.tokenizer, retrieved, ra.config.max_retrieved_tokens)
        captions = {"retrieval_augmented": ra.caption_inputs(inputs, retrieved, **decoding),
                    "trained_without_retrieval": plain.caption_inputs(inputs, [[] for _ in ids], **decoding),
                    "ra_weights_k0": ra.caption_inputs(inputs, [[] for _ in ids], **decoding),
                    "nearest_caption": [r[0] if r else "" for r in retrieved]}
        if set_name == "val_other" and args.reference:
            reference = Captioner(workdir, args.reference)
            _, ref_inputs = reference.data.image_inputs(ids, reference.config)
            ref_retrieved = reference.data.retrieve(vectors, ids, reference.config.k)
            captions["reference_all_train"] = reference.caption_inputs(ref_inputs, ref_retrieved, **decoding)
        report["sets"][set_name] = {
            "images": len(ids),
            "methods": {m: score(c, references, concepts, shown) for m, c in captions.items()},
            "examples": [{"image_id": int(ids[i]), "references": references[i][:2], "retrieved": retrieved[i],
                          **{m: c[i] for m, c in captions.items()}} for i in range(min(4, len(ids)))]}
        for method, s in report["sets"][set_name]["methods"].items():
            print(f"{set_name:<16} {method:<26} names the concept {_pct(s['named_pct'])} "
                  f"(references {_pct(s['references_name_pct'])}; where the RA prompt does "
                  f"{_pct(s['named_where_prompt_names_pct'])} of {_pct(s['prompt_names_pct'])})  "
                  f"where absent {_pct(s['named_where_absent_pct'])}  CIDEr {s['CIDEr']:5.1f}  "
                  f"BLEU-4 {s['BLEU-4']:5.1f}  " + ", ".join(f"{c} {v['named_pct']:.0f}% of {v['images']}"
                                                            for c, v in s["by_concept"].items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
