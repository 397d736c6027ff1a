"""End to end: ``metriqo-bridge demo`` as a newcomer runs it, in a subprocess."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.lab.demo_recipes import DEMO_RECIPES
from bridge.mapping.loader import load_mappings, load_mappings_text
from bridge.recipes import recipe

REPO = Path(__file__).parents[2]


@pytest.mark.skipif(
    shutil.which("mosquitto") is None,
    reason="mosquitto is not installed (apt-get install mosquitto / brew install mosquitto)",
)
def test_demo_delivers_every_point_without_showing_the_token() -> None:
    """The demo simulates every rule of the shipped mapping (ignore and coalescing rules too)
    and of the Tasmota and Zigbee2MQTT recipes, exits 0 reporting every published point
    delivered, reads recipe points back, and never prints a token."""
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
            "36",
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
    shipped = len(load_mappings(REPO / "topic-mappings.yaml"))
    recipes = sum(len(load_mappings_text(recipe(n).text)) for n in DEMO_RECIPES)
    assert f"36 simulated devices of {shipped + recipes} kinds" in result.stdout, output
    assert "left out" not in output
    for name in DEMO_RECIPES:
        assert f"recipe   {name} (" in result.stdout, output
        points = re.search(rf"from recipe {name} +(\d+)  points read back", result.stdout)
        assert points is not None, output
        assert int(points[1]) > 0
    assert "device tasmota_8A2F3C" in result.stdout, output
    assert "not simulated" not in output
    assert "no device left" not in output
    ignored = re.search(r"ignored on purpose +(\d+)  \(of (\d+) sent", result.stdout)
    assert ignored is not None, output
    assert int(ignored[1]) == int(ignored[2]) > 0
    assert "series coalesced" in result.stdout, output
    # The shipped alerts: applied before the fleet publishes, the valve alert fired on the
    # demo's webhook receiver, and the registry view and the verify run found nothing wrong.
    assert re.search(r"\[1/2\] created alert_\w+ 'Valve more than half open'", result.stdout)
    fired = re.search(r"alert webhook calls +(\d+)  for (\d+) of 2 alert\(s\): (.*)", result.stdout)
    assert fired is not None, output
    assert int(fired[1]) >= int(fired[2]) >= 1, output
    assert "'Valve more than half open'" in fired[3], output
    registry = re.search(
        r"registry \(devices\) +(\d+)  registered, (\d+) delivered for: (.*)", result.stdout
    )
    assert registry is not None, output
    assert registry[1] == registry[2] != "0", output
    assert registry[3] == (
        "0 unknown, 0 silent, 0 offline yet delivering, 0 online not delivered"
    ), output
    verified = re.search(
        r"verify +(\d+)  accepted minute\(s\) checked .*: (\d+) agree, (.*)", result.stdout
    )
    assert verified is not None, output
    assert verified[1] == verified[2] != "0", output
    assert verified[3] == "0 gaps, 0 mismatches", output
    # The token is random per run; any line that could carry it would mention the scheme.
    assert not [line for line in output.splitlines() if "Bearer" in line]
