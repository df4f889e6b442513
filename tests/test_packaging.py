"""A non-editable install works: the wheel holds every file of the five packages (the `tiny` preset's
model config included), and the installed copy, not the source tree, runs a small pipeline through the CLI."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("warehouse", "indexer", "grounding", "heads", "ui")
# Build outputs and editor leftovers, never package files.
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


def _package_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for package in PACKAGES for p in (root / package).rglob("*") if p.is_file()}


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_ships_every_package_file_and_the_installed_copy_runs(tmp_path):
    # Build from a copy of the sources, so the shared tree gets no build/ and its egg-info is left alone.
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=IGNORED)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
          "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("groundex-*.whl")

    expected = _package_files(source)
    assert "indexer/model_configs/groundex-tiny.json" in expected and "ui/app/pages/search.py" in expected
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    assert not expected - shipped, f"left out of the wheel: {sorted(expected - shipped)}"

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--no-cache-dir", "-q",
          "--target", str(site), str(wheel)])

    # A fresh cwd (`python -m` puts it first on sys.path) and only the installed copy on PYTHONPATH. The venv's
    # editable install of groundex stays active, but its finder comes after the path-based one on sys.meta_path.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GROUNDEX_WORKDIR")}
    env["PYTHONPATH"] = str(site)

    def python(*args) -> str:
        return _run([sys.executable, *args], cwd=cwd, env=env, timeout=300).stdout

    # Where the packages come from, then `python -m ui.cli demo --help` in the same process (one torch import).
    out = python("-c", "import json, runpy, sys, indexer, indexer.models as m, ui.cli\n"
                       "print(json.dumps([indexer.__file__, str(m.PRESETS_DIR), ui.cli.__file__, m.list_presets()]))\n"
                       "sys.argv = ['groundex', 'demo', '--help']\n"
                       "runpy.run_module('ui.cli', run_name='__main__', alter_sys=True)")
    first_line, help_text = out.split("\n", 1)
    *paths, presets = json.loads(first_line)
    for path in paths:
        assert Path(path).resolve().is_relative_to(site.resolve()), f"{path} is not the installed copy"
    assert "tiny" in presets
    assert "usage: groundex demo" in help_text
    workdir = str(tmp_path / "w")
    python("-m", "ui.cli", "ingest", "synthetic", "--n", "60", "--seed", "0", "--size", "64", "--workdir", workdir,
           "--no-progress")
    # The default model is the `tiny` preset: its config is the JSON file a non-editable install used to lack.
    python("-m", "ui.cli", "train", "--workdir", workdir, "--epochs", "1", "--batch-size", "16", "--val-split", "none",
           "--device", "cpu", "--no-progress")
    python("-m", "ui.cli", "index", "--workdir", workdir, "--device", "cpu", "--no-progress")
    hits = json.loads(python("-m", "ui.cli", "search", "--workdir", workdir, "a red circle", "-k", "3", "--json"))
    assert len(hits["hits"]) == 3
