"""groundex against clip-retrieval on clip-retrieval's own job: embed a folder of images with an open_clip model.

    python benchmarks/vs_clip_retrieval.py [--images 2000] [--archs ViT-S-32,ViT-B-32] [--rounds 1]
                                          [--scratch /tmp/gx-vs-cr] [--out docs/results/vs_clip_retrieval.json]

Both tools get the same images (the first N of the real Flickr30k sample, linked into one folder) and the
same weights (the architecture's random initialisation with seed 0, saved locally: `.pt` for clip-retrieval,
`.safetensors` for groundex), one after the other in this run, on this machine:

- clip-retrieval 2.45.0 `clip-retrieval inference` (image embeddings only), in its own virtual environment,
  created here from the package registry on the first run (it pins numpy < 2 and needs setuptools < 81), and
  run under a timeout (it hangs on some failures). Its stats give its batch loop's time.
- groundex, the whole path a user runs: `groundex ingest folder`, `groundex model add ARCH --pretrained FILE`,
  `groundex index` (image and patch embeddings, FAISS indexes), with `--precision fp32` and with the default
  (`auto`: bf16 where the CPU or GPU runs it fast; the row names what it ran in).
- the limits: the bare forward pass of the same model (groundex's, images and patches) on preloaded pixels,
  in batches of groundex's default size for the device, in float32 and bf16.
- agreement: cosine between each image's groundex and clip-retrieval embedding.

"steady" is the batch loop alone (decode, model, write) in images/s: clip-retrieval's stats, groundex's
`index` stage times. The report is one table per architecture with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _report import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.config import EmbedConfig  # noqa: E402
from indexer.data import decode_square  # noqa: E402
from indexer.devices import autocast, bf16_is_fast  # noqa: E402
from indexer.models import load_checkpoint  # noqa: E402
from indexer.shards import load_embeddings  # noqa: E402
from warehouse import Catalog, Workdir  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "flickr30k-sample" / "images"
CLIP_RETRIEVAL = "clip-retrieval==2.45.0"
# clip-retrieval's own pins, and this environment's torch (others are multi-GB downloads)
CLIP_RETRIEVAL_DEPS = ("numpy<2", "setuptools<81", "torch==2.14.1", "torchvision==0.29.1")
GROUNDEX = [sys.executable, "-m", "ui.cli"]


def _run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command to completion (or stop the run, naming it); its wall time and stdout. On a timeout the
    command's whole process group is killed: clip-retrieval leaves worker processes behind when it hangs."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise SystemExit(f"timed out after {timeout:.0f} s: {' '.join(command)}\n{out[-3000:]}\n{err[-3000:]}"
                         ) from None
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"exit {process.returncode}: {' '.join(command)}\n{out[-3000:]}\n{err[-3000:]}")
    return seconds, out


def clip_retrieval_venv(folder: Path) -> Path:
    """A virtual environment with clip-retrieval, made once (a few minutes) and reused."""
    binary = folder / "bin" / "clip-retrieval"
    if binary.exists():
        return binary
    print(f"creating {folder} with {CLIP_RETRIEVAL} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, CLIP_RETRIEVAL, *CLIP_RETRIEVAL_DEPS], check=True)
    return binary


def image_folder(folder: Path, n: int) -> list[str]:
    """The first n sample images (by name), linked into `folder`; their names."""
    names = sorted(p.name for p in SAMPLE.glob("*.jpg"))[:n]
    if len(names) < n:
        raise SystemExit(f"{SAMPLE} has {len(names)} images, fewer than {n}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).symlink_to(SAMPLE / name)
    return names


def save_weights(arch: str, folder: Path) -> tuple[Path, Path]:
    """The architecture's random initialisation (seed 0) as a .pt state dict and as .safetensors."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    pt, st = folder / f"{arch}.pt", folder / f"{arch}.safetensors"
    torch.save(state, pt)
    save_file(state, st)
    return pt, st


def run_clip_retrieval(binary: Path, images: Path, weights: Path, arch: str, out: Path, timeout: float,
                       batch_size: int) -> dict[str, object]:
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    seconds, _ = _run([str(binary), "inference", "--input_dataset", str(images), "--output_folder", str(out),
                       "--input_format", "files", "--enable_text", "False", "--enable_metadata", "False",
                       "--batch_size", str(batch_size), "--num_prepro_workers", str(os.cpu_count() or 1),
                       "--clip_model", f"open_clip:{arch}/{weights}"], timeout, env)
    stats = json.loads((out / "stats" / "0.json").read_text())
    import pyarrow.parquet as pq

    paths = pq.read_table(out / "metadata" / "metadata_0.parquet").column("image_path").to_pylist()
    vectors = np.load(out / "img_emb" / "img_emb_0.npy").astype(np.float32)
    return {"whole_s": seconds, "loop_s": float(stats["total_duration"]), "images": int(stats["sample_count"]),
            "vectors": dict(zip((Path(p).name for p in paths), vectors, strict=True))}


def run_groundex(images: Path, weights: Path, arch: str, workdir: Path, precision: str, timeout: float
                 ) -> dict[str, object]:
    shutil.rmtree(workdir, ignore_errors=True)
    w = ["--workdir", str(workdir)]
    ingest, _ = _run([*GROUNDEX, "ingest", "folder", "--root", str(images), *w, "--no-progress"], timeout)
    add, _ = _run([*GROUNDEX, "model", "add", arch, "--pretrained", str(weights), *w, "--label", "bench"], timeout)
    index, out = _run([*GROUNDEX, "index", *w, "--precision", precision, "--no-progress", "--json"], timeout)
    result = json.loads(out)
    stages = result["stage_seconds"]
    workdir_ = Workdir(workdir)
    with Catalog.open(workdir_, read_only=True) as catalog:
        paths = dict(catalog.image_rows())
        model = catalog.model("bench")
    ids, vectors = load_embeddings(workdir_, model.id, "image")
    return {"whole_s": ingest + add + index, "ingest_s": ingest, "model_add_s": add, "index_s": index,
            "loop_s": stages["decode"] + stages["model"] + stages["write"], "images": result["embedded_images"],
            "precision": result["precision"], "model_path": str(model.path),
            "vectors": {Path(paths[int(i)]).name: v for i, v in zip(ids, vectors, strict=True)}}


@torch.no_grad()
def bare_forward(model_path: Path, images: Path, names: list[str], bf16: bool) -> float:
    """Images/s of the model's forward pass (images and patches) on pixels already in memory, in batches of
    groundex's size for the device."""
    model = load_checkpoint(model_path).eval()
    batch = EmbedConfig().batch_for(model.device.type)
    pixels = torch.from_numpy(np.stack([decode_square(str(images / n), model.image_size, model.resize)
                                        for n in names]))
    with autocast(model.device, bf16):
        model.encode_image_and_patches(pixels[:batch])  # warm up
        started = time.perf_counter()
        for s in range(0, len(pixels), batch):
            model.encode_image_and_patches(pixels[s:s + batch])
    return len(pixels) / (time.perf_counter() - started)


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    names = sorted(set(a) & set(b))
    x = np.stack([a[n] for n in names])
    y = np.stack([b[n] for n in names])
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return {"images": len(names), "min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"bf16 fast: {bf16_is_fast(torch.device('cpu'))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--archs", default="ViT-S-32,ViT-B-32")
    parser.add_argument("--rounds", type=int, default=1, help="repeat both tools this many times (figures: best)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/gx-vs-cr"))
    parser.add_argument("--venv", type=Path, default=None, help="clip-retrieval's venv (default: SCRATCH/venv)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command")
    parser.add_argument("--cr-batch-sizes", default="256,64",
                        help="clip-retrieval's --batch_size, one run each; the first (its default) is the baseline")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not SAMPLE.is_dir():
        raise SystemExit(f"the sample is not at {SAMPLE}")
    binary = clip_retrieval_venv(args.venv or args.scratch / "venv")
    batches = [int(b) for b in args.cr_batch_sizes.split(",")]
    images = args.scratch / "images"
    names = image_folder(images, args.images)

    report: dict[str, object] = {"machine": machine(), "images": args.images, "rounds": args.rounds, "archs": {}}
    lines = [f"Machine: {report['machine']}. {args.images} Flickr30k sample images, best of {args.rounds} round(s).",
             ""]
    for arch in args.archs.split(","):
        pt, st = save_weights(arch, args.scratch / "weights")
        best: dict[str, dict[str, object]] = {}
        for _ in range(args.rounds):
            runs = {f"clip-retrieval, batch {b}": run_clip_retrieval(binary, images, pt, arch, args.scratch / "cr-out",
                                                                     args.timeout, b) for b in batches}
            for precision in ("fp32", "auto"):  # auto: the default, bf16 where the CPU or GPU runs it fast
                runs[f"groundex {precision}"] = run_groundex(images, st, arch, args.scratch / f"gx-{precision}",
                                                             precision, args.timeout)
            for name, run in runs.items():
                if name not in best or run["whole_s"] < best[name]["whole_s"]:
                    best[name] = run
        model_path = Path(best["groundex fp32"]["model_path"])
        limits = {p: bare_forward(model_path, images, names, p == "bf16") for p in ("fp32", "bf16")}
        cr = best[f"clip-retrieval, batch {batches[0]}"]  # its default: the baseline of every ratio
        rows, figures = [], {}
        for name, run in best.items():
            precision = run.get("precision", "fp32")  # what groundex's index ran in (clip-retrieval: float32)
            if name == "groundex auto":
                name = f"groundex auto ({precision})"
            figures[name] = {
                "whole_s": round(run["whole_s"], 2), "steady_images_per_s": round(run["images"] / run["loop_s"], 1),
                "whole_vs_clip_retrieval": round(cr["whole_s"] / run["whole_s"], 3),
                "steady_vs_bare_forward": round(run["images"] / run["loop_s"] / limits[precision], 3),
                **({k: round(run[k], 2) for k in ("ingest_s", "model_add_s", "index_s")} if "ingest_s" in run else {}),
                **({"agreement_with_clip_retrieval": agreement(run["vectors"], cr["vectors"])}
                   if not name.startswith("clip-retrieval") else {}),
            }
            f = figures[name]
            cos = f.get("agreement_with_clip_retrieval", {})
            rows.append(f"| {name} | {f['whole_s']:.1f} | {f['whole_vs_clip_retrieval']:.2f}x | "
                        f"{f['steady_images_per_s']:.1f} | {f['steady_vs_bare_forward']:.2f} | "
                        + (f"{cos['min']:.5f} / {cos['mean']:.5f} |" if cos else "- |"))
        report["archs"][arch] = {"runs": figures, "bare_forward_images_per_s": {k: round(v, 1) for k, v in
                                                                                 limits.items()}}
        lines += [f"**{arch}** (bare forward, images and patches: fp32 {limits['fp32']:.1f}, bf16 "
                  f"{limits['bf16']:.1f} images/s)", "",
                  "| | whole command(s), s | vs clip-retrieval | steady, images/s | of the bare forward | "
                  "cosine to clip-retrieval (min / mean) |",
                  "|---|---|---|---|---|---|", *rows, ""]
    emit(report, args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
