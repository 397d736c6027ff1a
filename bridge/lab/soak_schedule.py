"""The soak's fault schedule: which faults exist, and a seeded, replayable plan of them.

Pure and light: ``metriqo-bridge soak --help`` lists the faults without importing the soak.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

FAULTS: tuple[str, ...] = (
    "bridge_kill",
    "bridge_term",
    "bridge_failpoint",
    "broker_restart",
    "broker_hang",
    "mqtt_refuse",
    "mqtt_blackhole",
    "mqtt_reset",
    "api_refuse",
    "api_blackhole",
    "api_latency",
    "api_5xx",
    "api_429",
)
_FAILPOINTS = (
    "after_receive_before_commit",
    "after_commit_before_puback",
    "after_2xx_before_delete",
)
_RETRY_AFTER_FORMS = ("seconds", "http-date", "zero", "garbage", "missing")


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One fault: starts ``at`` seconds into the run and lasts ``seconds``."""

    at: float
    kind: str
    seconds: float
    detail: str = ""


def schedule(seed: int, duration_s: float, kinds: Sequence[str] = FAULTS) -> list[FaultEvent]:
    """The seeded fault schedule: one fault at a time, 4 to 15 s apart, each 2 to 10 s long,
    none in the last 20 % of the run (so the end is a clean drain)."""
    rng = random.Random(seed)  # noqa: S311 - a replayable schedule, not a secret
    events: list[FaultEvent] = []
    t = rng.uniform(3, 8)
    quiet_from = duration_s * 0.8
    while True:
        kind = rng.choice(list(kinds))
        seconds = round(rng.uniform(2, 10), 1)
        if t + seconds > quiet_from:
            return events
        detail = ""
        if kind == "bridge_failpoint":
            detail = f"{rng.choice(_FAILPOINTS)}:crash@{rng.randint(1, 40)}"
        elif kind == "api_429":
            detail = rng.choice(_RETRY_AFTER_FORMS)
        elif kind == "mqtt_reset":
            detail = str(rng.randint(200, 20000))
        events.append(FaultEvent(round(t, 1), kind, seconds, detail))
        t += seconds + rng.uniform(4, 15)
