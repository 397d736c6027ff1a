"""End to end: ``metriqo-bridge demo`` as a newcomer runs it, in a subprocess."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.mapping.loader import load_mappings

REPO = Path(__file__).parents[2]


@pytest.mark.skipif(
    shutil.which("mosquitto") is None,
    reason="mosquitto is not installed (apt-get install mosquitto / brew install mosquitto)",
)
def test_demo_delivers_every_point_without_showing_the_token() -> None:
    """The demo simulates every rule of the shipped mapping (ignore and coalescing rules too),
    exits 0 reporting every published point delivered, and never prints a token."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "demo",
            "--seconds",
            "3",
            "--rate",
            "100",
            "--devices",
            "10",
            "--timeout",
            "60",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "RESULT: OK" in result.stdout, output
    rules = len(load_mappings(REPO / "topic-mappings.yaml"))
    assert f"10 simulated devices of {rules} kinds" in result.stdout, output
    assert "not simulated" not in output
    assert "no device left" not in output
    ignored = re.search(r"ignored on purpose +(\d+)  \(of (\d+) sent", result.stdout)
    assert ignored is not None, output
    assert int(ignored[1]) == int(ignored[2]) > 0
    assert "series coalesced" in result.stdout, output
    # The token is random per run; any line that could carry it would mention the scheme.
    assert not [line for line in output.splitlines() if "Bearer" in line]
