"""The markdown report of a benchmark suite run: `python benchmarks/report.py OUT` reads OUT/*.json (written
by `benchmarks/run_all.py`) and writes OUT/REPORT.md with tables and plots (OUT/*.png)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _plot_search(name: str, result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def family(index: str) -> str:  # an IVF index's list count grows with n: one line for each family
        if not index.startswith("IVF"):
            return index
        kind = "IVF-PQ" if ",PQ" in index else "IVF-Flat"
        return f"{kind} (about 4 sqrt(n) lists)" + (" + rerank" if index.endswith("+rerank") else "")

    sizes = sorted(result["sizes"], key=int)
    series: dict[str, list[tuple[int, dict]]] = {}
    for n in sizes:
        for index, row in result["sizes"][n].items():
            series.setdefault(family(index), []).append((int(n), row))
    figure, (latency, recall) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, points in sorted(series.items()):
        xs = [n for n, _ in points]
        latency.plot(xs, [r["p50_ms"] for _, r in points], marker="o", label=label)
        recall.plot(xs, [r["recall@10"] for _, r in points], marker="o", label=label)
    latency.set(xscale="log", yscale="log", xlabel="vectors", ylabel="p50 ms (one query)", title="latency")
    recall.set(xscale="log", xlabel="vectors", ylabel="recall@10 vs exact", ylim=(0, 1.05), title="recall")
    latency.legend(fontsize=7)
    figure.tight_layout()
    path = out / f"{name}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [f"![{name}]({path.name})", ""]


def _plot_embedding(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = result["images_per_s"]
    names, values = [], []
    for key, value in rates.items():
        if isinstance(value, dict):  # the Ray engine: with and without its start-up
            for sub, v in value.items():
                names.append(f"{key} ({sub.replace('_', ' ')})")
                values.append(v)
        else:
            names.append(key.replace("_", " "))
            values.append(value)
    figure, axis = plt.subplots(figsize=(7, 2.8))
    axis.barh(names, values)
    axis.set(xlabel="images / s", title="embedding throughput")
    figure.tight_layout()
    figure.savefig(out / "embed_throughput.png", dpi=110)
    plt.close(figure)
    lines = ["| path | images/s |", "| --- | ---: |"] + [f"| {n} | {v} |" for n, v in zip(names, values, strict=True)]
    return lines + ["", "![embedding throughput](embed_throughput.png)", ""]


def make_report(out: Path) -> Path:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    lines = ["# Benchmark report", "",
             "Written by `benchmarks/report.py` from the JSON files beside it (`benchmarks/run_all.py`). Every figure "
             "was measured on the machine its section names.", ""]
    notes = out / "NOTES.md"  # what the JSON cannot say: e.g. which runs shared the machine with other work
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
    if "embed_throughput" in results:
        r = results["embed_throughput"]
        lines += ["## Embedding throughput", "",
                  f"Machine: {r['machine']}; model {r['model']}, {r['images']:,} images.", ""]
        lines += _plot_embedding(r, out)
    for name, title in (("vs_clip_retrieval", "Against clip-retrieval: embedding a folder of images"),
                        ("embed_precision", "Embedding precision: bf16 against float32"),
                        ("embed_options", "Embedding: batch size, channels_last, torch.compile"),
                        ("serve_latency", "groundex serve: HTTP against in-process and the CLI"),
                        ("serve_load", "groundex serve under load: 8 clients, an index build halfway")):
        md = out / f"{name}.md"
        if name in results and md.is_file():
            lines += [f"## {title}", "", md.read_text().strip(), ""]
    for name in sorted(n for n in results if n.startswith("search_latency")):
        r = results[name]
        label = name.removeprefix("search_latency_").replace("d", "d = ", 1).replace("_5m", ", 5M vectors").replace(
            "_ivfpq", ", IVF-PQ with and without re-ranking")
        lines += [f"## Search: {label}", ""]
        md = out / f"{name}.md"
        lines += [md.read_text().strip() if md.is_file() else json.dumps(r)[:2000], ""] + _plot_search(name, r, out)
    if "region_search" in results:
        md = out / "region_search.md"
        lines += ["## Phrase -> region search", "", md.read_text().strip() if md.is_file() else "", ""]
    if "ui_pages" in results:
        r = results["ui_pages"]
        lines += ["## The app's pages", "", f"Workdir {r['workdir']}, model {r['model']}, {r['machine']}.", "",
                  f"Search page re-run after a new query: {r['search_page_rerun_s']['median']} s median "
                  f"({r['page_over_bare']}x the bare search call, "
                  f"{r['bare_text_to_image_s']['median'] * 1000:.0f} ms).",
                  "", "| page | seconds | exceptions |", "| --- | ---: | --- |"]
        lines += [f"| {p} | {v['seconds']} | {len(v['exceptions'])} |" for p, v in r["pages"].items()] + [""]
    for name in sorted(n for n in results if n.startswith("build_stages")):
        md = out / f"{name}.md"
        lines += [f"## End-to-end build per stage: {results[name]['source']}", "",
                  md.read_text().strip() if md.is_file() else json.dumps(results[name]["stages"]), ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(make_report(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/suite")))
