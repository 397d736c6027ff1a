"""Evidence that every runtime dependency installs on arm64 Linux from a wheel.

``python -m tests.support.arm64_wheels write [--python X.Y ...]`` asks pip itself: for each
Python version (the classifiers of pyproject.toml, plus any ``--python``), one
``pip download --only-binary=:all: --require-hashes -r requirements.lock`` for CPython on
manylinux aarch64 up to glibc 2.36 (Debian bookworm, Raspberry Pi OS), into a temporary
directory. ``--require-hashes`` makes it stronger than "a wheel exists": the file pip picks
must be one whose sha256 the lock records, so ``pip install -r requirements.lock`` on a
gateway installs exactly that file. The wheels pip chose become the table between the markers
in docs/deployment/arm64.md. It needs the network; ``tests/unit/test_arm64_wheels.py`` checks
offline that the table covers the lock and the classifiers as they are now.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.support import REPO
from tests.support.locks import RUNTIME_LOCK, parse_lock

DOC = REPO / "docs" / "deployment" / "arm64.md"
START = "<!-- arm64-wheels:start -->"
END = "<!-- arm64-wheels:end -->"
# The newest glibc a wheel may need: Debian bookworm's (also Raspberry Pi OS's). manylinux2014
# is manylinux_2_17; pip is given every tag in between, whatever its own expansion rules.
GLIBC_MINOR = range(17, 37)
PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in GLIBC_MINOR))
NO_WHEEL = "**no wheel**"
_CLASSIFIER = re.compile(r"Programming Language :: Python :: (3\.\d+)$")


@dataclass(frozen=True)
class Row:
    """One locked package and, per Python version, the wheel pip chose (or None)."""

    name: str
    version: str
    wheels: dict[str, str | None]


def classifier_versions(root: Path = REPO) -> list[str]:
    """The ``3.X`` versions pyproject.toml's classifiers declare, oldest first."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    found = {m.group(1) for c in pyproject["project"]["classifiers"] if (m := _CLASSIFIER.match(c))}
    return sorted(found, key=_version_key)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _pip_download(python: str, requirements: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    nodot = python.replace(".", "")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        *platforms,
        "--implementation",
        "cp",
        "--python-version",
        python,
        "--abi",
        f"cp{nodot}",
        "--dest",
        str(dest),
        "-r",
        str(requirements),
    ]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)


def wheel_label(filename: str) -> str:
    """What the table shows for a wheel: ``pure Python``, or its ABI and lowest glibc."""
    _, _, _, tags = parse_wheel_filename(filename)
    if all(t.platform == "any" for t in tags):
        return "pure Python"
    abis = sorted({t.abi for t in tags})
    glibc = min(
        _glibc(t.platform) for t in tags if t.platform.endswith("_aarch64") and _glibc(t.platform)
    )
    return f"{'/'.join(abis)}, glibc ≥ {glibc}"


def _glibc(platform: str) -> str:
    if platform.startswith("manylinux2014_"):
        return "2.17"
    m = re.match(r"manylinux_(\d+)_(\d+)_", platform)
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def check(pythons: Sequence[str], root: Path = REPO) -> list[Row]:
    """Per locked package and Python version, the aarch64 wheel pip downloads, if any."""
    lock = root / RUNTIME_LOCK
    pins = parse_lock(lock.read_text(encoding="utf-8"))
    rows = {p.name: Row(p.name, str(p.version), {}) for p in pins}
    with tempfile.TemporaryDirectory(prefix="metriqo-arm64-") as tmp:
        for python in pythons:
            dest = Path(tmp) / python
            result = _pip_download(python, lock, dest)
            if result.returncode != 0:
                # One package without a wheel stops pip: ask for each package on its own.
                print(f"{python}: {result.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                _download_one_by_one(python, lock, dest)
            for wheel in sorted(dest.glob("*.whl")):
                name = str(canonicalize_name(parse_wheel_filename(wheel.name)[0]))
                rows[name].wheels[python] = wheel.name
            for row in rows.values():
                row.wheels.setdefault(python, None)
    return [rows[p.name] for p in pins]


def _download_one_by_one(python: str, lock: Path, dest: Path) -> None:
    blocks = re.split(r"\n(?=\S)", lock.read_text(encoding="utf-8"))
    for block in blocks:
        if block.startswith("#") or "==" not in block:
            continue
        single = dest.parent / f"{python}-one.txt"
        single.write_text(block + "\n", encoding="utf-8")
        result = _pip_download(python, single, dest)
        if result.returncode != 0:
            print(f"{python}: {block.split()[0]}: no aarch64 wheel", file=sys.stderr)


def table(rows: Sequence[Row], pythons: Sequence[str]) -> str:
    """The Markdown table: one row per locked package, one column per Python version."""
    heads = [f"CPython {p}" for p in pythons]
    lines = [
        "| package | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(pythons),
    ]
    for row in rows:
        cells = []
        for python in pythons:
            wheel = row.wheels[python]
            cells.append(f"`{wheel_label(wheel)}`" if wheel else NO_WHEEL)
        lines.append(f"| {row.name}=={row.version} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_table(doc_text: str, new_table: str) -> str:
    """``doc_text`` with the text between the markers replaced by ``new_table``."""
    before, start, rest = doc_text.partition(START)
    _, end, after = rest.partition(END)
    if not start or not end:
        raise ValueError(f"{DOC} has no {START} ... {END} section")
    return f"{before}{START}\n{new_table}\n{END}{after}"


def table_in_doc(doc_text: str) -> str:
    """The table between the markers, as written."""
    _, _, rest = doc_text.partition(START)
    inside, _, _ = rest.partition(END)
    return inside.strip()


def table_problems(doc_text: str, lock_text: str, supported: Sequence[str]) -> list[str]:
    """How the written table disagrees with the lock and the classifiers (offline)."""
    lines = table_in_doc(doc_text).splitlines()
    if len(lines) < 2:
        return [f"no table between {START} and {END}"]
    heads = [cell.strip() for cell in lines[0].strip("|").split("|")]
    columns = {head.removeprefix("CPython "): i for i, head in enumerate(heads) if i}
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    pins = {f"{p.name}=={p.version}" for p in parse_lock(lock_text)}
    problems = [f"{pin}: not in the table" for pin in sorted(pins - rows.keys())]
    problems += [f"{row}: not in the lock" for row in sorted(rows.keys() - pins)]
    for python in supported:
        if python not in columns:
            problems.append(f"CPython {python} (a classifier): no column")
            continue
        for pin in sorted(pins & rows.keys()):
            if rows[pin][columns[python]] == NO_WHEEL:
                problems.append(f"{pin}: no aarch64 wheel for CPython {python}")
    return problems


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.arm64_wheels")
    parser.add_argument("action", choices=["write", "show"])
    parser.add_argument(
        "--python", action="append", default=[], help="another version to check, e.g. 3.14"
    )
    args = parser.parse_args(argv)
    supported = classifier_versions()
    pythons = sorted(set(supported) | set(args.python), key=_version_key)
    rows = check(pythons)
    text = table(rows, pythons)
    if args.action == "write":
        DOC.write_text(replace_table(DOC.read_text(encoding="utf-8"), text), encoding="utf-8")
    print(text)
    missing = [(r.name, p) for r in rows for p in supported if r.wheels[p] is None]
    for name, python in missing:
        print(f"arm64: {name} has no aarch64 wheel for CPython {python}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
