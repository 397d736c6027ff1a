"""The lock files (requirements.lock, requirements-dev.lock) read offline, against pyproject.toml.

``deploy/lock.sh`` makes them with uv and then runs ``python -m tests.support.locks stamp`` (the
digest header) and ``check``; ``tests/deploy/test_locks.py`` runs the same check in CI. Nothing
here reaches the network: a check that resolved again would be slow and flaky, and would not
say what changed.

What "agree" means:

* each lock's header holds the digest of pyproject.toml's dependency lists it was made from;
* every dependency of pyproject.toml (the runtime list, and the dev extras for the dev lock) is
  pinned in the lock to a version its specifier allows;
* every package the lock names as required by pyproject.toml is still one of its dependencies;
* every pin carries hashes (pip's --require-hashes needs them all);
* the runtime lock pins each package at the dev lock's version (the tests run what ships);
* the lock holds for every Python version from the oldest the classifiers name up to the one
  ``.ci/newest-python`` installs (that one is being brought up and not classified until the
  whole suite passes on it): for each, every dependency has exactly one pin whose environment
  marker applies, and no package has two.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support import REPO

RUNTIME_LOCK = "requirements.lock"
DEV_LOCK = "requirements-dev.lock"
# The extras each lock covers. "brokers" (the matrix's optional brokers) is not locked.
LOCK_EXTRAS: dict[str, tuple[str, ...]] = {RUNTIME_LOCK: (), DEV_LOCK: ("dev",)}
DIGEST_PREFIX = "# pyproject.toml dependencies sha256: "
REFRESH = "run 'bash deploy/lock.sh' and commit the locks"
CLASSIFIER_PREFIX = "Programming Language :: Python :: "
NEWEST_SCRIPT = ".ci/newest-python"
# How uv's "# via" annotation names a requirement of pyproject.toml itself.
_VIA_PROJECT = "metriqo-bridge (pyproject.toml)"


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line of a lock, with its marker, hashes and "via" annotations."""

    name: str
    version: Version
    marker: str
    hashes: tuple[str, ...]
    via: tuple[str, ...]

    @property
    def top_level(self) -> bool:
        """Whether the lock says pyproject.toml itself asks for this package."""
        return _VIA_PROJECT in self.via


def dependency_digest(pyproject: dict[str, object]) -> str:
    """sha256 of the runtime dependencies and the dev extras (order-insensitive)."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    lists = {
        "dependencies": sorted(project.get("dependencies", [])),
        "dev": sorted(project.get("optional-dependencies", {}).get("dev", [])),
    }
    return hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest()


def parse_lock(text: str) -> list[Pin]:
    """The pins of a uv/pip-tools style lock: requirement lines continued with backslashes,
    followed by ``# via`` comments (on one line or as an indented list)."""
    pins: list[Pin] = []
    requirement = ""
    hashes: list[str] = []
    via: list[str] = []

    def close() -> None:
        nonlocal requirement, hashes, via
        if requirement:
            spec, _, marker = requirement.partition(";")
            name, _, version = spec.strip().partition("==")
            pins.append(
                Pin(canonicalize_name(name), Version(version), marker.strip(), (*hashes,), (*via,))
            )
        requirement, hashes, via = "", [], []

    in_via = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not raw[0].isspace() and not line.startswith("#"):
            close()
            in_via = False
            requirement = line.removesuffix("\\").strip()
        elif line.startswith("--hash="):
            hashes.append(line.removeprefix("--hash=").removesuffix("\\").strip())
        elif line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                via.append(rest)
        elif in_via and line.startswith("#   "):
            via.append(line.removeprefix("#").strip())
        else:
            in_via = False
    close()
    return pins


def lock_problems(pyproject: dict[str, object], lock_name: str, lock_text: str) -> list[str]:
    """What disagrees between pyproject.toml and one lock (empty when they agree)."""
    problems: list[str] = []
    digest = dependency_digest(pyproject)
    stamped = [line for line in lock_text.splitlines() if line.startswith(DIGEST_PREFIX)]
    if not stamped:
        problems.append(f"{lock_name}: no '{DIGEST_PREFIX.strip()}' header line")
    elif stamped[0].removeprefix(DIGEST_PREFIX).strip() != digest:
        problems.append(
            f"{lock_name}: pyproject.toml's dependencies changed since the lock was made"
        )
    pins = parse_lock(lock_text)
    by_name: dict[str, list[Pin]] = {}
    for pin in pins:
        by_name.setdefault(pin.name, []).append(pin)
        if not pin.hashes:
            problems.append(f"{lock_name}: {pin.name}=={pin.version} has no hashes")
    wanted = _requirements(pyproject, LOCK_EXTRAS[lock_name])
    for requirement in wanted.values():
        name = canonicalize_name(requirement.name)
        if name not in by_name:
            problems.append(f"{lock_name}: {requirement} of pyproject.toml is not pinned")
            continue
        for pin in by_name[name]:
            if not requirement.specifier.contains(pin.version, prereleases=True):
                problems.append(
                    f"{lock_name}: {pin.name}=={pin.version} is outside pyproject.toml's "
                    f"'{requirement}'"
                )
    for pin in pins:
        if pin.top_level and pin.name not in wanted:
            problems.append(
                f"{lock_name}: {pin.name} is pinned as a requirement of pyproject.toml, "
                "which no longer has it"
            )
    return problems


def same_versions_problems(runtime_text: str, dev_text: str) -> list[str]:
    """Runtime pins whose version differs from the dev lock's (or that it lacks)."""
    dev = {(p.name, p.marker): p.version for p in parse_lock(dev_text)}
    problems = []
    for pin in parse_lock(runtime_text):
        other = dev.get((pin.name, pin.marker))
        if other != pin.version:
            problems.append(
                f"{RUNTIME_LOCK}: {pin.name}=={pin.version} but {DEV_LOCK} has "
                f"{other if other is not None else 'no such pin'}"
            )
    return problems


def supported_pythons(pyproject: dict[str, object]) -> list[str]:
    """The ``3.X`` versions pyproject.toml's classifiers name, oldest first."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    found = [
        c.removeprefix(CLASSIFIER_PREFIX)
        for c in project.get("classifiers", [])
        if c.startswith(CLASSIFIER_PREFIX) and c.removeprefix(CLASSIFIER_PREFIX).count(".") == 1
    ]
    return sorted(found, key=Version)


def newest_python(root: Path = REPO) -> str:
    """The ``3.X`` that ``.ci/newest-python`` installs (its ``python=python3.X`` line)."""
    text = (root / NEWEST_SCRIPT).read_text(encoding="utf-8")
    found = re.search(r"^python=python(3\.\d+)$", text, re.MULTILINE)
    assert found is not None, f"{NEWEST_SCRIPT} names no python=python3.X"
    return found[1]


def checked_pythons(pyproject: dict[str, object], newest: str) -> list[str]:
    """Every ``3.X`` from the oldest classified version up to the newer of the newest
    classified one and ``newest``: the versions the locks must hold for."""
    classified = supported_pythons(pyproject)
    if not classified:
        return []
    low = int(classified[0].split(".")[1])
    high = max(int(v.split(".")[1]) for v in [*classified, newest])
    return [f"3.{minor}" for minor in range(low, high + 1)]


def marker_environment(python: str) -> dict[str, str]:
    """The marker variables of CPython ``python`` (``3.X``, its first release) on Linux x86_64."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
    }


def coverage_problems(
    pyproject: dict[str, object], lock_name: str, lock_text: str, newest: str
) -> list[str]:
    """Where the lock does not hold for one of :func:`checked_pythons`: a dependency with no
    pin for that version (a lock resolved for one version only), or a package with two."""
    pythons = checked_pythons(pyproject, newest)
    problems = [] if pythons else ["pyproject.toml: no 'Programming Language :: Python :: 3.X'"]
    pins = parse_lock(lock_text)
    wanted = _requirements(pyproject, LOCK_EXTRAS[lock_name])
    for python in pythons:
        environment = marker_environment(python)
        applies: dict[str, list[Pin]] = {}
        for pin in pins:
            if not pin.marker or Marker(pin.marker).evaluate(environment):
                applies.setdefault(pin.name, []).append(pin)
        for name, requirement in wanted.items():
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            if name not in applies:
                problems.append(f"{lock_name}: nothing pins {requirement} for Python {python}")
        for name, both in applies.items():
            if len(both) > 1:
                versions = ", ".join(str(p.version) for p in both)
                problems.append(
                    f"{lock_name}: {name} has {len(both)} pins for Python {python}: {versions}"
                )
    return problems


def repository_problems(root: Path = REPO) -> list[str]:
    """Every disagreement between the repository's pyproject.toml and its two locks."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    texts: dict[str, str] = {}
    problems: list[str] = []
    newest = newest_python(root)
    for name in LOCK_EXTRAS:
        path = root / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        texts[name] = path.read_text(encoding="utf-8")
        problems += lock_problems(pyproject, name, texts[name])
        problems += coverage_problems(pyproject, name, texts[name], newest)
    if len(texts) == len(LOCK_EXTRAS):
        problems += same_versions_problems(texts[RUNTIME_LOCK], texts[DEV_LOCK])
    return problems


def stamp(lock: Path, root: Path = REPO) -> None:
    """Write the digest header into a lock uv just made (after its own header comments)."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    lines = [
        line
        for line in lock.read_text(encoding="utf-8").splitlines()
        if not line.startswith(DIGEST_PREFIX)
    ]
    at = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    lines.insert(at, DIGEST_PREFIX + dependency_digest(pyproject))
    lock.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _requirements(pyproject: dict[str, object], extras: Sequence[str]) -> dict[str, Requirement]:
    project = pyproject["project"]
    assert isinstance(project, dict)
    texts = list(project.get("dependencies", []))
    for extra in extras:
        texts += project.get("optional-dependencies", {}).get(extra, [])
    requirements = [Requirement(text) for text in texts]
    return {canonicalize_name(r.name): r for r in requirements}


def main(argv: Sequence[str]) -> int:
    """``stamp LOCK...`` or ``check`` (exit 1 listing what disagrees)."""
    if argv[:1] == ["stamp"] and len(argv) > 1:
        for name in argv[1:]:
            stamp(Path(name))
        return 0
    if argv == ["check"]:
        problems = repository_problems()
        for problem in problems:
            print(f"lock: {problem}", file=sys.stderr)
        if problems:
            print(f"lock: {REFRESH}", file=sys.stderr)
        return 1 if problems else 0
    print("usage: python -m tests.support.locks stamp LOCK... | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
