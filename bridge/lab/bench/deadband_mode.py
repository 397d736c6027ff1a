"""``bench deadband``: what deadbands save on a simulated fleet, against the API budget.

No broker and no API: a fleet of sensors is simulated at its publish rate over some hours of
measurement time, and every value goes through the same decision the spool makes
(:func:`bridge.deadband.decide`). The fleet, by default 2,000 sensors:

- 60 % room and process temperatures, every 2 s: a thermostat's cycle (0.2 to 1 °C
  amplitude, 15 to 60 minutes) plus ±0.05 °C of measurement noise; ``{absolute: 0.2,
  heartbeat_s: 300}``;
- 20 % states (modes, valve positions, alarms), every 1 s: a change every 15 minutes on
  average; ``{on_change: true}`` (heartbeat 3600 s);
- 20 % fast signals (power, flow), every 1 s: a random walk of about 3 % a second around
  their mean; ``{relative: 0.02, heartbeat_s: 300}``.

The budget is the organisation's: ``api.requests_per_minute`` times ``batch.max_points`` / 60 =
1,667 points/s with the defaults, shared by every bridge of the organisation.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import asdict, dataclass

from bridge.deadband import Sent, decide, describe, label
from bridge.errors import EX_OK
from bridge.models import Deadband

BUDGET_POINTS_PER_S = 1000 * 100 / 60  # 1,000 requests/min of 100 points (the API's limits)
S = 1_000_000


@dataclass(frozen=True, slots=True)
class SensorClass:
    """One kind of sensor in the fleet."""

    name: str
    share: float  # of the fleet
    every_s: int  # publish period
    band: Deadband


CLASSES = (
    SensorClass("temperature", 0.6, 2, Deadband("absolute", 0.2, 300 * S)),
    SensorClass("state", 0.2, 1, Deadband("on_change", 0.0, 3600 * S)),
    SensorClass("fast", 0.2, 1, Deadband("relative", 0.02, 300 * S)),
)


@dataclass(frozen=True, slots=True)
class ClassResult:
    """Points/s of one sensor class without and with its deadband."""

    name: str
    sensors: int
    every_s: int
    band: str
    means: str
    without: float
    with_band: float


@dataclass(frozen=True, slots=True)
class FleetReport:
    """The whole fleet's points/s without and with deadbands, against the budget."""

    sensors: int
    seconds: int
    seed: int
    budget: float
    classes: tuple[ClassResult, ...]

    @property
    def without(self) -> float:
        """Points/s the fleet sends without deadbands."""
        return sum(c.without for c in self.classes)

    @property
    def with_bands(self) -> float:
        """Points/s with them."""
        return sum(c.with_band for c in self.classes)


def _temperature(rng: random.Random) -> tuple[float, float, float, float]:
    """(mean, amplitude, period s, phase) of one thermostat-controlled temperature."""
    return (rng.uniform(18, 24), rng.uniform(0.2, 1.0), rng.uniform(900, 3600), rng.random())


def _values(kind: str, rng: random.Random, seconds: int, every_s: int) -> list[float]:
    """One sensor's values, one per publish."""
    n = seconds // every_s
    if kind == "temperature":
        mean, amp, period, phase = _temperature(rng)
        return [
            round(
                mean
                + amp * math.sin(2 * math.pi * (i * every_s / period + phase))
                + rng.uniform(-0.05, 0.05),
                2,
            )
            for i in range(n)
        ]
    if kind == "state":
        out, value = [], float(rng.randrange(4))
        for _ in range(n):
            if rng.random() < every_s / 900:  # a change every 15 minutes on average
                value = float((int(value) + rng.randrange(1, 4)) % 4)
            out.append(value)
        return out
    out, mean = [], rng.uniform(50, 500)
    value = mean
    for _ in range(n):
        value += rng.gauss(0, 0.03 * mean) + 0.1 * (mean - value)
        out.append(round(value, 2))
    return out


def simulate(sensors: int = 2000, seconds: int = 3600, seed: int = 1) -> FleetReport:
    """Run the fleet for ``seconds`` of measurement time; the points each class sends."""
    rng = random.Random(seed)
    results = []
    t0 = 1_795_680_000 * S
    for c in CLASSES:
        count = round(sensors * c.share)
        sent = 0
        for _ in range(count):
            state: Sent | None = None
            for i, value in enumerate(_values(c.name, rng, seconds, c.every_s)):
                send, state = decide(state, value, t0 + i * c.every_s * S, c.band)
                sent += send
        published = count * (seconds // c.every_s)
        results.append(
            ClassResult(
                c.name,
                count,
                c.every_s,
                label(c.band) + f", heartbeat {c.band.heartbeat_us // S} s",
                describe(c.band),
                published / seconds,
                sent / seconds,
            )
        )
    return FleetReport(sensors, seconds, seed, BUDGET_POINTS_PER_S, tuple(results))


def render(report: FleetReport) -> str:
    """A table of points/s per class, and the fleet against the budget."""

    def share(points: float) -> str:
        return f"{100 * points / report.budget:.0f} %"

    lines = [
        f"deadband on a simulated fleet: {report.sensors} sensors, {report.seconds} s of "
        f"measurement time (seed {report.seed})",
        f"{'class':<12} {'sensors':>7} {'every':>6}  {'band':<28} {'points/s without':>16} "
        f"{'with':>9} {'saved':>6}",
    ]
    for c in report.classes:
        saved = 1 - c.with_band / c.without if c.without else 0.0
        lines.append(
            f"{c.name:<12} {c.sensors:>7} {c.every_s:>5}s  {c.band:<28} {c.without:>16.1f} "
            f"{c.with_band:>9.1f} {saved:>6.0%}"
        )
    without, with_bands = report.without, report.with_bands
    lines.append(
        f"{'fleet':<12} {report.sensors:>7} {'':>6}  {'':<28} {without:>16.1f} "
        f"{with_bands:>9.1f} {1 - with_bands / without:>6.0%}"
    )
    lines.append(
        f"budget {report.budget:,.0f} points/s for the organisation: {share(without)} of it "
        f"without deadbands, {share(with_bands)} with them; the same budget carries "
        f"{report.budget / with_bands * report.sensors:,.0f} such sensors instead of "
        f"{report.budget / without * report.sensors:,.0f}"
    )
    return "\n".join(lines)


def run_deadband_bench(args: argparse.Namespace) -> int:
    """``bench deadband``: print the table (and write JSON with ``--json``); always 0."""
    report = simulate(args.sensors, args.fleet_seconds, args.seed)
    print(render(report))
    if args.json_out is not None:
        data = asdict(report) | {"without": report.without, "with_bands": report.with_bands}
        args.json_out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return EX_OK
