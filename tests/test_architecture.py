"""House rules checked on the source: no package imports another package's private modules or names,
the linter (pyflakes errors, syntax, unused names) and the type checker (mypy, configured in pyproject.toml)
are clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

def _private_imports(root: Path = ROOT) -> list[str]:
    """``from onnxsparse.P._m import x`` (or ``from onnxsparse.P.m import _x``) outside package ``P``."""
    found: list[str] = []
    for path in sorted((root / "onnxsparse").rglob("*.py")):
        here = list(path.relative_to(root).parent.parts)  # e.g. ["onnxsparse", "graph", "rules"]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                module = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                module = (node.module or "").split(".")
            if module[0] != "onnxsparse":
                continue
            for target in [module] + [module + [alias.name] for alias in node.names]:
                private = next((i for i, part in enumerate(target) if part.startswith("_")
                                and not part.startswith("__")), None)
                if private is None:
                    continue
                owner = target[:private]
                while len(owner) > 1 and not (root.joinpath(*owner) / "__init__.py").is_file():
                    owner = owner[:-1]  # the package that owns the private module or name
                if here[: len(owner)] != owner:
                    found.append(f"{path.relative_to(root)} imports {'.'.join(target)}")
                break
    return sorted(set(found))


def test_no_package_imports_another_packages_private_modules():
    assert _private_imports() == []


def test_the_rule_catches_a_private_import(tmp_path):
    """The checker is not vacuous: private modules and names are fine inside their package only."""
    for package in ("onnxsparse", "onnxsparse/graph", "onnxsparse/passes"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "onnxsparse/graph/_shapes.py").write_text("def dims(): pass\n")
    (tmp_path / "onnxsparse/graph/dependency.py").write_text("from ._shapes import dims\n")  # same package: fine
    (tmp_path / "onnxsparse/passes/prune.py").write_text(
        "from ..graph import _shapes\nfrom ..graph.dependency import _analysis\nfrom .prune_select import _rt\n")
    assert _private_imports(tmp_path) == ["onnxsparse/passes/prune.py imports onnxsparse.graph._shapes",
                                          "onnxsparse/passes/prune.py imports onnxsparse.graph.dependency._analysis"]


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"  # the one installed with the test extra in this environment
    ruff = ruff if ruff.exists() else Path(shutil.which("ruff") or ruff)
    if not ruff.exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    done = subprocess.run([str(ruff), "check", "--no-cache", "onnxsparse", "tests", "samples", "benchmarks",
                           "examples"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean(tmp_path):
    """mypy with the ``[tool.mypy]`` settings of pyproject.toml; a cold cache in ``tmp_path`` so a stale cache
    (another mypy version, a moved checkout) can never hide an error (~15-35 s on 2 cores)."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]' installs it)")
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), "onnxsparse"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
