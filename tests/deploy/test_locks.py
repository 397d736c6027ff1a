"""The lock files agree with pyproject.toml, and the installs use them with their hashes.

Offline: the locks are parsed, never resolved again (tests/support/locks.py says what "agree"
means). When this fails, run ``bash deploy/lock.sh`` and commit pyproject.toml with the locks.
"""

from __future__ import annotations

import copy
import re
import tomllib
from typing import Any

import pytest
from packaging.version import Version

from tests.support import REPO
from tests.support.deploy import load_dockerfile
from tests.support.locks import (
    DEV_LOCK,
    REFRESH,
    RUNTIME_LOCK,
    checked_pythons,
    coverage_problems,
    lock_problems,
    newest_python,
    parse_lock,
    repository_problems,
    same_versions_problems,
    supported_pythons,
)


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _lock(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


def test_locks_agree_with_pyproject() -> None:
    """Every dependency and dev extra is pinned within its specifier, nothing the locks pin for
    pyproject.toml is gone from it, every pin has hashes, the runtime lock has the dev lock's
    versions, and the digest header matches the dependency lists."""
    problems = repository_problems()
    assert problems == [], "\n".join([*problems, REFRESH])


def test_runtime_lock_holds_the_runtime_dependencies_only() -> None:
    """The image's lock has no test tools; the dev lock has both."""
    runtime = {p.name for p in parse_lock(_lock(RUNTIME_LOCK))}
    dev = {p.name for p in parse_lock(_lock(DEV_LOCK))}
    assert {"paho-mqtt", "aiohttp", "pydantic", "orjson", "prometheus-client", "pyyaml"} <= runtime
    assert not runtime & {"pytest", "mypy", "ruff", "uv", "setuptools-scm", "hypothesis"}
    assert runtime < dev
    assert {"pytest", "uv", "setuptools-scm"} <= dev


def _with_dependency(pyproject: dict[str, Any], old: str, new: str | None) -> dict[str, Any]:
    changed = copy.deepcopy(pyproject)
    deps: list[str] = changed["project"]["dependencies"]
    at = next(i for i, d in enumerate(deps) if d.startswith(old))
    if new is None:
        del deps[at]
    else:
        deps[at] = new
    return changed


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK])
def test_check_catches_each_kind_of_disagreement(lock: str) -> None:
    """The check is not vacuous: a new dependency, a specifier the pin falls outside of and a
    dependency dropped from pyproject.toml are each reported, as is the stale digest."""
    pyproject, text = _pyproject(), _lock(lock)
    assert lock_problems(pyproject, lock, text) == []

    added = copy.deepcopy(pyproject)
    added["project"]["dependencies"].append("never-a-dependency>=5")
    problems = lock_problems(added, lock, text)
    assert any("dependencies changed since the lock was made" in p for p in problems)
    assert any("never-a-dependency>=5 of pyproject.toml is not pinned" in p for p in problems)

    pinned = re.search(r"^orjson==(\S+)", text, re.MULTILINE)
    assert pinned is not None
    tightened = _with_dependency(pyproject, "orjson", f"orjson>{pinned[1]}")
    problems = lock_problems(tightened, lock, text)
    assert any(f"orjson=={pinned[1]} is outside" in p for p in problems), problems

    dropped = _with_dependency(pyproject, "PyYAML", None)
    problems = lock_problems(dropped, lock, text)
    assert any("pyyaml is pinned as a requirement of pyproject.toml" in p for p in problems)

    unstamped = "\n".join(line for line in text.splitlines() if "sha256: " not in line)
    assert any("header line" in p for p in lock_problems(pyproject, lock, unstamped))


def test_check_catches_a_pin_without_hashes_and_a_version_skew() -> None:
    pyproject, runtime, dev = _pyproject(), _lock(RUNTIME_LOCK), _lock(DEV_LOCK)
    # Strip the hashes of one pin (the first) only.
    first = re.search(r"^(\S+)==\S+ \\\n((?:    --hash=\S+(?: \\)?\n)+)", runtime, re.MULTILINE)
    assert first is not None
    bare = runtime.replace(first[0], first[0].split(" \\")[0] + "\n", 1)
    problems = lock_problems(pyproject, RUNTIME_LOCK, bare)
    assert problems == [
        f"{RUNTIME_LOCK}: {first[1]}=={first[0].split('==')[1].split()[0]} has no hashes"
    ]

    assert same_versions_problems(runtime, dev) == []
    skewed = re.sub(r"^(aiohttp==)(\S+)", r"\g<1>0.0.1", runtime, flags=re.MULTILINE)
    assert [p for p in same_versions_problems(skewed, dev) if "aiohttp==0.0.1" in p]


def test_classifiers_name_the_versions_ci_runs() -> None:
    """The classifiers name only versions the whole suite passed on: the oldest is
    requires-python's floor, the one .ci/run's venv and lock.sh use. .ci/newest-python's
    version is not classified below it, and the lock check reaches up to it."""
    pyproject = _pyproject()
    pythons = supported_pythons(pyproject)
    assert pythons, pythons
    assert pyproject["project"]["requires-python"] == f">={pythons[0]}"
    lock_sh = (REPO / "deploy" / "lock.sh").read_text(encoding="utf-8")
    assert f"--python-version {pythons[0]}" in lock_sh
    newest = newest_python()
    assert Version(newest) >= Version(pythons[-1])
    checked = checked_pythons(pyproject, newest)
    assert checked[0] == pythons[0]
    assert checked[-1] == newest
    assert len(checked) == int(newest.split(".")[1]) - int(pythons[0].split(".")[1]) + 1


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK])
def test_check_catches_a_lock_that_misses_a_python_version(lock: str) -> None:
    """A pin limited to older Pythons (what a lock resolved for 3.11 alone can hold) leaves
    the newest without it; two pins that both apply are as wrong."""
    pyproject, text, newest = _pyproject(), _lock(lock), newest_python()
    assert coverage_problems(pyproject, lock, text, newest) == []

    pinned = re.search(r"^(orjson==\S+)( \\)$", text, re.MULTILINE)
    assert pinned is not None
    narrowed = text.replace(pinned[0], f"{pinned[1]} ; python_full_version < '3.12'{pinned[2]}")
    assert coverage_problems(pyproject, lock, narrowed, newest) == [
        f"{lock}: nothing pins orjson>=3.9 for Python {v}"
        for v in checked_pythons(pyproject, newest)[1:]
    ]

    doubled = text + (
        "orjson==3.9.0 \\\n    --hash=sha256:00\n    # via metriqo-bridge (pyproject.toml)\n"
    )
    problems = coverage_problems(pyproject, lock, doubled, newest)
    assert len(problems) == len(checked_pythons(pyproject, newest)), problems
    assert all("orjson has 2 pins" in p for p in problems)


def test_setup_and_image_install_from_the_locks_with_hashes() -> None:
    """CI's setup installs the dev lock, the image's builder the runtime lock, both with
    --require-hashes; the bridge itself comes after them with --no-deps."""
    setup = (REPO / "deploy" / "setup.sh").read_text(encoding="utf-8")
    assert f"pip install -q --require-hashes -r {DEV_LOCK}" in setup
    assert "pip install -q --no-deps --no-build-isolation -e ." in setup
    assert "'.[dev]'" not in setup, "the dev extras come from the lock, not a fresh resolve"

    builder = load_dockerfile()[0]
    assert builder.name == "builder"
    assert (None, [RUNTIME_LOCK], "./") in builder.copies
    runs = builder.args("RUN")
    assert any(f"--require-hashes -r {RUNTIME_LOCK}" in r for r in runs)
    (install,) = [r for r in runs if "/src" in r]
    assert "--no-deps /src" in install
    assert "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_METRIQO_BRIDGE" in install
