"""Each package declares its public API (`__all__` in its `__init__.py`), and the other packages import only that:
no name that starts with an underscore and no undeclared name crosses a package boundary."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("warehouse", "indexer", "grounding", "heads", "ui")


def _cross_package_imports():
    """(file, line, package, module, name) of every `from <other package>[.module] import name` in the packages."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        root = alias.name.split(".")[0]
                        if root in PACKAGES and root != package:
                            yield path.relative_to(ROOT), node.lineno, root, alias.name, None
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    root = node.module.split(".")[0]
                    if root in PACKAGES and root != package:
                        for alias in node.names:
                            yield path.relative_to(ROOT), node.lineno, root, node.module, alias.name


@pytest.mark.parametrize("package", PACKAGES[:4])
def test_every_package_declares_what_it_offers_and_offers_it(package):
    module = importlib.import_module(package)
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert not name.startswith("_")
        assert getattr(module, name) is not None, f"{package}.{name} is declared but not there"


def test_no_module_imports_another_package_s_private_or_undeclared_names():
    declared = {p: set(importlib.import_module(p).__all__) for p in PACKAGES[:4]}
    wrong = []
    for path, line, package, module, name in _cross_package_imports():
        if name is None:  # `import indexer` is the package; `import indexer.models` reaches into a module
            if "." in module:
                wrong.append(f"{path}:{line}: import {module}")
        elif name.startswith("_") or name not in declared[package]:
            wrong.append(f"{path}:{line}: from {module} import {name} ({package} does not declare {name!r})")
    assert not wrong, "\n".join(wrong)


def test_importing_indexer_loads_nothing_heavy_until_a_name_is_used():
    import subprocess
    import sys

    code = ("import sys, indexer; heavy = [m for m in ('torch', 'faiss', 'open_clip') if m in sys.modules]; "
            "print(heavy); indexer.words; print(sorted(indexer.__all__) == indexer.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["[]", "True"], out
