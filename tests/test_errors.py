"""A user's mistake and a bug end differently: the mistake as one line naming the input (exit 2), the bug as one line
naming a log file that holds the traceback (exit 1), or with the traceback itself under --debug."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

import ui.cli.info
from indexer.config import EmbedConfig
from tests.helpers import write_entities_root
from ui.cli import main
from ui.cli._common import UserError, known_user_errors
from warehouse import Catalog, IngestConfig, InputError, Workdir

INTERNAL = re.compile(r"^groundex info: internal error: (\w+)(?:: (.*))? \(a bug; the traceback is in (.+)\)$")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Workdir:
    """A real workdir, cheap to build: two images in the Flickr30k Entities layout."""
    tmp = tmp_path_factory.mktemp("errors")
    root = write_entities_root(tmp / "f30k")
    assert main(["ingest", "flickr30k", "--root", str(root), "--workdir", str(tmp / "w"), "--no-progress"]) == 0
    return Workdir(tmp / "w")


@pytest.fixture(autouse=True)
def private_temp(tmp_path, monkeypatch):
    """Tracebacks that cannot go to a workdir go to the temp folder: this test's own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def logs(workdir: Workdir) -> set[Path]:
    return set(workdir.logs_dir.glob("*"))


def break_counts(monkeypatch, error: BaseException) -> None:
    def counts(self):
        raise error
    monkeypatch.setattr(Catalog, "counts", counts)


# -- (a) a user's mistake -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["info", "--workdir", "{tmp}/none"], "not a groundex workdir"),
    (["ingest", "synthetic", "--n", "0", "--workdir", "{tmp}/w"], "synthetic dataset needs n >= 1"),
    (["ingest", "folder", "--root", ".", "--chunk-size", "0", "--workdir", "{tmp}/w"], "chunk_size must be >= 1"),
    (["search", "--workdir", "{workdir}"], "give exactly one of"),  # UserError: the CLI's own checks
    (["search", "--workdir", "{workdir}", "a dog"], "no model in this workdir yet"),  # ArtefactError
])
def test_a_user_mistake_is_one_line_and_exit_2(capsys, tmp_path, workdir, argv, message):
    argv = [a.format(tmp=tmp_path, workdir=workdir.root) for a in argv]
    before = logs(workdir)
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"groundex {argv[0]}: error: ") and message in err and "Traceback" not in err
    assert logs(workdir) == before  # no log file for a user's mistake


def test_an_input_error_is_reported_without_its_type_name(capsys, tmp_path):
    _, _, err = run(capsys, "ingest", "synthetic", "--n", "0", "--workdir", tmp_path / "w")
    assert err.startswith("groundex ingest: error: synthetic dataset needs") and "InputError" not in err


# -- (b) a bug ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [ValueError("shapes (3, 4) and (5,) not aligned"), KeyError("images"),
                                   RuntimeError("something internal"), AssertionError()])
def test_a_bug_is_exit_1_with_the_traceback_in_the_workdir(capsys, monkeypatch, workdir, error):
    break_counts(monkeypatch, error)
    code, out, err = run(capsys, "info", "--workdir", workdir.root, "--json")
    assert code == 1 and out == "", err  # stdout may carry --json: nothing else goes there
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    match = INTERNAL.match(err.strip())
    assert match and match[1] == type(error).__name__, err
    log = Path(match[3])
    assert log.parent == workdir.logs_dir and re.fullmatch(r"error-\d{8}T\d{6}Z(-\d+)?\.log", log.name)
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in counts" in text and type(error).__name__ in text
    assert "command line: groundex info --workdir" in text
    log.unlink()


def test_two_bugs_in_the_same_second_get_two_log_files(capsys, monkeypatch, workdir):
    break_counts(monkeypatch, KeyError("images"))
    logs = {INTERNAL.match(run(capsys, "info", "--workdir", workdir.root)[2].strip())[3] for _ in range(3)}
    assert len(logs) == 3 and all(Path(p).is_file() for p in logs)
    for p in logs:
        Path(p).unlink()


def test_a_bug_without_a_workdir_logs_to_the_temp_folder(capsys, monkeypatch, tmp_path):
    def broken(args):
        raise KeyError("no such key")
    monkeypatch.setattr(ui.cli.info, "run", broken)
    code, _, err = run(capsys, "info", "--workdir", tmp_path / "not-a-workdir")
    assert code == 1
    log = Path(INTERNAL.match(err.strip())[3])
    assert log.parent == tmp_path / "temp" and log.name.startswith("groundex-error-")
    assert "no such key" in log.read_text()
    assert not (tmp_path / "not-a-workdir").exists()  # a bug does not make a workdir where there was none


def test_a_workdir_whose_logs_cannot_be_written_falls_back_to_the_temp_folder(capsys, monkeypatch, tmp_path, workdir):
    import shutil

    copy = Workdir(shutil.copytree(workdir.root, tmp_path / "w"))
    shutil.rmtree(copy.logs_dir, ignore_errors=True)
    copy.logs_dir.write_text("a file where the logs folder should be")
    break_counts(monkeypatch, KeyError("images"))
    code, _, err = run(capsys, "info", "--workdir", copy.root)
    assert code == 1 and Path(INTERNAL.match(err.strip())[3]).parent == tmp_path / "temp"


def test_an_interrupt_is_still_exit_130(capsys, monkeypatch, workdir):
    break_counts(monkeypatch, KeyboardInterrupt())
    code, _, err = run(capsys, "info", "--workdir", workdir.root)
    assert code == 130 and "interrupted" in err


# -- (c) --debug and -vv ------------------------------------------------------------------------------------------

def test_debug_prints_the_traceback_of_a_bug(capsys, monkeypatch, workdir):
    break_counts(monkeypatch, KeyError("images"))
    before = logs(workdir)
    code, out, err = run(capsys, "--debug", "info", "--workdir", workdir.root)
    assert code == 1 and out == ""
    assert "Traceback (most recent call last)" in err and "in counts" in err
    assert err.strip().splitlines()[-1] == "groundex info: internal error: KeyError: 'images' (a bug; the traceback " \
                                           "is above)"
    assert logs(workdir) == before


def test_debug_prints_the_traceback_of_a_user_mistake_too(capsys, tmp_path):
    code, _, err = run(capsys, "--debug", "info", "--workdir", tmp_path / "none")
    assert code == 2 and "Traceback (most recent call last)" in err
    assert "not a groundex workdir" in err.strip().splitlines()[-1]


def test_vv_re_raises(monkeypatch, workdir):
    break_counts(monkeypatch, KeyError("images"))
    with pytest.raises(KeyError, match="images"):
        main(["-vv", "info", "--workdir", str(workdir.root)])


# -- (d) the exception types --------------------------------------------------------------------------------------

def test_an_input_error_is_a_value_error():
    with pytest.raises(ValueError, match="the text query is empty"):  # what the app's pages catch
        raise InputError("the text query is empty")
    assert issubclass(UserError, InputError)


def test_plain_value_and_key_errors_are_not_user_errors():
    known = known_user_errors()
    assert issubclass(InputError, known) and issubclass(UserError, known)
    for bug in (ValueError, KeyError, RuntimeError, AssertionError, TypeError):
        assert not issubclass(bug, known), bug


def test_config_dataclasses_check_their_own_fields():
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        EmbedConfig(batch_size=0)
    with pytest.raises(InputError, match="shard_size must be >= 1"):
        EmbedConfig(shard_size=0)
    with pytest.raises(InputError, match="workers must be >= 1"):
        IngestConfig(workers=0)
