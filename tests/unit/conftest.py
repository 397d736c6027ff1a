"""Fixtures of the spool unit tests (``test_spool_*.py``): a spool path and an open spool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.settings import SpoolSettings
from bridge.spool.store import Spool
from tests.support.clock import FakeClock
from tests.support.spool import NOW_S


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """The spool file path (its directory does not exist yet)."""
    return tmp_path / "spool" / "bridge.db"


@pytest.fixture
def spool(path: Path) -> Iterator[Spool]:
    """An open spool with a fake wall clock, closed after the test."""
    s = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    s.open()
    yield s
    s.close()
