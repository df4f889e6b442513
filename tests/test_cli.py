import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_entities_root
from ui.cli import build_parser, main


@pytest.mark.slow
def test_demo_builds_trains_indexes_and_queries(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--n", "60", "--epochs", "1", "--caption-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "[4/7] val retrieval over" in out and "sample query:" in out and "  1. " in out
    assert "[5/7] val grounding over" in out and "sample phrase -> region: 'a black dog'" in out
    assert "[6/7] tags:" in out and "kNN tags stored" in out
    assert "[7/7] training the retrieval-augmented captioner for 1 epochs" in out and "generated captions stored" in out
    assert "phrase chunker" in out and "val span F1" in out and "grounded phrases, e.g. image" in out
    assert "60 images, 300 captions" in out
    assert main(["info", "--workdir", str(workdir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 60 and info["captions"] == 300 and info["phrases"] > 300 and info["boxes"] > 60
    assert info["generated_captions"] == 60 and info["tags"] > 60 and info["generated_phrases"] > 0
    assert sum(info["splits"].values()) == 60
    assert main(["demo", "--workdir", str(workdir), "--n", "60", "--epochs", "1", "--caption-epochs", "1"]) == 0
    out = capsys.readouterr().out  # again: nothing new
    assert "0 added, 60 already present" in out and "already trained; skipping" in out
    assert "captioner" in out and "already trained; skipping training" in out
    assert "phrase chunker" in out and out.count("already trained; skipping training") == 2
    assert "0 images and 0 captions embedded" in out


def test_ingest_and_info_table(tmp_path, capsys):
    root = write_entities_root(tmp_path / "f30k")
    workdir = tmp_path / "w"
    assert main(["ingest", "flickr30k", "--root", str(root), "--workdir", str(workdir), "--no-progress"]) == 0
    assert "2 images added, 0 already present, 0 rejected" in capsys.readouterr().out
    assert main(["info", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "phrases" in out and "train=1, val=1" in out and "ingest flickr30k" in out


def test_rejects_are_listed(tmp_path, capsys):
    root = write_entities_root(tmp_path / "f30k")
    (root / "images" / "2000000002.jpg").unlink()
    workdir = tmp_path / "w"
    main(["ingest", "flickr30k", "--root", str(root), "--workdir", str(workdir), "--no-progress", "--json"])
    assert json.loads(capsys.readouterr().out)["rejected"] == 1
    main(["info", "--workdir", str(workdir), "--json", "--rejects", "5"])
    listed = json.loads(capsys.readouterr().out)["reject_list"]
    assert listed[0]["path"].endswith("2000000002.jpg") and "missing" in listed[0]["reason"]


@pytest.mark.parametrize("argv, message", [
    (["ingest", "flickr30k", "--root", "/no/such/root"], "/no/such/root/images not found"),
    (["info"], "not a groundex workdir"),
    (["ingest", "folder", "--root", "/no/such/folder"], "/no/such/folder: folder not found"),
    (["ingest", "synthetic", "--n", "0"], "n >= 1"),
    (["ingest", "folder", "--root", ".", "--workers", "0"], "workers must be >= 1, got 0"),
])
def test_user_mistakes_exit_2_with_a_message_naming_the_input(tmp_path, capsys, argv, message):
    assert main(argv + ["--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _all_commands(parser, prefix=()):
    yield prefix
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield from _all_commands(sub, prefix + (name,))


@pytest.mark.parametrize("command", list(_all_commands(build_parser())), ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: groundex" in capsys.readouterr().out


@pytest.mark.slow  # a new process: a few seconds of imports
def test_console_script_is_installed():
    script = Path(sys.executable).parent / "groundex"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "groundex demo" in result.stdout
