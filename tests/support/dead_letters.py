"""What the dead-letter tool tests share: a fixed time, the mapping file the tools requeue with,
and a payload for its meter rule."""

from __future__ import annotations

import orjson

T0_US = 1_795_683_600_000_000  # 2026-11-26T09:00:00Z
T0_MS = T0_US // 1000

MAPPINGS = """\
version: 1
rules:
  - name: bench
    topic: meter/bench/reading
    ignore: true
  - name: meter
    topic: "meter/{device}/reading"
    device_id: "{device}"
    metrics: {kw: power_kw, v: volts}
    timestamp: {field: ts}
  - name: plain
    topic: "tele/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
  - name: fast
    topic: "fast/{device}"
    device_id: "{device}"
    metrics: {v: v}
    coalesce: {window_s: 60, function: avg}
"""


def meter(device: str, kw: float, ts_ms: int = T0_MS, volts: float | None = 230.0) -> bytes:
    """A meter payload in the shape MAPPINGS expects (``volts`` None leaves the field out)."""
    doc: dict[str, float] = {"power_kw": kw, "ts": ts_ms}
    if volts is not None:
        doc["volts"] = volts
    return orjson.dumps(doc)
