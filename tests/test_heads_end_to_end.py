"""Synthetic scenes -> tiny CLIP -> index -> taggers, for real: tags far above the prior, stored and
usable in search filters; the CLI commands."""

import json

import numpy as np
import pytest

import warehouse
from heads.tagging import evaluate_tags, load_tagger
from indexer.pipeline import index_workdir
from indexer.search import Searcher
from indexer.train import TrainConfig, train
from ui.cli import main
from warehouse import Catalog, IngestConfig, SyntheticConfig, Workdir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = Workdir(tmp_path_factory.mktemp("heads") / "work")
    warehouse.ingest_synthetic(workdir, SyntheticConfig(n=600), config=IngestConfig(progress=False))
    train(workdir, TrainConfig(epochs=6, batch_size=64, progress=False))
    index_workdir(workdir)
    return workdir


def test_every_tagger_is_far_above_the_prior(workdir):
    result = evaluate_tags(workdir, "val")
    methods = result["methods"]
    prior = methods["prior"]
    assert result["images"] > 40 and result["vocabulary"] > 20
    for name in ("knn", "probe", "fusion_uncaptioned", "fusion"):
        assert methods[name]["micro_f1"] > prior["micro_f1"] + 10, (name, methods)
        assert methods[name]["mAP"] > 2 * prior["mAP"], (name, methods)
    assert methods["zeroshot"]["mAP"] > prior["mAP"] + 5, methods  # prompts rank images without any labels
    assert methods["knn"]["k"] in (1, 3, 5, 7, 11, 21) and len(methods["knn"]["micro_f1_by_k_on_val"]) == 6
    with pytest.raises(ValueError, match="evaluate on val or test"):
        evaluate_tags(workdir, "train")


def test_tags_are_stored_filter_searches_and_the_fitted_tagger_reloads(workdir, capsys):
    assert main(["tag", "--workdir", str(workdir.root), "--method", "knn", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    with Catalog.open(workdir, read_only=True) as catalog:
        n_images = catalog.counts()["images"]
        assert result["images"] == n_images and result["tags"] > n_images  # several tags per image
        word, count = catalog.tag_counts()[0]
        tagged = set(catalog.image_ids_where(f"tag = '{word}'"))
    assert len(tagged) == count
    hits = Searcher(workdir).text_to_image("a red circle", k=5, where=f"tag = '{word}' AND split = 'val'")
    assert hits and all(h.id in tagged and h.split == "val" for h in hits)
    tagger, data = load_tagger(workdir, "knn")
    ids = np.array(sorted(tagged))[:5]
    _, vectors = data.image_vectors(ids)
    assert all(word in [w for w, _ in tags] for tags in tagger.predict(data, vectors, ids))  # same tags again
    with pytest.raises(SystemExit):  # argparse names the choices
        main(["tag", "--workdir", str(workdir.root), "--method", "nonsense"])
    assert "invalid choice" in capsys.readouterr().err
