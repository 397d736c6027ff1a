"""The broker of the matrix a test runs on (tests/support/brokers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.lab.broker import BrokerProcess
from tests.support.brokers import open_broker


@pytest.fixture
def matrix_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    """The broker named by the test's ``broker_name`` parameter, started privately."""
    yield from open_broker(request.param, tmp_path / "broker")
