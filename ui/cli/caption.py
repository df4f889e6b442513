"""`groundex caption`: train the retrieval-augmented captioner, and caption images with it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UserError, add_resume, add_workdir, print_json, workdir_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption", help="train the retrieval-augmented captioner; caption images",
        description="A BLIP text decoder (transformers) that reads the image's CLIP embedding and patch embeddings "
                    "and, as a prompt, the captions of its k nearest training images (FAISS; never its own). "
                    "`caption train` fits it on the train split (Hugging Face Trainer, val loss and a checkpoint "
                    "each epoch); `caption generate` captions images and stores the captions in the catalog "
                    "(source 'generated', with the captioner's hash). `groundex eval captions` measures it.")
    steps = p.add_subparsers(dest="step", metavar="STEP", required=True)
    t = steps.add_parser("train", help="fit the captioner on the train split",
                         description="Needs `groundex index` first (image, patch and caption embeddings).")
    add_workdir(t)
    t.add_argument("--model", default=None, help="embedding model label or hash prefix (default: the newest)")
    t.add_argument("--epochs", type=int, default=10,
                   help="passes over the training images (default: 10; 0 with --pretrained: no fine-tuning)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("-k", type=int, default=4, help="retrieved captions in the prompt (default: 4)")
    t.add_argument("--layers", type=int, default=3, help="decoder layers (default: 3)")
    t.add_argument("--hidden-size", type=int, default=256, help="decoder width (default: 256)")
    t.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    t.add_argument("--pretrained", default=None, metavar="NAME_OR_PATH",
                   help="fine-tune a pretrained BLIP (BlipForConditionalGeneration: a Hugging Face name such as "
                        "Salesforce/blip-image-captioning-base, or a local folder) in place of the small decoder: its "
                        "vision tower reads the pixels and its tokenizer is kept; --epochs 0 stores it as it is")
    t.add_argument("--train-vision", action="store_true",
                   help="with --pretrained: fine-tune the vision tower too (default: the text decoder only)")
    add_resume(t, "from the last epoch checkpoint of this model")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--json", action="store_true")
    t.set_defaults(run=run_train)
    g = steps.add_parser("generate", help="caption images (stored in the catalog) or one image file (printed)")
    add_workdir(g)
    g.add_argument("--captioner", default=None, help="captioner hash or prefix (default: the newest)")
    g.add_argument("--split", default=None, help="caption this split's images (default: all)")
    g.add_argument("--image", type=Path, default=None, help="caption this image file instead (not stored)")
    g.add_argument("-k", type=int, default=None, help="retrieved captions (default: the captioner's; 0: none)")
    g.add_argument("--beams", type=int, default=None, help="beam search width (default: 3)")
    g.add_argument("--max-length", type=int, default=None, help="at most this many new tokens (default: 30)")
    g.add_argument("--min-length", type=int, default=None, help="at least this many new tokens (default: 3)")
    g.add_argument("--length-penalty", type=float, default=None,
                   help="beam search length penalty; above 1 favours longer captions (default: 1.0)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(run=run_generate)


def run_train(args: argparse.Namespace) -> int:
    from heads.captioner import CaptionerConfig
    from heads.captioning import train_captioner

    config = CaptionerConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, k=args.k, layers=args.layers,
                             hidden_size=args.hidden_size, precision=args.precision, pretrained=args.pretrained,
                             freeze_vision=not args.train_vision)
    result = train_captioner(workdir_of(args), config, args.model, resume=args.resume, progress=not args.no_progress)
    if args.json:
        print_json(result)
        return 0
    print(f"captioner {result['captioner_id']} trained on {result['train_images']:,} images in "
          f"{result['train_seconds']:.0f} s; val loss by epoch: {result['val_loss_by_epoch']}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from heads.captioning import Captioner, caption_workdir

    for name in ("k", "beams", "max_length", "min_length"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("k", "min_length") else 1):
            raise UserError(f"--{name.replace('_', '-')} must be {'>= 0' if name in ('k', 'min_length') else '>= 1'}")
    decoding = {"beams": args.beams, "max_new_tokens": args.max_length, "min_new_tokens": args.min_length,
                "length_penalty": args.length_penalty}
    if args.image is not None:
        if args.split is not None:
            raise UserError("give --split or --image, not both")
        captioner = Captioner(workdir_of(args), args.captioner)
        caption, retrieved = captioner.caption_file(args.image, args.k, **decoding)
        if args.json:
            print_json({"captioner_id": captioner.id, "image": str(args.image), "caption": caption,
                        "retrieved": retrieved})
        else:
            print(caption)
        return 0
    result = caption_workdir(workdir_of(args), args.captioner, args.split, args.k,
                             **{k: v for k, v in decoding.items() if v is not None})
    if args.json:
        print_json(result)
        return 0
    print(f"captioner {result['captioner_id']}: {result['stored']:,} captions stored")
    for example in result["examples"]:
        print(f"  image {example['image_id']}: {example['caption']}")
    return 0
