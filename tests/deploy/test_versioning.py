"""The version scheme pyproject.toml configures, on a scratch git repository: no tag, a tag,
commits after it, no git at all, and the builder's override (deploy/Dockerfile's VERSION)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.tools import require_tool

PRETEND = "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_METRIQO_BRIDGE"


def _scm_section() -> str:
    """The [tool.setuptools_scm] table of the real pyproject.toml, as written."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r"^\[tool\.setuptools_scm\]\n(?:[^\[].*\n|\n)*", text, re.MULTILINE)
    assert found is not None
    return found[0]


def _version(where: Path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SETUPTOOLS_SCM")}
    return subprocess.run(
        [sys.executable, "-m", "setuptools_scm"],
        cwd=where,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()


def _git(where: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=where,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A one-commit git repository with this project's name and version settings."""
    require_tool("git", "apt-get install git")
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text(
        '[project]\nname = "metriqo-bridge"\ndynamic = ["version"]\n\n' + _scm_section(),
        encoding="utf-8",
    )
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "pyproject.toml")
    _git(root, "commit", "-q", "-m", "first")
    return root


def _commit(root: Path, name: str) -> str:
    (root / name).write_text(name, encoding="utf-8")
    _git(root, "add", name)
    _git(root, "commit", "-q", "-m", name)
    return _git(root, "rev-parse", "--short=9", "HEAD")


def test_versions_follow_the_tags(project: Path) -> None:
    """Before any tag 0.1.devN; on v0.1.0 exactly 0.1.0; N commits later 0.1.1.devN+g<sha>."""
    sha = _commit(project, "second")
    assert re.fullmatch(rf"0\.1\.dev2\+g{sha}", _version(project))
    _git(project, "tag", "-a", "v0.1.0", "-m", "0.1.0")
    assert _version(project) == "0.1.0"
    sha = _commit(project, "third")
    assert re.fullmatch(rf"0\.1\.1\.dev1\+g{sha}", _version(project))
    # Uncommitted changes are visible in the local part (a date), never as the release.
    (project / "second").write_text("changed", encoding="utf-8")
    assert re.fullmatch(rf"0\.1\.1\.dev1\+g{sha}\.d\d{{8}}", _version(project))


def test_without_git_the_fallback_or_the_builders_version(project: Path, tmp_path: Path) -> None:
    """A bare copy of the tree (the container's build context) gets 0.0, or exactly what the
    builder passes (deploy/Dockerfile: --build-arg VERSION=...)."""
    bare = tmp_path / "bare"
    shutil.copytree(project, bare, ignore=shutil.ignore_patterns(".git"))
    assert _version(bare) == "0.0"
    assert _version(bare, **{PRETEND: "0.1.0"}) == "0.1.0"
