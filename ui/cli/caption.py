"""`groundex caption`: train the retrieval-augmented captioner, and caption images with it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UserError, add_resume, add_workdir, phrase_line, print_json, workdir_of
from ._options import (
    add_captioner,
    add_device,
    add_json,
    add_memory,
    add_model,
    add_no_progress,
    add_precision,
    add_renamed,
)
from .chunk import add_chunker


def add_parser(sub: argparse._SubParsersAction) -> None:
    from heads.config import CaptionerConfig

    c = CaptionerConfig()
    p = sub.add_parser(
        "caption", help="train the retrieval-augmented captioner; caption images",
        description="A BLIP text decoder (transformers) that reads the image's CLIP embedding and patch embeddings "
                    "and, as a prompt, the captions of its nearest training images (--neighbours; FAISS; never its "
                    "own). "
                    "`caption train` fits it on the train split (Hugging Face Trainer, val loss and a checkpoint "
                    "each epoch); `caption generate` captions images and stores the captions in the catalog "
                    "(source 'generated', with the captioner's hash). `groundex eval captions` measures it.")
    steps = p.add_subparsers(dest="step", metavar="STEP", required=True)
    t = steps.add_parser("train", help="fit the captioner on the train split",
                         description="Needs `groundex index` first (image, patch and caption embeddings).")
    add_workdir(t)
    add_model(t, "embedding model")
    t.add_argument("--base", default=c.pretrained, metavar="NAME_OR_PATH",
                   help="fine-tune a pretrained BLIP (BlipForConditionalGeneration: a Hugging Face name such as "
                        "Salesforce/blip-image-captioning-base, or a local folder) in place of the small decoder "
                        "trained from scratch: its vision tower reads the pixels and its tokenizer is kept; "
                        "--epochs 0 stores it as it is")
    t.add_argument("--epochs", type=int, default=c.epochs,
                   help="passes over the training images (default: %(default)s; 0 with --base: no fine-tuning)")
    t.add_argument("--batch-size", type=int, default=c.batch_size, help="images per step (default: %(default)s)")
    t.add_argument("--lr", type=float, default=c.lr, help="peak learning rate (default: %(default)s)")
    t.add_argument("--neighbours", type=int, default=c.k, metavar="N",
                   help="retrieved captions in the prompt: those of the N nearest training images (default: "
                        "%(default)s)")
    t.add_argument("--exclude-words", default="", metavar="WORD,WORD",
                   help="train the decoder only on train images none of whose captions mention these words (or "
                        "their plurals); their captions stay in the caption memory (benchmarks/caption_concepts.py)")
    t.add_argument("--copy", action="store_true",
                   help="add a copy head: a pointer over the content words of the retrieved captions, guided by the "
                        "embedding model's cosine between each word and the image, so the decoder can write words it "
                        "never had to write in training (docs/heads.md, \"New words\"; off by default: it costs "
                        "CIDEr so far)")
    t.add_argument("--copy-substitution", type=float, default=c.copy_substitution, metavar="P",
                   help="with --copy: in this share of training examples a word the caption shares with its prompt "
                        "becomes a placeholder token in both, which only the copy head can write (default: "
                        "%(default)s)")
    t.add_argument("--copy-substitute-all", action="store_true",
                   help="with --copy-substitution: every word the caption shares with its prompt, not one")
    t.add_argument("--layers", type=int, default=c.layers, help="decoder layers (default: %(default)s)")
    t.add_argument("--hidden-size", type=int, default=c.hidden_size, help="decoder width (default: %(default)s)")
    add_precision(t, c.precision)
    t.add_argument("--seed", type=int, default=c.seed, help="random seed (default: %(default)s)")
    t.add_argument("--train-vision", action="store_true",
                   help="with --base: fine-tune the vision tower too (default: the text decoder only)")
    add_resume(t, "from the last epoch checkpoint of this model")
    add_json(t)
    add_no_progress(t)
    add_renamed(t, "-k", "--neighbours (retrieved captions); -k is the number of results elsewhere")
    add_renamed(t, "--pretrained", "--base (the BLIP checkpoint to start from)")
    t.set_defaults(run=run_train)
    g = steps.add_parser("generate", help="caption images (stored in the catalog) or one image file (printed)")
    add_workdir(g)
    add_captioner(g)
    g.add_argument("--split", default=None, help="caption this split's images (default: all)")
    g.add_argument("--image", type=Path, default=None, help="caption this image file instead (not stored)")
    captioners = "the captioner's own setting, {} unless set when it was trained"
    g.add_argument("--neighbours", type=int, default=None, metavar="N",
                   help=f"retrieved captions, 0: none (default: {captioners.format(c.k)})")
    g.add_argument("--beams", type=int, default=None, help=f"beam search width (default: {captioners.format(c.beams)})")
    g.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"at most this many new tokens (default: {captioners.format(c.max_new_tokens)})")
    g.add_argument("--min-new-tokens", type=int, default=None, metavar="N",
                   help=f"at least this many new tokens (default: {captioners.format(c.min_new_tokens)})")
    g.add_argument("--length-penalty", type=float, default=None,
                   help="beam search length penalty; above 1 favours longer captions (default: "
                        f"{captioners.format(c.length_penalty)})")
    g.add_argument("--ground", action="store_true",
                   help="also find each caption's phrases with the phrase chunker (`groundex chunk train`) and ground "
                        "them in the image with the captioner's embedding model: stored with the caption (the app "
                        "underlines them in the colours of their boxes; `groundex export entities --generated` writes "
                        "them), printed for --image")
    add_chunker(g)
    add_memory(g)
    add_device(g)
    add_no_progress(g)
    add_json(g)
    add_renamed(g, "-k", "--neighbours (retrieved captions); -k is the number of results elsewhere")
    add_renamed(g, "--max-length", "--max-new-tokens")
    add_renamed(g, "--min-length", "--min-new-tokens")
    g.set_defaults(run=run_generate)


def run_train(args: argparse.Namespace) -> int:
    from heads.captioning import train_captioner
    from heads.config import CaptionerConfig

    config = CaptionerConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, k=args.neighbours,
                             layers=args.layers, hidden_size=args.hidden_size, precision=args.precision,
                             seed=args.seed, pretrained=args.base, freeze_vision=not args.train_vision,
                             exclude_words=tuple(args.exclude_words.split(",")), copy=args.copy,
                             copy_substitution=args.copy_substitution, copy_substitute_all=args.copy_substitute_all)
    result = train_captioner(workdir_of(args), config, args.model, resume=args.resume, progress=not args.no_progress)
    if args.json:
        print_json(result)
        return 0
    print(f"captioner {result['captioner_id']} trained on {result['train_images']:,} images in "
          f"{result['train_seconds']:.0f} s; val loss by epoch: {result['val_loss_by_epoch']}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from heads.captioning import Captioner, caption_workdir

    for name, least in (("neighbours", 0), ("beams", 1), ("max_new_tokens", 1), ("min_new_tokens", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise UserError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    if args.chunker is not None and not args.ground:
        raise UserError("--chunker chooses the chunker that finds the phrases to ground: give it with --ground")
    decoding = {"beams": args.beams, "max_new_tokens": args.max_new_tokens, "min_new_tokens": args.min_new_tokens,
                "length_penalty": args.length_penalty}
    if args.image is not None:
        if args.split is not None:
            raise UserError("give --split or --image, not both")
        chunker = None
        if args.ground:  # before captioning: a workdir without a chunker fails now
            from heads import open_chunker

            chunker = open_chunker(workdir_of(args), args.chunker)
        captioner = Captioner(workdir_of(args), args.captioner, args.device, args.memory)
        caption, retrieved = captioner.caption_file(args.image, args.neighbours, **decoding)
        phrases = None
        if chunker is not None:
            from grounding.ground import Grounder
            from heads import ground_caption

            grounder = Grounder(workdir_of(args), captioner.data.model_id, args.device)
            phrases = ground_caption(grounder, chunker, caption, args.image)
        if args.json:
            print_json({"captioner_id": captioner.id, "image": str(args.image), "caption": caption,
                        "retrieved": retrieved, "memory": captioner.data.describe_memory(),
                        **({"phrases": [p.as_dict() for p in phrases]} if phrases is not None else {})})
        else:
            print(caption)
            for p in phrases or []:
                print(f"  {phrase_line(p.as_dict())}")
        return 0
    result = caption_workdir(workdir_of(args), args.captioner, args.split, args.neighbours, device=args.device,
                             progress=not args.no_progress, memory=args.memory, ground=args.ground,
                             chunker=args.chunker, **{k: v for k, v in decoding.items() if v is not None})
    if args.json:
        print_json(result)
        return 0
    memory = result["memory"]
    print(f"captioner {result['captioner_id']}: {result['stored']:,} captions stored (memory {memory['memory']}: "
          f"{memory['captions']:,} captions of {memory['images']:,} images)")
    if result.get("grounded"):
        g = result["grounded"]
        print(f"  phrases found by chunker {g['chunker_id']} and grounded by model {g['model_id']}: {g['phrases']:,} "
              f"({g['boxes']:,} with a box)")
    for example in result["examples"]:
        print(f"  image {example['image_id']}: {example['caption']}")
        for p in example.get("phrases", []):
            print(f"    {phrase_line(p)}")
    return 0
