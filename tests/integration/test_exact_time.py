"""End to end: one instant in every epoch unit and as ISO 8601 reaches the API as one time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import make_settings, publish, running_bridge

MAPPINGS = """
version: 1
rules:
  - name: plc
    topic: plc/{line}/{form}
    device_id: "{line}-{form}"
    metrics: {v: v}
    timestamp: {field: t, format: auto}
"""


async def test_every_form_of_a_nanosecond_stamp_is_delivered_at_the_same_microsecond(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A stamp 400 ns before a whole second, sent as ns, µs, ms, s (integers, JSON floats and
    strings) and ISO 8601, is delivered at .999999 of its second, never in the next one."""
    whole_s = int(time.time()) - 3600
    ns = whole_s * 10**9 + 999_999_600
    iso = (datetime.fromtimestamp(whole_s, UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
    forms: dict[str, object] = {
        "ns": ns,
        "ns-text": str(ns),
        "us-text": f"{ns // 1000}.600",
        "ms-text": f"{ns // 10**6}.999600",
        "s-text": f"{whole_s}.9999996",
        "s-float": float(f"{whole_s}.999999"),
        "iso": f"{iso}.9999996+02:00",
    }
    messages = [(f"plc/l1/{form}", orjson.dumps({"v": 1, "t": t})) for form, t in forms.items()]
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings, MAPPINGS):
        await publish(broker.port, messages)
        await api.store.wait_for_points(len(forms), 60)
    want = datetime.fromtimestamp(whole_s, UTC).strftime("%Y-%m-%dT%H:%M:%S") + ".999999Z"
    sent: dict[str, str] = {}
    for request in api.store.requests:
        assert isinstance(request.body, list)
        for obj in request.body:
            assert isinstance(obj, dict)
            sent[str(obj["device_id"])] = str(obj["timestamp"])
    assert sent == {f"l1-{form}": want for form in forms}
    stored = {p.device_id: p.timestamp for p in api.store.points()}
    assert set(stored.values()) == {
        datetime.fromtimestamp(whole_s, UTC) + timedelta(microseconds=999_999)
    }
