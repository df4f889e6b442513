"""A non-editable install works: the wheel holds every file of the five packages (the `tiny` preset's
model config included), and installed in a fresh virtual environment, its `groundex` console script runs a small
pipeline from the installed copy, not the source tree."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
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

    # A fresh virtual environment with the wheel installed in it, non-editable, with its console script. Its
    # dependencies come from this environment's site-packages through a .pth line: a plain path entry, so this
    # environment's own .pth files (the editable install of the source tree among them) are not processed there.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
          "--no-compile", "--no-cache-dir", "-q", str(wheel)])
    cwd = tmp_path / "cwd"  # not the source tree, and no PYTHONPATH: only the installed copy can be imported
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GROUNDEX_WORKDIR")}

    def run(*args) -> str:
        return _run([str(a) for a in args], cwd=cwd, env=env, timeout=300).stdout

    located = json.loads(run(venv / "bin" / "python", "-c",
                             "import json, indexer, indexer.models as m, ui.cli\n"
                             "print(json.dumps([indexer.__file__, str(m.PRESETS_DIR), ui.cli.__file__, "
                             "m.list_presets()]))"))
    *paths, presets = located
    for path in paths:
        assert Path(path).resolve().is_relative_to(site.resolve()), f"{path} is not the installed copy"
    assert "tiny" in presets
    groundex = venv / "bin" / "groundex"
    assert "usage: groundex demo" in run(groundex, "demo", "--help")
    workdir = tmp_path / "w"
    run(groundex, "ingest", "synthetic", "--n", "60", "--seed", "0", "--size", "64", "--workdir", workdir,
        "--no-progress")
    # The default base is the `tiny` preset: its config is the JSON file a non-editable install used to lack.
    run(groundex, "train", "--workdir", workdir, "--epochs", "1", "--batch-size", "16", "--val-split", "none",
        "--device", "cpu", "--no-progress")
    run(groundex, "index", "--workdir", workdir, "--device", "cpu", "--no-progress")
    hits = json.loads(run(groundex, "search", "--workdir", workdir, "a red circle", "-k", "3", "--json"))
    assert len(hits["hits"]) == 3
