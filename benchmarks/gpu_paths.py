"""The CUDA paths of groundex, run end to end and timed: training (fp32 and bf16 autocast), embedding and
indexing, cuda-vs-cpu embedding agreement, search and grounding on the GPU.

    python benchmarks/gpu_paths.py [--device cuda] [--images 2000] [--epochs 10] [--out docs/results/gpu_paths.json]
    python benchmarks/gpu_paths.py --quick --device cpu --out /tmp/gpu_smoke.json   # a smoke run in seconds

On a synthetic-scenes workdir it makes itself (`warehouse.ingest_synthetic`, as `groundex demo` does):
1. trains the tiny preset with `indexer.train.train` on --device, once in fp32 and once with bf16 autocast, each in
   its own copy of the ingested workdir: images/s of every epoch (from the run's history), val text->image R@10,
   the pointing game, wall time and peak GPU memory;
2. indexes the fp32 model's workdir with `indexer.pipeline.index_workdir` on --device, and a copy of the same
   workdir on the CPU with the same model, then compares the stored image, patch and caption embeddings (max abs
   difference and min/mean cosine; they are float16 on disk, so ~1e-3 is rounding);
3. embedding throughput: the pipeline's images/s (index result and its stage seconds) and the bare forward pass
   (pixels already in memory; fp32 and under bf16 autocast, synchronized);
4. `indexer.search.Searcher` on --device: text -> image, image -> image, image -> text; hits must come back, the
   model must sit on the device, and the top 10 are compared with the CPU copy's; query latency;
5. val retrieval from the stored embeddings and `grounding` (evaluation and one phrase) on --device;
and reports the versions, the device's name and whether faiss sees a GPU (faiss-cpu never does).

Each step is written to --out as it finishes (a run cut short keeps what it measured); a failing step is
recorded with its traceback and the next ones still run where they can. Needs no network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warehouse  # noqa: E402
from warehouse import Catalog, IngestConfig, SyntheticConfig, Workdir  # noqa: E402

QUERIES = ["a black dog on the grass", "a red car", "a person next to a tree", "a yellow star", "two blue circles"]


class Report:
    """The JSON report, rewritten to `out` after every step."""

    def __init__(self, out: Path | None, args: argparse.Namespace):
        self.out = out
        self.data: dict[str, Any] = {"benchmark": "gpu_paths", "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                        for k, v in vars(args).items()},
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}, "errors": {}}
        self.t0 = time.perf_counter()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_name(self.out.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
            tmp.replace(self.out)

    def step(self, name: str, fn, *a, **kw) -> Any:
        """Run one step; its dict result goes under steps[name], an exception under errors[name]."""
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            result = fn(*a, **kw)
        except Exception as e:  # recorded, and the run goes on
            self.data["errors"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"    FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()}", flush=True)
            self.save()
            return None
        if isinstance(result, dict):
            result.setdefault("step_seconds", round(time.perf_counter() - t, 2))
            self.data["steps"][name] = result
            print("    " + json.dumps(result, default=str)[:600], flush=True)
        self.save()
        return result


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# -- steps ----------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    import duckdb
    import faiss
    import open_clip

    from indexer.devices import bf16_is_fast
    from indexer.index import gpu_available

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "open_clip": getattr(open_clip, "__version__", None), "duckdb": duckdb.__version__,
        "faiss": getattr(faiss, "__version__", None), "numpy": np.__version__, "cpu_count": os.cpu_count(),
        "device": str(device), "cuda_available": torch.cuda.is_available(),
        "faiss_has_gpu_module": hasattr(faiss, "StandardGpuResources"),
        "faiss_num_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else None,
        "indexer_gpu_available": gpu_available(),
        "bf16_is_fast": bf16_is_fast(device),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                   bf16_supported=torch.cuda.is_bf16_supported())
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def ingest(root: Path, n: int, seed: int) -> dict[str, Any]:
    workdir = Workdir(root)
    t = time.perf_counter()
    report = warehouse.ingest_synthetic(workdir, SyntheticConfig(n=n, seed=seed), IngestConfig(progress=False))
    with Catalog.open(workdir, read_only=True) as catalog:
        counts = catalog.counts()
    return {"added": report.added, "rejected": report.rejected, "splits": counts.get("splits"),
            "seconds": round(time.perf_counter() - t, 2)}


def train_once(base: Path, root: Path, device: torch.device, precision: str, args: argparse.Namespace
               ) -> dict[str, Any]:
    from indexer.config import TrainConfig
    from indexer.train import train

    shutil.copytree(base, root)
    reset_peak(device)
    t = time.perf_counter()
    result = train(Workdir(root), TrainConfig(device=str(device), precision=precision, epochs=args.epochs,
                                              batch_size=args.batch_size, seed=args.seed, progress=False,
                                              workers=args.workers, box_head_epochs=0))  # the towers only
    sync(device)
    wall = time.perf_counter() - t
    history = result.history
    rates = [h["images_per_s"] for h in history]
    r10 = [h.get("val", {}).get("text_to_image", {}).get("R@10") for h in history]
    steady = rates[1:] or rates  # the first epoch holds CUDA's start-up (kernels, cuDNN choices)
    return {
        "precision": precision, "model_id": result.model_id, "epochs": result.epochs, "steps": result.steps,
        "train_seconds": result.seconds, "wall_seconds": round(wall, 2),
        "images_per_s_by_epoch": rates, "images_per_s_median_after_first": float(np.median(steady)),
        "loss_by_epoch": [h["loss"] for h in history],
        "val_t2i_R@10_by_epoch": r10, "best_epoch": result.best.get("epoch"),
        "best_val": result.best.get("val"), "trainable_params": result.trainable_params,
        "peak_gpu_memory_mb": peak_memory_mb(device),
    }


def index_on(root: Path, model_id: str, device: str, workers: int) -> dict[str, Any]:
    from indexer.config import EmbedConfig
    from indexer.pipeline import index_workdir

    t = time.perf_counter()
    result = index_workdir(Workdir(root), model_id, device=device, config=EmbedConfig(progress=False, workers=workers))
    wall = time.perf_counter() - t
    stages = result["stage_seconds"]
    image_seconds = sum(stages.values())
    n = result["embedded_images"]
    return {
        "device": device, "embedded_images": n, "embedded_captions": result["embedded_captions"],
        "stage_seconds": stages, "index_seconds": result["seconds"], "wall_seconds": round(wall, 2),
        "pipeline_images_per_s": round(n / image_seconds, 1) if image_seconds else None,
        "model_stage_images_per_s": round(n / stages["model"], 1) if stages.get("model") else None,
        "indexes": {k: {"factory": v.get("factory"), "n": v.get("n")} for k, v in result["indexes"].items()},
    }


def compare_embeddings(gpu_root: Path, cpu_root: Path, model_id: str) -> dict[str, Any]:
    from indexer.shards import load_embeddings

    out: dict[str, Any] = {}
    for kind in ("image", "patch", "caption"):
        ids_g, g = load_embeddings(Workdir(gpu_root), model_id, kind)
        ids_c, c = load_embeddings(Workdir(cpu_root), model_id, kind)
        if not np.array_equal(ids_g, ids_c):
            out[kind] = {"error": f"different ids: {len(ids_g)} vs {len(ids_c)}"}
            continue
        g2, c2 = g.reshape(-1, g.shape[-1]), c.reshape(-1, c.shape[-1])
        cos = (g2 * c2).sum(1) / (np.linalg.norm(g2, axis=1) * np.linalg.norm(c2, axis=1) + 1e-12)
        out[kind] = {"vectors": len(g2), "dim": int(g2.shape[1]), "max_abs_diff": float(np.abs(g2 - c2).max()),
                     "mean_abs_diff": float(np.abs(g2 - c2).mean()), "min_cosine": float(cos.min()),
                     "mean_cosine": float(cos.mean())}
    return out


@torch.no_grad()
def bare_forward(root: Path, model_id: str, device: torch.device, batch_sizes: list[int], repeats: int,
                 workers: int) -> dict[str, Any]:
    """Images/s of the model's forward pass (global + patches) on pixels already decoded, and of the text tower."""
    from indexer.data import pixel_cache
    from indexer.models import load_checkpoint

    workdir = Workdir(root)
    with Catalog.open(workdir, read_only=True) as catalog:
        info = catalog.model(model_id)
        items = catalog.image_rows()
        texts = [t for _, _, t in catalog.caption_rows()]
    model = load_checkpoint(info.path, device).eval()
    cache = pixel_cache(workdir.cache_dir, items, model.image_size, workers, progress=False, resize=model.resize)
    pixels = torch.from_numpy(cache.get([i for i, _ in items]))
    n = len(pixels)
    out: dict[str, Any] = {"images": n, "image_size": model.image_size}
    for bf16 in (False, True):
        for bs in batch_sizes:
            on_device = pixels.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model.encode_image_and_patches(on_device[:bs])  # warm up
                sync(device)
                t = time.perf_counter()
                for _ in range(repeats):
                    for s in range(0, n, bs):
                        model.encode_image_and_patches(on_device[s:s + bs])
                sync(device)
            out[f"images_per_s_{'bf16' if bf16 else 'fp32'}_b{bs}"] = round(repeats * n / (time.perf_counter() - t), 1)
        # from host memory (uint8 copied per batch), as the pipeline does
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            bs = batch_sizes[0]
            sync(device)
            t = time.perf_counter()
            for s in range(0, n, bs):
                model.encode_image_and_patches(pixels[s:s + bs])
            sync(device)
        out[f"images_per_s_{'bf16' if bf16 else 'fp32'}_b{bs}_from_host"] = round(n / (time.perf_counter() - t), 1)
    tokens = model.tokenize(texts)
    bs = batch_sizes[0]
    model.encode_text(tokens[:bs])
    sync(device)
    t = time.perf_counter()
    for s in range(0, len(tokens), bs):
        model.encode_text(tokens[s:s + bs])
    sync(device)
    out["captions"] = len(tokens)
    out[f"captions_per_s_fp32_b{bs}"] = round(len(tokens) / (time.perf_counter() - t), 1)
    # the same images through the GPU model in fp32 vs bf16: how far bf16 embeddings move
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=False):
        a = model.encode_image(pixels[:bs]).float()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=True):
        b = model.encode_image(pixels[:bs]).float()
    out["bf16_vs_fp32_image_min_cosine"] = float(torch.nn.functional.cosine_similarity(a, b).min())
    out["peak_gpu_memory_mb"] = peak_memory_mb(device)
    return out


def search(gpu_root: Path, cpu_root: Path | None, model_id: str, device: torch.device) -> dict[str, Any]:
    from indexer.search import Searcher

    searcher = Searcher(Workdir(gpu_root), model_id, str(device))
    other = Searcher(Workdir(cpu_root), model_id, "cpu") if cpu_root is not None else None
    hits = searcher.text_to_image(QUERIES[0], k=10)  # before anything loads the whole model: the text tower's path
    encoder = searcher.text_encoder
    out: dict[str, Any] = {"text_encoder": type(encoder).__name__, "text_encoder_device": str(encoder.device)}
    if other is not None:  # the torch-only text tower on the GPU against the whole model on the CPU
        other.model  # noqa: B018
        va, vb = searcher.text_vector(QUERIES[1]), other.text_vector(QUERIES[1])
        out["text_tower_gpu_vs_model_cpu_cosine"] = float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
    out["model_device"] = str(searcher.model.device)
    out["text_to_image_hits"] = len(hits)
    out["text_to_image_top3"] = [{"id": h.id, "score": round(h.score, 4), "captions": h.captions[:1]} for h in hits[:3]]
    out["text_to_image_val_hits"] = len(searcher.text_to_image(QUERIES[0], k=10, where="split = 'val'"))
    first = hits[0].id if hits else 1
    out["image_to_image_hits"] = len(searcher.image_to_image(first, k=10))
    with Catalog.open(Workdir(gpu_root), read_only=True) as catalog:
        path = catalog.image_details([first])[first]["path"]
    out["image_file_to_image_hits"] = len(searcher.image_to_image(path, k=10, exclude_self=False))
    out["image_to_text_hits"] = len(searcher.image_to_text(first, k=10))
    if other is not None:
        overlap = []
        for q in QUERIES:
            a = {h.id for h in searcher.text_to_image(q, k=10)}
            b = {h.id for h in other.text_to_image(q, k=10)}
            overlap.append(len(a & b) / max(1, len(a)))
        out["top10_overlap_with_cpu"] = [round(o, 2) for o in overlap]
        va, vb = searcher.text_vector(QUERIES[0]), other.text_vector(QUERIES[0])
        out["query_vector_cosine_gpu_cpu"] = float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
    times = []
    for r in range(20):
        t = time.perf_counter()
        searcher.text_to_image(QUERIES[r % len(QUERIES)], k=10)
        times.append(1000 * (time.perf_counter() - t))
    out["text_to_image_ms_p50"] = round(float(np.median(times)), 2)
    times = []
    for r in range(20):
        t = time.perf_counter()
        searcher.text_vector(QUERIES[r % len(QUERIES)] + f" {r}")
        sync(device)
        times.append(1000 * (time.perf_counter() - t))
    out["text_encode_ms_p50"] = round(float(np.median(times)), 2)
    ok = out["model_device"].startswith(device.type) and out["text_to_image_hits"] == 10 \
        and out["image_to_text_hits"] == 10 and out["image_to_image_hits"] == 10
    out["ok"] = bool(ok)
    return out


def evaluate(root: Path, model_id: str, device: torch.device) -> dict[str, Any]:
    from grounding import Grounder, evaluate_grounding
    from indexer.evaluate import evaluate_retrieval

    retrieval = evaluate_retrieval(Workdir(root), "val", model_id)
    grounding = evaluate_grounding(Workdir(root), "val", model_id, device=str(device), progress=False)
    grounder = Grounder(Workdir(root), model_id, str(device))
    one = grounder.search("a black dog", k=5)
    return {"retrieval_val": {k: retrieval[k] for k in ("images", "queries", "text_to_image", "image_to_text")},
            "grounding_val": {k: grounding.get(k) for k in ("phrases", "pointing_game", "box_acc@0.5")},
            "grounder_model_device": str(grounder.model.device), "region_search_hits": len(one),
            "region_search_first": {"image_id": one[0].image_id, "score": round(one[0].score, 4),
                                    "boxes": len(one[0].boxes)} if one else None}


# -- main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the GPU paths run (default: %(default)s)")
    parser.add_argument("--images", type=int, default=2000, help="synthetic images (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per precision (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch (default: %(default)s)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "auto"],
                        help="one training run each, in its own copy of the workdir (default: fp32 bf16)")
    parser.add_argument("--forward-batches", type=int, nargs="+", default=[256, 1024],
                        help="batch sizes of the bare forward timing (default: %(default)s)")
    parser.add_argument("--forward-repeats", type=int, default=5, help="passes over the images (default: %(default)s)")
    parser.add_argument("--no-cpu-compare", action="store_true", help="skip indexing a copy on the CPU")
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                        help="decoding processes (default: this machine's cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where to build the workdirs (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the workdirs")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test sizes: 120 images, 1 epoch, batch 32, one forward batch of 64, 1 repeat")
    parser.add_argument("--out", type=Path, help="also write the JSON report here (rewritten after every step)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.epochs, args.batch_size = 120, 1, 32
        args.forward_batches, args.forward_repeats = [64], 1
    device = torch.device(args.device)
    report = Report(args.out, args)
    base_dir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-paths-"))
    base_dir = base_dir.resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    try:
        report.data["environment"] = report.step("environment", environment, device)
        base = base_dir / "base"
        report.step("ingest", ingest, base, args.images, args.seed)
        trained: dict[str, dict[str, Any]] = {}
        for precision in args.precisions:
            result = report.step(f"train_{precision}", train_once, base, base_dir / f"train-{precision}", device,
                                 precision, args)
            if result:
                trained[precision] = result
        if not trained:
            raise SystemExit("no training run finished: nothing to index")
        precision = "fp32" if "fp32" in trained else next(iter(trained))
        model_id = trained[precision]["model_id"]
        gpu_root = base_dir / f"train-{precision}"
        cpu_root = None
        if not args.no_cpu_compare:
            cpu_root = base_dir / f"train-{precision}-cpu"
            shutil.copytree(gpu_root, cpu_root)  # before indexing: the copy holds the model, no embeddings
        report.data["indexed_model"] = {"precision": precision, "model_id": model_id}
        reset_peak(device)
        indexed = report.step("index_device", index_on, gpu_root, model_id, str(device), args.workers)
        cpu_indexed = indexed and cpu_root is not None and report.step("index_cpu", index_on, cpu_root, model_id,
                                                                       "cpu", args.workers)
        if cpu_indexed:
            report.step("embeddings_device_vs_cpu", compare_embeddings, gpu_root, cpu_root, model_id)
        report.step("bare_forward", bare_forward, gpu_root, model_id, device, args.forward_batches,
                    args.forward_repeats, args.workers)
        if indexed:
            report.step("search", search, gpu_root, cpu_root, model_id, device)
            report.step("evaluate", evaluate, gpu_root, model_id, device)
        summary = {"ok": not report.data["errors"], "failed_steps": sorted(report.data["errors"])}
        for p, r in trained.items():
            summary[f"train_{p}_images_per_s"] = r["images_per_s_median_after_first"]
            summary[f"train_{p}_best_val_t2i_R@10"] = (r.get("best_val") or {}).get("text_to_image", {}).get("R@10")
            summary[f"train_{p}_wall_seconds"] = r["wall_seconds"]
        steps = report.data["steps"]
        if "index_device" in steps:
            summary["embed_pipeline_images_per_s"] = steps["index_device"]["pipeline_images_per_s"]
        if "embeddings_device_vs_cpu" in steps:
            summary["image_embedding_min_cosine_device_vs_cpu"] = steps["embeddings_device_vs_cpu"]["image"].get(
                "min_cosine")
        if "search" in steps:
            summary["search_ok"] = steps["search"]["ok"]
        report.data["summary"] = summary
        report.save()
        print(json.dumps(report.data["summary"], indent=2))
    finally:
        report.save()
        if not args.keep and args.workdir is None:
            shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
