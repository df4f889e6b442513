"""Models as movable artefacts: `groundex model add / list / export / remove / label` and `train --base`, through the
CLI, on real (small) models: a tiny CLIP trained for real on synthetic scenes, and an open_clip architecture with
local weights."""

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from indexer.models import load_checkpoint
from indexer.shards import load_embeddings
from tests.helpers import MICRO_VIT, MICRO_VIT_CONFIG, built_workdir, micro_vit_weights
from ui.cli import main
from warehouse import Catalog, Workdir

pytestmark = pytest.mark.slow


def groundex(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok_json(capsys, *argv):
    code, out, err = groundex(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def error(capsys, *argv, match: str) -> str:
    code, _, err = groundex(capsys, *argv)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert match in line, line
    return line


def photo_folder(source: Workdir, folder: Path, n: int) -> Path:
    """An uncaptioned folder of the first `n` image files of a workdir."""
    folder.mkdir(parents=True)
    with Catalog.open(source, read_only=True) as catalog:
        for _, path in catalog.image_rows()[:n]:
            shutil.copyfile(path, folder / Path(path).name)
    return folder


def vectors_by_file(workdir: Workdir, model_id: str) -> dict[str, np.ndarray]:
    with Catalog.open(workdir, read_only=True) as catalog:
        names = {i: Path(p).name for i, p in catalog.image_rows()}
    ids, vectors = load_embeddings(workdir, model_id, "image")
    return {names[i]: v for i, v in zip(ids.tolist(), vectors, strict=True)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Workdir:
    return built_workdir(tmp_path_factory.mktemp("trained") / "w", n=120, epochs=2)


def test_a_model_trained_in_one_workdir_searches_an_uncaptioned_folder_in_another(trained, tmp_path, capsys):
    model_id = ok_json(capsys, "model", "list", "--workdir", trained.root)[0]["id"]
    export = tmp_path / "export"
    assert groundex(capsys, "model", "export", model_id, "--out", export, "--workdir", trained.root)[0] == 0
    record = json.loads((tmp_path / "export" / "groundex-model.json").read_text())
    assert record["id"] == model_id and record["runs"][0]["command"] == "train"
    assert record["info"]["data"]["train_images"] > 0 and "R@10" in (tmp_path / "export" / "MODEL_CARD.md").read_text()

    other = Workdir(tmp_path / "other")
    photos = photo_folder(trained, tmp_path / "photos", 30)
    assert groundex(capsys, "ingest", "folder", "--root", photos, "--workdir", other.root, "--no-progress")[0] == 0
    error(capsys, "index", "--workdir", other.root, match="no model in this workdir yet")
    error(capsys, "train", "--workdir", other.root, "--epochs", "1", match="model add")
    added = ok_json(capsys, "model", "add", tmp_path / "export", "--label", "scenes", "--workdir", other.root)
    assert added["id"] == model_id and added["source"].startswith("import:")
    assert groundex(capsys, "index", "--workdir", other.root, "--model", "scenes", "--no-progress")[0] == 0
    hits = ok_json(capsys, "search", "--workdir", other.root, "--model", "scenes", "a red circle", "-k", "5")["hits"]
    assert len(hits) == 5 and all(Path(h["path"]).parent == photos for h in hits)

    here, there = vectors_by_file(trained, model_id), vectors_by_file(other, model_id)
    assert len(there) == 30 and all(np.array_equal(there[name], here[name]) for name in there)  # bit for bit
    listed = ok_json(capsys, "model", "list", "--workdir", other.root)[0]
    assert listed["label"] == "scenes" and listed["indexes"] == {"image": 30, "patch": 30 * 64}
    assert listed["info"]["exported_runs"][0]["command"] == "train" and listed["metrics"] == record["metrics"]
    for workdir in (trained, other):
        code, out, _ = groundex(capsys, "verify", "--workdir", workdir.root)
        assert code == 0, out


def test_an_open_clip_model_with_local_weights_indexes_and_grounds_without_training(trained, tmp_path, capsys,
                                                                                     monkeypatch):
    weights = micro_vit_weights(tmp_path / "open_clip")
    workdir = Workdir(tmp_path / "w")
    photos = photo_folder(trained, tmp_path / "photos", 12)
    wide = Image.open(next(photos.iterdir())).convert("RGB").resize((96, 64))
    wide.save(photos / "wide.png")  # one non-square image: open_clip centre-crops it
    assert groundex(capsys, "ingest", "folder", "--root", photos, "--workdir", workdir.root, "--no-progress")[0] == 0
    added = ok_json(capsys, "model", "add", MICRO_VIT, "--pretrained", weights, "--label", "micro", "--workdir",
                    workdir.root)
    assert added["source"] == f"weights:{weights.resolve()}" and added["info"]["resize"] == "center-crop"
    assert added["info"]["patch_grid"] == [4, 4] and added["info"]["mode"] == "none"
    assert groundex(capsys, "index", "--workdir", workdir.root, "--no-progress")[0] == 0
    assert len(ok_json(capsys, "search", "--workdir", workdir.root, "a red circle", "-k", "4")["hits"]) == 4

    # the stored vectors are open_clip's own, with its preprocessing
    model, _, preprocess = open_clip.create_model_and_transforms(MICRO_VIT, pretrained=str(weights))
    with torch.no_grad():
        expected = F.normalize(model.encode_image(preprocess(wide)[None]), dim=-1)[0].numpy()
    stored = vectors_by_file(workdir, added["id"])["wide.png"].astype(np.float32)
    assert float(stored @ expected) >= 0.999  # float16 storage

    with Catalog.open(workdir, read_only=True) as catalog:
        wide_id = next(i for i, p in catalog.image_rows() if p.endswith("wide.png"))
    grounded = ok_json(capsys, "ground", "--workdir", workdir.root, "a red circle", "--image-id", wide_id)
    result = grounded["results"][0]
    assert result["window"] == [16.0, 0.0, 80.0, 64.0]  # the central 64 x 64 square of the 96 x 64 image
    assert 16 <= result["point"][0] <= 80 and all(16 <= b["x1"] < b["x2"] <= 80 for b in result["boxes"])
    similar = ok_json(capsys, "search", "--workdir", workdir.root, "--image", photos / "wide.png", "-k", "3")["hits"]
    # image -> image from the file finds its own stored vector first: the upload path crops as the index did
    assert len(similar) == 3 and similar[0]["image_id"] == wide_id and similar[0]["score"] >= 0.999
    regions = ok_json(capsys, "ground", "--workdir", workdir.root, "a red circle", "-k", "3")["results"]
    assert len(regions) == 3  # phrase -> region over the collection, through the patch index
    for region in regions:
        x1, _, x2, _ = region["window"]
        assert all(x1 <= b["x1"] < b["x2"] <= x2 for b in region["boxes"])

    # the app searches with it too
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GROUNDEX_WORKDIR", str(workdir.root))
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "ui" / "app" / "main.py"), default_timeout=180)
    app.run()
    app.text_input(key="search_query").input("a red circle").run()
    assert not app.exception, [e.value for e in app.exception]
    assert len(app.get("image")) == 12

    # zero-shot tags from a given vocabulary, with no captions to tune on
    error(capsys, "tag", "--workdir", workdir.root, "--method", "knn", "--keywords", "red", match="--method zeroshot")
    tagged = ok_json(capsys, "tag", "--workdir", workdir.root, "--method", "zeroshot", "--keywords", "red, circle,dog",
                     "--threshold", "0.6")
    assert tagged["vocabulary"] == 3 and tagged["threshold"] == 0.6
    # the same rule computed here: each keyword's prompt standardized over the collection, sigmoid(z) >= 0.6
    micro = load_checkpoint(Path(added["path"]), "cpu")
    with torch.no_grad():
        prompts = micro.encode_text([f"a photo of a {w}" for w in ("red", "circle", "dog")]).numpy()
    _, image_vectors = load_embeddings(workdir, added["id"], "image")
    cosines = image_vectors @ prompts.T
    z = (cosines - cosines.mean(axis=0)) / (cosines.std(axis=0) + 1e-6)
    assert tagged["tags"] == int((1 / (1 + np.exp(-z)) >= 0.6).sum()) > 0
    with Catalog.open(workdir, read_only=True) as catalog:
        stored = catalog.query("SELECT DISTINCT keyword FROM tags")
        assert {k for (k,) in stored} <= {"red", "circle", "dog"}
        keyword = stored[0][0]
        tagged_ids = {i for (i,) in catalog.query("SELECT image_id FROM tags WHERE keyword = ?", [keyword])}
    hits = ok_json(capsys, "search", "--workdir", workdir.root, "a photo", "-k", "50", "--where",
                   f"tag = '{keyword}'")["hits"]
    assert {h["image_id"] for h in hits} == tagged_ids
    code, out, _ = groundex(capsys, "verify", "--workdir", workdir.root)
    assert code == 0, out


def test_train_base_fine_tunes_a_recorded_model_and_records_its_parent(trained, tmp_path, capsys):
    weights = micro_vit_weights(tmp_path / "open_clip")
    workdir = Workdir(tmp_path / "w")
    shutil.copytree(trained.root, workdir.root, ignore=shutil.ignore_patterns("cache"))  # images stay where they are
    added = ok_json(capsys, "model", "add", MICRO_VIT, "--pretrained", weights, "--label", "micro", "--workdir",
                    workdir.root)
    error(capsys, "train", "--workdir", workdir.root, "--model", "micro", match="now --base")
    tuned = ok_json(capsys, "train", "--workdir", workdir.root, "--base", "micro", "--epochs", "1", "--batch-size",
                    "32", "--label", "micro-tuned", "--no-progress")
    with Catalog.open(workdir, read_only=True) as catalog:
        model = catalog.model("micro-tuned")
    assert model.id == tuned["model_id"] != added["id"]
    assert model.parent_id == added["id"] and model.info["resize"] == "squash" and model.source == "trained"
    error(capsys, "train", "--workdir", workdir.root, "--base", "micro", "--epochs", "1", "--label", "micro",
          match="already names model")

    # every command that takes --model takes the added one, as a trained one
    assert groundex(capsys, "index", "--workdir", workdir.root, "--model", "micro", "--no-progress")[0] == 0
    recall = ok_json(capsys, "eval", "retrieval", "--workdir", workdir.root, "--model", "micro", "--split", "val")
    assert recall["model_id"] == added["id"] and 0 <= recall["text_to_image"]["R@10"] <= 100
    pointing = ok_json(capsys, "eval", "grounding", "--workdir", workdir.root, "--model", "micro", "--split", "val")
    assert pointing["model_id"] == added["id"] and pointing["phrases"] > 0
    captioner = ok_json(capsys, "caption", "train", "--workdir", workdir.root, "--model", "micro", "--epochs", "1",
                        "--layers", "1", "--batch-size", "32", "--no-progress")
    with Catalog.open(workdir, read_only=True) as catalog:
        assert catalog.artefact("captioner", captioner["captioner_id"]).parent_id == added["id"]
    error(capsys, "model", "remove", "micro", "--workdir", workdir.root, match="is read by captioner")


def test_remove_refuses_while_a_tagger_reads_the_model(trained, tmp_path, capsys):
    workdir = Workdir(tmp_path / "w")
    shutil.copytree(trained.root, workdir.root)
    model_id = ok_json(capsys, "model", "list", "--workdir", workdir.root)[0]["id"]
    assert groundex(capsys, "tag", "--workdir", workdir.root, "--method", "knn", "--min-images", "3")[0] == 0
    error(capsys, "model", "remove", model_id[:6], "--workdir", workdir.root, match="--with-dependents")
    code, out, err = groundex(capsys, "model", "remove", model_id[:6], "--with-dependents", "--workdir",
                              workdir.root)
    assert code == 0, err
    assert "tagger" in out
    with Catalog.open(workdir, read_only=True) as catalog:
        assert catalog.artefacts() == [] and catalog.query("SELECT count(*) FROM tags")[0][0] == 0
        assert catalog.query("SELECT count(*) FROM embeddings")[0][0] == 0
    assert not (workdir.root / "models" / model_id).exists() and not (workdir.embeddings_dir / model_id).exists()
    assert not any((workdir.root / "taggers").iterdir())
    code, out, _ = groundex(capsys, "verify", "--workdir", workdir.root)
    assert code == 0, out


def test_model_add_explains_what_it_cannot_take(tmp_path, capsys):
    workdir = Workdir(tmp_path / "w").create()
    Catalog.open(workdir).close()
    error(capsys, "model", "add", "tiny", "--workdir", workdir.root, match="train --base tiny")
    error(capsys, "model", "add", "no-such-model", "--workdir", workdir.root, match="unknown model")
    error(capsys, "model", "add", "ViT-S-32", "--pretrained", tmp_path / "absent.safetensors", "--workdir",
          workdir.root, match="absent.safetensors")
    (tmp_path / "empty").mkdir()
    error(capsys, "model", "add", tmp_path / "empty", "--workdir", workdir.root, match="not a groundex model folder")
    error(capsys, "model", "export", "abc", "--out", tmp_path / "x", "--workdir", workdir.root,
          match="no model in this workdir yet")


def test_a_hub_model_is_read_from_the_local_hub_cache_offline(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hub

    weights = micro_vit_weights(tmp_path / "open_clip")
    repo = tmp_path / "hub" / "models--groundex-test--micro"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copyfile(weights, snapshot / "open_clip_model.safetensors")
    preprocess = {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"}
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": MICRO_VIT_CONFIG,
                                                                "preprocess_cfg": preprocess}))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    workdir = Workdir(tmp_path / "w").create()
    Catalog.open(workdir).close()

    added = ok_json(capsys, "model", "add", "hf-hub:groundex-test/micro", "--workdir", workdir.root)
    assert added["source"] == "open_clip:hf-hub:groundex-test/micro"
    assert added["info"]["resize"] == "squash"  # the repository's preprocess config says so
    local = ok_json(capsys, "model", "add", MICRO_VIT, "--pretrained", weights, "--workdir", workdir.root)
    from_hub, from_file = load_checkpoint(Path(added["path"]), "cpu"), load_checkpoint(Path(local["path"]), "cpu")
    assert from_hub.spec.mean == (0.5, 0.5, 0.5) and from_hub.tokenizer.to_json()["context_length"] == 77
    hub_state, file_state = from_hub.clip.state_dict(), from_file.clip.state_dict()
    assert hub_state.keys() == file_state.keys() and all(torch.equal(hub_state[k], file_state[k]) for k in hub_state)
    with torch.no_grad():
        texts = ["a dog runs on the beach", "a red circle"]
        assert torch.allclose(from_hub.encode_text(texts), from_file.encode_text(texts))
        # and what open_clip itself makes of the same hub repository (its preprocess: squash, mean/std 0.5)
        reference, _, preprocess = open_clip.create_model_and_transforms("hf-hub:groundex-test/micro")
        image = Image.new("RGB", (80, 48), (200, 30, 30))
        ours = from_hub.encode_image(from_hub.pixels_from_images([image]))
        theirs = F.normalize(reference.encode_image(preprocess(image)[None]), dim=-1)
        assert float((ours * theirs).sum()) >= 0.9999
        tokens = open_clip.get_tokenizer("hf-hub:groundex-test/micro")(texts)
        assert torch.equal(from_hub.tokenize(texts), tokens)
    error(capsys, "model", "add", "hf-hub:groundex-test/absent", "--workdir", workdir.root,
          match="could not get open_clip_config.json from the hub or its local cache")


def test_labels_name_models_once_and_never_hide_a_hash_or_a_model_name(trained, tmp_path, capsys):
    workdir = Workdir(tmp_path / "w")
    shutil.copytree(trained.root, workdir.root, ignore=shutil.ignore_patterns("cache"))
    model_id = ok_json(capsys, "model", "list", "--workdir", workdir.root)[0]["id"]
    weights = micro_vit_weights(tmp_path / "open_clip")
    assert groundex(capsys, "model", "label", model_id[:8], "scenes", "--workdir", workdir.root)[0] == 0
    before = sorted(p.name for p in (workdir.root / "models").iterdir())
    error(capsys, "model", "add", MICRO_VIT, "--pretrained", weights, "--label", "scenes", "--workdir", workdir.root,
          match=f"already names model {model_id}")
    assert sorted(p.name for p in (workdir.root / "models").iterdir()) == before  # nothing placed, nothing staged
    error(capsys, "model", "label", "scenes", "tiny", "--workdir", workdir.root, match="is a model name")
    error(capsys, "model", "label", "scenes", "deadbeef", "--workdir", workdir.root, match="hash prefix")
    error(capsys, "model", "label", "scenes", MICRO_VIT, "--workdir", workdir.root, match="is a model name")
    assert ok_json(capsys, "model", "list", "--workdir", workdir.root)[0]["label"] == "scenes"
    assert groundex(capsys, "model", "label", "scenes", "--clear", "--workdir", workdir.root)[0] == 0
    assert ok_json(capsys, "model", "list", "--workdir", workdir.root)[0]["label"] is None
