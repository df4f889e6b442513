"""The artefact store: content-addressed folders recorded in the catalog, one lookup, one resume rule, and the upgrade
of workdirs made before it (schema 4)."""

import json

import numpy as np
import pytest

from tests.helpers import catalog_at_version
from warehouse import ArtefactError, ArtefactStore, Catalog, RunState, Workdir, content_hash
from warehouse._schema import SCHEMA_VERSION
from warehouse.workdir import atomic_write_npy


def _commit(store: ArtefactStore, text: str, method: str = "knn", **record):
    """Stage a tagger's two files and commit them."""
    with store.staging("tagger") as folder:
        (folder / "tagger.json").write_text(json.dumps({"method": method, "model_id": "m", "text": text}))
        (folder / "vocabulary.json").write_text("{}")
        return store.commit("tagger", folder, source="trained", **record)


def test_commit_names_a_folder_by_its_content_and_records_it(tmp_path):
    workdir = Workdir(tmp_path / "w").create()
    store = ArtefactStore(workdir)
    first = _commit(store, "a", parent_id="m", info={"method": "knn"})
    assert first.path == workdir.root / "taggers" / first.id and first.id == content_hash("tagger", first.path)
    again = _commit(store, "a", parent_id="m", info={"method": "knn"})
    assert again.id == first.id and store.stray_staging() == []  # the same bytes: one folder, no leftovers
    other = _commit(store, "b", "probe", parent_id="m", info={"method": "probe"})
    assert other.id != first.id
    with Catalog.open(workdir, read_only=True) as catalog:
        assert [a.id for a in catalog.artefacts("tagger")] == sorted([first.id, other.id], key=lambda i: i != other.id)
        assert catalog.artefact("tagger", parent_id="m", method="knn").id == first.id
    assert f"tagger:{first.id}" in workdir.read_manifest()["artefacts"]


def test_a_commit_without_its_files_leaves_nothing(tmp_path):
    workdir = Workdir(tmp_path / "w").create()
    store = ArtefactStore(workdir)
    with pytest.raises(ValueError, match="vocabulary.json"), store.staging("tagger") as folder:
        (folder / "tagger.json").write_text("{}")
        store.commit("tagger", folder, source="trained")
    assert store.stray_staging() == [] and not list(store.folder("tagger").iterdir())


def test_labels_that_read_as_hashes_or_are_taken_are_refused_before_anything_moves(tmp_path):
    workdir = Workdir(tmp_path / "w").create()
    store = ArtefactStore(workdir)
    first = _commit(store, "a", label="knn-a")
    with pytest.raises(ValueError, match="could be read as a hash prefix"):
        _commit(store, "b", label="beef")
    with pytest.raises(ValueError, match=f"already names tagger {first.id}"):
        _commit(store, "b", label="knn-a")
    assert [p.name for p in store.folder("tagger").iterdir()] == [first.id]  # nothing placed, nothing staged


def test_one_lookup_by_label_or_prefix_with_one_error(tmp_path):
    workdir = Workdir(tmp_path / "w").create()
    with Catalog.open(workdir) as catalog:
        with pytest.raises(ArtefactError, match="no model in this workdir yet.*model add"):
            catalog.artefact("model")
        for model_id in ("abc111", "abc222", "def333"):
            catalog.add_artefact("model", model_id, f"models/{model_id}", source="trained", info={"name": "x"})
        catalog.set_label("model", "def333", "mine")
        assert catalog.artefact("model", "mine").id == "def333"
        assert catalog.artefact("model", "abc1").id == "abc111"
        with pytest.raises(ArtefactError, match="'abc' is ambiguous; known: .*def333 \\(mine\\)"):
            catalog.artefact("model", "abc")
        with pytest.raises(ArtefactError, match="'zzz' not found"):
            catalog.artefact("model", "zzz")
        assert catalog.find_artefact("model", "zzz") is None
        with pytest.raises(ValueError, match="already names model def333"):
            catalog.set_label("model", "abc111", "mine")
        assert catalog.model("mine").path == workdir.root / "models" / "def333"
        assert catalog.query("SELECT id, label, name FROM models WHERE label = 'mine'") == [("def333", "mine", "x")]


def test_run_state_resumes_only_an_interrupted_run_of_the_same_settings(tmp_path):
    state = RunState(tmp_path / "run")
    config = {"lr": 0.1, "progress": True, "sizes": (1, 2)}
    assert not state.should_resume(config, None)
    state.start(config)
    assert state.should_resume({**config, "progress": False}, None)  # progress bars do not change the result
    assert not state.should_resume({**config, "lr": 0.2}, None)
    assert state.should_resume({**config, "lr": 0.2}, True) and not state.should_resume(config, False)
    state.finish(model_id="x")
    assert not state.should_resume(config, None) and state.read()["model_id"] == "x"


def _model_config(folder, grid_size: int = 64, patch: int = 8, dim: int = 32) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"name": "groundex-tiny", "config": {
        "embed_dim": dim, "vision_cfg": {"image_size": grid_size, "patch_size": patch}}}))


def _schema_4_workdir(tmp_path) -> Workdir:
    """A workdir as groundex with schema 4 left it: a model, a captioner, two taggers under heads/, embeddings,
    an interrupted training run and captioner training state, and two damaged files it must step over."""
    workdir = Workdir(tmp_path / "w").create()
    root = workdir.root
    catalog_at_version(workdir.catalog_path, 4)
    _model_config(root / "models" / "m1")
    import duckdb

    con = duckdb.connect(str(workdir.catalog_path))
    con.execute("INSERT INTO models VALUES ('m1', 'groundex-tiny', ?, NULL, 7, 'full', 10, 20, '{\"a\": 1}', now())",
                [str(root / "models" / "m1")])
    con.execute("INSERT INTO runs VALUES (7, 'train', now(), now(), 'ok', '{}', NULL, '{}'), "
                "(8, 'caption train', now(), now(), 'ok', '{}', 'm1', '{\"captioner_id\": \"c1\"}'), "
                "(9, 'tag', now(), now(), 'ok', '{}', 'm1', '{\"method\": \"probe\"}')")
    con.execute("INSERT INTO embeddings VALUES ('m1', 'image', 1, 'shard-00000.npy', 0), "
                "('m1', 'caption', 5, 'shard-00000.npy', 0)")
    con.close()
    atomic_write_npy(root / "embeddings" / "m1" / "patch" / "shard-00000.npy", np.zeros((1, 64, 32), np.float16))
    (root / "captioners" / "c1").mkdir(parents=True)
    (root / "captioners" / "c1" / "captioner.json").write_text(json.dumps({"model_id": "m1", "train_images": 3}))
    heads = root / "heads" / "m1"
    heads.mkdir(parents=True)
    (heads / "vocabulary.json").write_text('{"words": ["dog"]}')
    for method in ("knn", "probe"):
        (heads / f"{method}.json").write_text(json.dumps({"method": method, "model_id": "m1", "val": {"f1": 1}}))
    (heads / "probe.safetensors").write_bytes(b"weights")
    (heads / "broken.json").write_text("{not json")
    (root / "captioners" / "c2").mkdir()
    (root / "captioners" / "c2" / "captioner.json").write_text("{not json")
    (root / "training" / "run-3" / "last").mkdir(parents=True)
    (root / "training" / "run-3" / "last" / "state.json").write_text(json.dumps(
        {"config": {"model": "tiny", "lr": 0.1}, "finished": False}))
    (root / "captioners" / "training" / "m1").mkdir(parents=True)
    (root / "captioners" / "training" / "m1" / "groundex-run.json").write_text(json.dumps(
        {"config": {"k": 4}, "finished": False}))
    return workdir


def test_a_schema_4_workdir_upgrades_in_place(tmp_path):
    """Models move to `artefacts` (with `models` as a view, paths relative), captioner folders and heads/ taggers are
    recorded (the taggers moved to content-addressed folders), training state moves under training/<kind>/ and still
    resumes, and the stored embedding kinds get their patch grid; damaged files are stepped over."""
    workdir = _schema_4_workdir(tmp_path)
    root = workdir.root
    with Catalog.open(workdir, read_only=True) as catalog:
        assert catalog.schema_version == SCHEMA_VERSION == 6
        model = catalog.model("m1")
        assert (model.info["name"], model.info["mode"], model.run_id, model.metrics, model.source) == \
            ("groundex-tiny", "full", 7, {"a": 1}, "trained")
        assert catalog.query("SELECT name, total_params FROM models") == [("groundex-tiny", 20)]
        captioner = catalog.artefact("captioner")
        assert (captioner.id, captioner.parent_id, captioner.run_id) == ("c1", "m1", 8)
        probe = catalog.artefact("tagger", parent_id="m1", method="probe")
        assert probe.run_id == 9 and probe.metrics == {"f1": 1}
        assert (probe.path / "weights.safetensors").read_bytes() == b"weights"
        assert probe.id == content_hash("tagger", probe.path)
        assert catalog.artefact("tagger", parent_id="m1", method="knn").path.parent == root / "taggers"
        assert catalog.embedding_set("m1", "patch") == {"dim": 32, "grid": (8, 8), "cells": 64}
        assert catalog.embedding_set("m1", "caption")["grid"] is None
        assert catalog.query("SELECT path FROM artefacts WHERE kind = 'model'") == [("models/m1",)]
        assert [a.id for a in catalog.artefacts("captioner")] == ["c1"]  # c2's captioner.json is unreadable
    assert sorted(p.name for p in (root / "heads").iterdir()) == ["m1"]  # only the broken file is left there
    assert RunState(root / "training" / "model" / "run-3").should_resume({"base": "tiny", "lr": 0.1}, None)
    assert RunState(root / "training" / "captioner" / "m1").should_resume({"k": 4}, None)
    assert not (root / "captioners" / "training").exists()
    assert workdir.read_manifest()["schema_version"] == SCHEMA_VERSION


def test_an_upgrade_that_fails_midway_rolls_back_and_completes_on_the_next_open(tmp_path, monkeypatch):
    import warehouse._schema as schema
    import warehouse.catalog as catalog_module

    workdir = _schema_4_workdir(tmp_path)

    def fail(con, root):
        raise RuntimeError("killed")

    # the last step fails: the taggers have moved by then
    monkeypatch.setattr(catalog_module, "MIGRATIONS", [*schema.MIGRATIONS[:4], [*schema.MIGRATIONS[4][:-1], fail]])
    with pytest.raises(RuntimeError, match="killed"):
        Catalog.open(workdir).close()
    monkeypatch.undo()
    with Catalog.open(workdir, read_only=True) as catalog:
        assert catalog.schema_version == SCHEMA_VERSION
        assert sorted(a.info["method"] for a in catalog.artefacts("tagger")) == ["knn", "probe"]
        assert catalog.embedding_set("m1", "patch")["grid"] == (8, 8)
