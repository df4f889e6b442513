"""Embedding in bf16 against float32: what a user could see change, and what it gains.

    python benchmarks/embed_precision.py --workdir W [--split val] [--images 2000] [--out FILE.json]

One process, one model (the workdir's newest), the same images and captions in both precisions:
- agreement: cosine between each image's, patch's and caption's float32 and bf16 embedding, both stored as
  float16 as `groundex index` stores them (min, 0.1st percentile, mean);
- quality: the split's retrieval recall@K (Flickr30k protocol) and grounding (pointing game, box acc@0.5 with
  the model's tuned parameters), once per precision, as `groundex index` stores them: images, patches and
  captions in that precision, while text queries and phrases are encoded in float32 (as `search` and `ground` do);
- speed: the bare forward pass (images and patches) on preloaded pixels, in batches of `groundex index`'s
  default size for the device, images/s per precision.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _report import emit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grounding.config import load_config  # noqa: E402
from grounding.evaluate import metrics, split_maps  # noqa: E402
from indexer.config import EmbedConfig  # noqa: E402
from indexer.data import decode_square  # noqa: E402
from indexer.devices import autocast, bf16_is_fast  # noqa: E402
from indexer.evaluate import recall_at_k  # noqa: E402
from indexer.models import load_checkpoint  # noqa: E402
from warehouse import Catalog, Workdir  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def _stored(x: torch.Tensor) -> np.ndarray:
    """As `groundex index` stores it: float16."""
    return x.half().float().cpu().numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(cos.min()), 6), "p0.1": round(float(np.percentile(cos, 0.1)), 6),
            "mean": round(float(cos.mean()), 6), "n": int(len(cos))}


@torch.no_grad()
def _embed(model, pixels: torch.Tensor, texts: list[str], bf16: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, patches, captions = [], [], []
    with autocast(model.device, bf16):
        for s in range(0, len(pixels), 256):
            g, p = model.encode_image_and_patches(pixels[s:s + 256])
            images.append(_stored(g))
            patches.append(_stored(p))
        for s in range(0, len(texts), 256):
            captions.append(_stored(model.encode_text(texts[s:s + 256])))
    return np.concatenate(images), np.concatenate(patches), np.concatenate(captions)


class _AsIndexed:
    """The model as grounding sees it after `groundex index --precision`: patch embeddings computed in that
    precision and stored as float16; phrases encoded at query time in float32."""

    def __init__(self, model, bf16: bool):
        self.model, self.bf16 = model, bf16

    def encode_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        with autocast(self.model.device, self.bf16):
            return self.model.encode_patches(pixels).half().float()

    def __getattr__(self, name: str):
        return getattr(self.model, name)


@torch.no_grad()
def _forward_speed(model, pixels: torch.Tensor, bf16: bool, rounds: int = 2) -> float:
    batch = EmbedConfig().batch_for(model.device.type)
    with autocast(model.device, bf16):
        model.encode_image_and_patches(pixels[:batch])  # warm up
        best = 0.0
        for _ in range(rounds):
            t = time.perf_counter()
            for s in range(0, len(pixels), batch):
                model.encode_image_and_patches(pixels[s:s + batch])
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, len(pixels) / (time.perf_counter() - t))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=2000, help="images for the speed figure")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workdir = Workdir(args.workdir)
    with Catalog.open(workdir, read_only=True) as catalog:
        info = catalog.model()
        split_images = catalog.image_rows(args.split)
        captions = catalog.caption_rows(args.split)
        speed_items = catalog.image_rows()[: args.images]
    model = load_checkpoint(info.path).eval()
    decode = lambda items: torch.from_numpy(np.stack([decode_square(p, model.image_size, model.resize)  # noqa: E731
                                                      for _, p in items]))
    pixels = decode(split_images)
    image_ids = [i for i, _ in split_images]
    texts, owners = [t for _, _, t in captions], [i for _, i, _ in captions]
    grounding_config = load_config(workdir, info.id)

    embedded, quality = {}, {}
    for precision in PRECISIONS:
        bf16 = precision == "bf16"
        embedded[precision] = _embed(model, pixels, texts, bf16)
        images, _, caption_vectors = embedded[precision]
        maps = split_maps(workdir, _AsIndexed(model, bf16), args.split, progress=False)
        grounding = metrics(maps, grounding_config)
        # text queries are encoded at search time in float32; the stored captions (image->text) in `precision`
        retrieval = {"text_to_image": recall_at_k(images, image_ids, embedded["fp32"][2], owners)["text_to_image"],
                     "image_to_text": recall_at_k(images, image_ids, caption_vectors, owners)["image_to_text"]}
        quality[precision] = {"retrieval": retrieval,
                              "pointing_game": grounding["pointing_game"], "box_acc@0.5": grounding["box_acc@0.5"]}
    agreement = {kind: _cosines(embedded["fp32"][k], embedded["bf16"][k])
                 for k, kind in enumerate(("image", "patch", "caption"))}

    speed_pixels = decode(speed_items)
    speed = {precision: round(_forward_speed(model, speed_pixels, precision == "bf16"), 1) for precision in PRECISIONS}
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {model.device}, "
                   f"bf16 fast here: {bf16_is_fast(model.device)}",
        "model": info.id, "model_name": info.info.get("name"), "split": args.split,
        "images": len(image_ids), "captions": len(texts), "phrases": len(maps.rows),
        "agreement_cosine": agreement, "quality": quality,
        "bare_forward_images_per_s": {**speed, "images": len(speed_items),
                                      "bf16_over_fp32": round(speed["bf16"] / speed["fp32"], 3)},
    }
    q = quality
    markdown = "\n".join([
        f"Machine: {result['machine']}; model {info.id} ({result['model_name']}), {args.split}: "
        f"{len(image_ids)} images, {len(texts)} captions, {result['phrases']} phrases.",
        "",
        "| | fp32 | bf16 |",
        "|---|---|---|",
        *[f"| text->image R@{k} | {q['fp32']['retrieval']['text_to_image'][f'R@{k}']:.2f} | "
          f"{q['bf16']['retrieval']['text_to_image'][f'R@{k}']:.2f} |" for k in (1, 5, 10)],
        f"| image->text R@10 | {q['fp32']['retrieval']['image_to_text']['R@10']:.2f} | "
        f"{q['bf16']['retrieval']['image_to_text']['R@10']:.2f} |",
        f"| pointing game | {q['fp32']['pointing_game']:.2f} | {q['bf16']['pointing_game']:.2f} |",
        f"| box acc@0.5 | {q['fp32']['box_acc@0.5']:.2f} | {q['bf16']['box_acc@0.5']:.2f} |",
        f"| bare forward, images/s ({len(speed_items)} images) | {speed['fp32']} | {speed['bf16']} |",
        "",
        "Cosine fp32 vs bf16 (min / 0.1st percentile / mean): "
        + "; ".join(f"{kind} {a['min']:.4f} / {a['p0.1']:.4f} / {a['mean']:.4f}" for kind, a in agreement.items()),
        "",
    ])
    emit(result, args.out, markdown)


if __name__ == "__main__":
    main()
