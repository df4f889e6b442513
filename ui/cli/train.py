"""`groundex train`: contrastive training of a CLIP model on a workdir's captions."""

from __future__ import annotations

import argparse

from ._common import add_resume, add_workdir, print_json, workdir_of
from ._options import add_device, add_json, add_no_progress, add_precision, add_renamed

# With --minutes the time budget ends training; the epoch count only has to be out of its way.
EPOCHS_UNDER_A_BUDGET = 10_000


def add_parser(sub: argparse._SubParsersAction) -> None:
    from indexer.config import MODES, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train or fine-tune a CLIP model on the workdir's captions",
        description="Symmetric InfoNCE with a learned temperature on the train split; val recall after every "
                    "epoch; the best checkpoint is kept in models/ and recorded in the catalog.")
    add_workdir(p)
    p.add_argument("--base", default=d.base,
                   help="what to fine-tune: a recorded model (label or hash prefix; see `groundex model list`), a "
                        "preset trained from scratch (tiny), an open_clip model name (e.g. ViT-B-32, with "
                        "--pretrained), or a checkpoint folder (default: %(default)s)")
    p.add_argument("--pretrained", default=d.pretrained, metavar="TAG|FILE",
                   help="with an open_clip name: its pretrained tag, or a .safetensors file, for the first weights")
    add_renamed(p, "--model", "--base (what to start from); elsewhere --model names a recorded model")
    p.add_argument("--label", default=None, help="a name for the trained model, usable wherever --model is")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help=f"passes over the train images (default: {d.epochs})")
    budget.add_argument("--minutes", type=float, default=d.minutes,
                        help="wall-clock budget instead of a number of epochs; the schedule follows it")
    p.add_argument("--mode", choices=MODES, default=d.mode,
                   help="full, locked-image (image tower frozen), or lora (peft adapters) (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per micro-batch (default: %(default)s)")
    p.add_argument("--accumulate", type=int, default=d.accumulate,
                   help="micro-batches per optimizer step (default: %(default)s)")
    p.add_argument("--captions-per-image", type=int, default=d.captions_per_image,
                   help="captions drawn per image per step, all positives of the image (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    p.add_argument("--patch-dropout", type=float, default=d.patch_dropout,
                   help="fraction of image tokens dropped while training (default: %(default)s)")
    p.add_argument("--grounding-weight", type=float, default=d.grounding_weight,
                   help="weight of the phrase-region objective that teaches patches to match the phrases of their "
                        "boxes (needs phrases with boxes: Flickr30k Entities, synthetic scenes); 0: global "
                        "contrastive only (default: %(default)s)")
    p.add_argument("--grounding-phrases", type=int, default=d.grounding_phrases,
                   help="entities sampled per image per step for that objective (default: %(default)s)")
    p.add_argument("--box-head-epochs", type=int, default=d.box_head_epochs,
                   help="after the contrastive epochs, fit the grounding head (the phrase picks a patch, the patch "
                        "draws the box; docs/grounding.md) on the kept model's frozen embeddings for this many "
                        "epochs, when the split has phrases with boxes; 0: no head, boxes come from the heatmap "
                        "(default: %(default)s)")
    p.add_argument("--box-head-minutes", type=float, default=d.box_head_minutes,
                   help="with --minutes, the head's share of the budget (at most half of it), fitted by time: "
                        "--box-head-epochs then only turns it on or off (default: %(default)s)")
    add_precision(p, d.precision)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW's (default: %(default)s)")
    p.add_argument("--train-split", default=d.train_split, help="split to train on (default: %(default)s)")
    p.add_argument("--val-split", default=d.val_split,
                   help="split for per-epoch recall ('none' to skip) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    add_device(p)
    add_resume(p, "the last training run")
    add_json(p)
    add_no_progress(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from indexer.config import TrainConfig
    from indexer.model_store import check_model_label, label_model
    from indexer.train import train
    from warehouse import Catalog

    epochs = args.epochs if args.epochs is not None else EPOCHS_UNDER_A_BUDGET if args.minutes else TrainConfig.epochs
    config = TrainConfig(
        base=args.base, pretrained=args.pretrained, mode=args.mode, epochs=epochs, minutes=args.minutes,
        batch_size=args.batch_size, accumulate=args.accumulate,
        captions_per_image=args.captions_per_image, lr=args.lr, weight_decay=args.weight_decay,
        patch_dropout=args.patch_dropout, precision=args.precision, grounding_weight=args.grounding_weight,
        grounding_phrases=args.grounding_phrases,
        box_head_epochs=args.box_head_epochs, box_head_minutes=args.box_head_minutes,
        train_split=args.train_split, val_split=None if args.val_split in (None, "none") else args.val_split,
        seed=args.seed, device=args.device, progress=not args.no_progress)
    workdir = workdir_of(args)
    if args.label is not None:  # checked before training, set after
        check_model_label(args.label)
        with Catalog.open(workdir, read_only=True) as catalog:
            catalog.check_label("model", "", args.label)
    result = train(workdir, config, resume=args.resume)
    if args.label is not None:
        label_model(workdir, result.model_id, args.label)
    if args.json:
        print_json(result.__dict__)
        return 0
    best = result.best
    val = best.get("val")
    summary = (f"val text->image R@1/5/10 {val['text_to_image']['R@1']:.1f}/{val['text_to_image']['R@5']:.1f}/"
               f"{val['text_to_image']['R@10']:.1f}" if val else "no validation split")
    if val and "pointing_game" in val:
        summary += f", pointing game {val['pointing_game']:.1f} (patch cells)"
    print(f"trained {result.epochs} epochs ({result.steps} steps, {result.seconds:.0f} s); best epoch {best['epoch']}: "
          f"{summary}")
    if result.box_head is not None:
        head = result.box_head
        print(f"box head: fitted for {head['epochs']} epochs on {head['phrases']:,} phrases of {head['images']:,} "
              f"images in {head['seconds']:.0f} s (`groundex eval grounding --split val --tune` chooses it or the "
              "heatmap)")
    print(f"model {result.model_id} -> {result.model_path} ({result.trainable_params:,} of "
          f"{result.total_params:,} parameters trained)")
    return 0
