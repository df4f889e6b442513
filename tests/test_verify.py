"""`groundex verify`: a sound workdir passes; each kind of damage is reported as a problem (exit 1); leftovers of
an interrupted command are notes (exit 0)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.verify import verify_workdir
from tests.helpers import built_workdir
from ui.cli import main
from warehouse import Catalog, Workdir


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return built_workdir(tmp_path_factory.mktemp("verify") / "w", n=60, epochs=1)


@pytest.fixture
def workdir(pristine, tmp_path):
    """A copy of the built workdir to damage (image and index paths in the catalog are absolute; artefact paths are
    relative to the workdir)."""
    copy = tmp_path / "w"
    shutil.copytree(pristine.root, copy)
    w = Workdir(copy)
    with Catalog.open(w) as catalog:  # point the copy's rows at the copy's files
        for table, column in (("images", "path"), ("artefacts", "path"), ("indexes", "path")):
            catalog.con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                                [str(pristine.root), str(copy)])
    return w


def problems(workdir) -> list[str]:
    return [f"[{f.area}] {f.message}" for f in verify_workdir(workdir, progress=False).problems]


def test_a_built_workdir_is_sound_and_the_command_says_so(workdir, capsys):
    assert problems(workdir) == []
    assert main(["verify", "--workdir", str(workdir.root), "--deep"]) == 0
    assert "sound" in capsys.readouterr().out


def test_a_missing_image_file_is_a_problem(workdir, capsys):
    with Catalog.open(workdir, read_only=True) as c:
        image_id, path = c.query("SELECT id, path FROM images ORDER BY id LIMIT 1")[0]
    Path(path).unlink()
    assert any(f"image {image_id}" in p and "missing" in p for p in problems(workdir))
    assert main(["verify", "--workdir", str(workdir.root)]) == 1
    assert "PROBLEM [images]" in capsys.readouterr().out


def test_a_changed_image_is_found_by_deep(workdir):
    with Catalog.open(workdir, read_only=True) as c:
        path = c.query("SELECT path FROM images ORDER BY id LIMIT 1")[0][0]
    with open(path, "ab") as f:
        f.write(b"\0")
    assert not problems(workdir)
    assert any("changed since ingest" in f.message for f in verify_workdir(workdir, deep=True, progress=False).problems)


def test_a_changed_checkpoint_is_a_problem(workdir):
    with Catalog.open(workdir, read_only=True) as c:
        folder = c.model().path
    config = Path(folder) / "config.json"
    config.write_text(config.read_text() + " ")
    assert any("[models]" in p and "hash to" in p for p in problems(workdir))


def test_a_short_shard_is_a_problem_and_a_stray_shard_a_note(workdir):
    shard = sorted(workdir.embeddings_dir.glob("*/image/shard-*.npy"))[0]
    np.save(shard.with_name("shard-09999.npy"), np.zeros((2, 4), dtype=np.float16))
    report = verify_workdir(workdir, progress=False)
    assert report.sound and any("not referenced" in f.message for f in report.findings)
    np.save(shard, np.load(shard)[:5])
    assert any("[embeddings]" in p and "has 5 rows" in p for p in problems(workdir))


def test_an_index_that_disagrees_with_the_embeddings_is_a_problem(workdir):
    with Catalog.open(workdir, read_only=True) as c:
        info = c.current_index(c.model().id, "image")
    ids_path = Path(info["path"]).with_suffix(".ids.npy")
    ids = np.load(ids_path)
    np.save(ids_path, ids[1:])
    found = problems(workdir)
    assert any("FAISS ids differ" in p for p in found) and any("out of date" in p for p in found)
    Path(info["path"]).write_bytes(b"garbage")
    assert any("unreadable" in p for p in problems(workdir))


def test_a_chunker_is_sound_and_its_changed_weights_a_problem(workdir):
    """A chunker reads no model: verify checks its files and hash, and asks for no parent."""
    from heads.chunker import ChunkerConfig
    from heads.phrases import train_workdir_chunker

    chunker_id = train_workdir_chunker(workdir, ChunkerConfig(epochs=1, min_steps=5), progress=False)["chunker_id"]
    assert problems(workdir) == []
    weights = next((workdir.root / "chunkers").glob(f"{chunker_id}*/weights.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert any(f"chunker {chunker_id[:8]}" in p and "hash to" in p for p in problems(workdir))
