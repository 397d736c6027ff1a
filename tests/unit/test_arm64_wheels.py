"""The arm64 evidence in docs/deployment/arm64.md is current (tests.support.arm64_wheels):
checked offline against requirements.lock and pyproject.toml's classifiers. Making the table
needs the network and is a command, not a test."""

from __future__ import annotations

from tests.support import REPO
from tests.support.arm64_wheels import (
    DOC,
    NO_WHEEL,
    Row,
    classifier_versions,
    replace_table,
    table,
    table_problems,
    wheel_label,
)
from tests.support.locks import RUNTIME_LOCK


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _lock() -> str:
    return (REPO / RUNTIME_LOCK).read_text(encoding="utf-8")


def test_the_table_covers_every_locked_package_and_supported_python() -> None:
    """One row per package of requirements.lock at its locked version, a column for each
    classifier version, and an aarch64 wheel in each of those cells."""
    assert classifier_versions()
    assert table_problems(_doc(), _lock(), classifier_versions()) == []


def test_a_stale_table_is_reported() -> None:
    """The check can fail: a package whose locked version changed, a classifier version with no
    column, and a supported version without a wheel are each reported."""
    lock = _lock()
    assert "\nidna==3.20 " in lock
    bumped = lock.replace("\nidna==3.20 ", "\nidna==3.21 ")
    assert table_problems(_doc(), bumped, classifier_versions()) == [
        "idna==3.21: not in the table",
        "idna==3.20: not in the lock",
    ]
    assert table_problems(_doc(), lock, ["3.10"]) == ["CPython 3.10 (a classifier): no column"]
    rows = [Row("idna", "3.20", {"3.11": None})]
    doc = replace_table(_doc(), table(rows, ["3.11"]))
    assert NO_WHEEL in doc
    problems = table_problems(doc, lock, ["3.11"])
    assert "idna==3.20: no aarch64 wheel for CPython 3.11" in problems


def test_wheel_labels_say_pure_python_or_abi_and_glibc() -> None:
    """What a cell shows for the kinds of wheel pip picks."""
    assert wheel_label("idna-3.20-py3-none-any.whl") == "pure Python"
    assert (
        wheel_label("pyyaml-6.0.4-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.whl")
        == "cp311, glibc ≥ 2.17"
    )
    assert wheel_label("protobuf-7.36.2-cp39-abi3-manylinux_2_28_aarch64.whl") == (
        "abi3, glibc ≥ 2.28"
    )
