"""The fake clock, kept importable here for unit tests: it lives in :mod:`tests.support.clock`."""

from __future__ import annotations

from tests.support.clock import FakeClock

__all__ = ["FakeClock"]
