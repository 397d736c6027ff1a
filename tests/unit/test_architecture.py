"""The package's shape is checked, not hoped for: the import contracts in pyproject.toml cover
every core module and catch a violation, and no module or class grows past its size budget."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BRIDGE = REPO / "bridge"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
OUTSIDE_THE_CORE = {"cli", "lab"}
MODULE_LINES = 520  # "split at ~500"
CLASS_LINES = 300  # a longer class says why in its docstring ("Why this class is long")


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def _core_modules() -> set[str]:
    names = {p.stem for p in BRIDGE.glob("*.py")} | {
        p.name for p in BRIDGE.iterdir() if (p / "__init__.py").exists()
    }
    return {f"bridge.{n}" for n in names if not n.startswith("__")} - {
        f"bridge.{n}" for n in OUTSIDE_THE_CORE
    }


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_lab_contract_lists_every_core_module() -> None:
    """Every module and package of bridge/ but cli and lab is a source of the contract that
    keeps the lab out of the core, so a new module cannot slip past it."""
    [contract] = [c for c in _contracts() if "never imports the lab" in str(c["name"])]
    sources = set(contract["source_modules"])  # type: ignore[call-overload]
    assert _core_modules() - sources == set(), "add these to pyproject.toml's contract"
    assert sources - _core_modules() == set(), "these are no longer core modules"


def test_import_contracts_hold() -> None:
    """lint-imports keeps every contract in pyproject.toml."""
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_core_module_importing_the_lab_breaks_the_contract(tmp_path: Path) -> None:
    """In a copy of the package where bridge/app.py imports bridge.lab, lint-imports fails and
    names the import (so the contract would stop such a change in CI)."""
    shutil.copytree(BRIDGE, tmp_path / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    app = tmp_path / "bridge" / "app.py"
    app.write_text(
        app.read_text(encoding="utf-8").replace(
            "import asyncio\n", "import asyncio\n\nimport bridge.lab.broker\n", 1
        ),
        encoding="utf-8",
    )
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "The core never imports the lab or the command line BROKEN" in result.stdout
    assert "bridge.app -> bridge.lab.broker" in result.stdout


def _sources() -> list[Path]:
    return sorted(BRIDGE.rglob("*.py"))


def test_no_module_outgrows_its_budget() -> None:
    """No module of bridge/ is longer than ~500 lines: a longer one is split by job."""
    long = {
        str(p.relative_to(REPO)): n
        for p in _sources()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MODULE_LINES
    }
    assert long == {}


def test_no_class_outgrows_its_budget_without_saying_why() -> None:
    """A class longer than 300 lines says in its docstring why it is not split."""
    long: dict[str, int] = {}
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if size > CLASS_LINES and "Why this class is long" not in doc:
                long[f"{path.relative_to(REPO)}:{node.name}"] = size
    assert long == {}
