"""What else could make the model's forward pass faster when embedding: batch size, channels_last, torch.compile.

    python benchmarks/embed_options.py [--arch ViT-S-32 | --model-dir DIR] [--precision auto|bf16|fp32]
                                       [--images 2000] [--large 30000] [--rounds 2] [--no-compile] [--out FILE.json]

The forward pass of `groundex index` (images and patches, `encode_image_and_patches`) on pixels already in
memory (random uint8 at the model's input size: decoding is not what is measured), one process, one after the
other, in the precision `index` picks here (`auto`). Each variant is timed on `--images` images after one warm-up
batch; torch.compile's first call (the compilation) is timed apart, and the whole job is timed at `--images`
and at `--large` images (the same pixels, passed over again) with and without compilation, at `groundex index`'s
batch size for the device, so its cost is set against its gain at both sizes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from _report import emit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.config import EmbedConfig  # noqa: E402
from indexer.devices import autocast, bf16_is_fast, precision_uses_bf16  # noqa: E402
from indexer.models import create_model, load_checkpoint  # noqa: E402


@torch.no_grad()
def throughput(encode, pixels: torch.Tensor, batch: int, bf16: bool, device: torch.device, n: int | None = None,
               memory_format: torch.memory_format = torch.contiguous_format) -> float:
    """Images/s over `n` images (default: all of `pixels`, passed over again when `n` is larger)."""
    n = n or len(pixels)
    with autocast(device, bf16):
        started = time.perf_counter()
        done = 0
        while done < n:
            s = done % len(pixels)
            chunk = pixels[s:s + min(batch, n - done)].contiguous(memory_format=memory_format)
            encode(chunk)
            done += len(chunk)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-S-32")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--large", type=int, default=30000)
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a checkpoint folder (e.g. a workdir's models/<id>) instead of --arch's random weights")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the eager variants (best of)")
    parser.add_argument("--no-compile", action="store_true", help="only the eager variants")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model_dir is not None:
        model = load_checkpoint(args.model_dir)
        args.arch = f"{model.spec.name} ({args.model_dir.name})"
    else:
        model = create_model(args.arch, resize="center-crop")
    device = model.device
    bf16 = precision_uses_bf16(args.precision, device)
    size = model.image_size
    pixels = torch.randint(0, 256, (args.images, 3, size, size), dtype=torch.uint8)
    encode = model.encode_image_and_patches
    with torch.no_grad(), autocast(device, bf16):
        encode(pixels[:16])  # warm up

    figures: dict[str, float] = {}
    for _ in range(args.rounds):  # interleaved rounds, best of each: the order of the variants does not favour one
        for batch in (32, 64, 128, 256, 512):
            name = f"eager, batch {batch}"
            figures[name] = max(figures.get(name, 0.0), throughput(encode, pixels, batch, bf16, device))
        model.to(memory_format=torch.channels_last)
        name = "eager, batch 256, channels_last"
        figures[name] = max(figures.get(name, 0.0), throughput(encode, pixels, 256, bf16, device,
                                                               memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    compile_s, jobs = None, {}
    if not args.no_compile:
        batch = EmbedConfig().batch_for(device.type)  # what `groundex index` runs
        compiled = torch.compile(model.encode_image_and_patches)
        started = time.perf_counter()
        with torch.no_grad(), autocast(device, bf16):
            compiled(pixels[:batch])
        compile_s = time.perf_counter() - started
        figures[f"compiled, batch {batch}"] = throughput(compiled, pixels, batch, bf16, device)
        for n in (args.images, args.large):
            eager_s = n / throughput(encode, pixels, batch, bf16, device, n)
            compiled_s = compile_s + n / throughput(compiled, pixels, batch, bf16, device, n)
            jobs[str(n)] = {"eager_s": round(eager_s, 1), "compiled_with_compilation_s": round(compiled_s, 1),
                            "compiled_over_eager": round(eager_s / compiled_s, 3)}
    base = figures["eager, batch 256"]
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {device}, "
                   f"bf16 fast here: {bf16_is_fast(device)}",
        "arch": args.arch, "precision": "bf16" if bf16 else "fp32", "images": args.images, "rounds": args.rounds,
        "images_per_s": {k: round(v, 1) for k, v in figures.items()},
        "ratio_to_eager_batch_256": {k: round(v / base, 3) for k, v in figures.items()},
        "compile_s": None if compile_s is None else round(compile_s, 1), "whole_job": jobs,
    }
    weights = " random weights" if args.model_dir is None else ""
    lines = [f"Machine: {result['machine']}; {args.arch}{weights}, {result['precision']}, images and patches, "
             f"{args.images} preloaded images, best of {args.rounds} interleaved round(s).", "",
             "| variant | images/s | vs eager, batch 256 |", "|---|---:|---:|",
             *[f"| {k} | {v:.1f} | {v / base:.2f} |" for k, v in figures.items()], ""]
    if compile_s is not None:
        lines += [f"torch.compile's first call: {compile_s:.1f} s; whole jobs at groundex's batch size for the device.",
                  "",
                  "| images | eager, s | compiled incl. compilation, s | speed-up |", "|---:|---:|---:|---:|",
                  *[f"| {n} | {j['eager_s']} | {j['compiled_with_compilation_s']} | {j['compiled_over_eager']:.2f}x |"
                    for n, j in jobs.items()], ""]
    emit(result, args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
