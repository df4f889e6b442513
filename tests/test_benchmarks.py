"""The benchmark suite's search benchmark and its report, at a size that runs in seconds, and the pure parts of
the tag and concept benchmarks."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from search_latency import numpy_search  # noqa: E402


def test_numpy_baseline_is_exact_top_k_in_order():
    rng = np.random.default_rng(0)
    base, queries = rng.standard_normal((3000, 16), dtype=np.float32), rng.standard_normal((70, 16), dtype=np.float32)
    expected = np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(numpy_search(base, queries, 10), expected)


def test_search_benchmark_then_report(tmp_path):
    out = tmp_path / "suite"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_latency.py"), "--sizes", "3000",
                    "--factories", "Flat", "IVF16,PQ8", "--queries", "60", "--single", "10",
                    "--out", str(out / "search_latency_d256.json")], check=True, capture_output=True, cwd=ROOT)
    rows = json.loads((out / "search_latency_d256.json").read_text())["sizes"]["3000"]
    assert set(rows) == {"numpy", "Flat", "IVF16,PQ8", "IVF16,PQ8+rerank"}
    assert rows["Flat"]["recall@10"] == 1.0
    # re-ranking scores the candidates exactly: it can only find more of the true top 10 than the codes alone
    assert rows["IVF16,PQ8+rerank"]["recall@10"] > rows["IVF16,PQ8"]["recall@10"]
    assert rows["IVF16,PQ8"]["bytes_per_vector"] < rows["Flat"]["bytes_per_vector"] / 4

    (out / "NOTES.md").write_text("A note the JSON cannot carry.\n")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(out)], check=True,
                   capture_output=True, cwd=ROOT)
    report = (out / "REPORT.md").read_text()
    assert "A note the JSON cannot carry." in report
    assert "## Search: d = 256" in report and "| 3,000 | IVF16,PQ8+rerank |" in report
    assert (out / "search_latency_d256.png").stat().st_size > 0


def test_sharp_knn_votes_go_from_the_nearest_neighbour_to_an_even_vote():
    from tag_scores import sharp_knn_scores

    labels = np.array([[1, 0], [0, 1], [0, 1]], dtype=bool)          # three gallery images, two tags
    rows = np.array([[0, 1, 2], [2, -1, -1], [-1, -1, -1]])          # as heads.neighbours: -1 / -inf, no neighbour
    sims = np.array([[0.9, 0.5, 0.4], [0.8, -np.inf, -np.inf], [-np.inf] * 3])
    with np.errstate(invalid="raise"):                               # no inf - inf on the way
        sharp = sharp_knn_scores(rows, sims, labels, 3, tau=1e-3)
        even = sharp_knn_scores(rows, sims, labels, 3, tau=1e3)
    assert np.allclose(sharp, [[1, 0], [0, 1], [0, 0]], atol=1e-6)    # the nearest one decides; none: no votes
    assert np.allclose(even, [[1 / 3, 2 / 3], [0, 1], [0, 0]], atol=1e-3)
    with pytest.raises(ValueError):
        sharp_knn_scores(rows, sims, labels, 4, tau=0.1)


def test_concept_scores_count_pairs_from_counts_with_the_prompt_and_reference_yardsticks():
    from caption_concepts import score

    references = [["a dog on snow", "a dog"], ["a bike in snow", "a man"], ["a cat", "a cat sits"]]
    captions = ["a dog in the snow", "a man", "a cat in snow"]
    prompts = [["snow and a dog"], ["a bike"], ["snow"]]
    s = score(captions, references, ("snow", "bike"), prompts)
    # pairs: (0, snow) named, prompt has it; (1, snow) not named, prompt lacks it; (1, bike) not named, prompt has it
    assert s["by_concept"]["snow"] == {"images": 2, "named_pct": 50.0, "references_name_pct": 50.0,
                                       "prompt_names_pct": 50.0, "named_where_prompt_names_pct": 100.0}
    assert s["by_concept"]["bike"]["named_where_prompt_names_pct"] == 0.0
    assert s["named_pct"] == 33.3 and s["prompt_names_pct"] == 66.7 and s["named_where_prompt_names_pct"] == 50.0
    assert s["named_where_absent_pct"] == 100.0                      # image 2 names snow, its captions do not
    none = score(["a cat"], [["a cat"]], ("snow",), [["snow"]])
    assert none["named_pct"] is None and none["named_where_prompt_names_pct"] is None and not none["by_concept"]
