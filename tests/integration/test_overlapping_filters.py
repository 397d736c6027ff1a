"""Overlapping rule filters: a broker sends one copy of a message per matching subscription, and
the bridge cannot tell a second copy from a new reading. The bridge subscribes to a cover of the
rules' filters, so each reading arrives, and is stored, once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.mapping.mapper import OUTSIDE_FILTERS
from tests.support.harness import delivered_points, make_settings, metric, publish, running_bridge
from tests.support.oracle import wait_drained, wait_for

# A specific rule above the general one (the recommended order), and two rules whose filters
# only partly overlap (line/+/temp and line/l2/+ both match line/l2/temp).
MAPPINGS = """
version: 1
rules:
  - name: press-7
    topic: "hall/press-7/{metric}"
    device_id: press-7-special
    payload: number
    metric: "{metric}"
  - name: hall
    topic: "hall/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
  - name: temps
    topic: "line/{device}/temp"
    device_id: "{device}"
    payload: number
    metric: temp
  - name: line-two
    topic: "line/l2/{metric}"
    device_id: l2
    payload: number
    metric: "{metric}"
"""


@pytest.mark.parametrize("protocol", ["v5", "v311"])
async def test_a_message_matching_two_rule_filters_is_stored_once(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, protocol: str
) -> None:
    """Plain numbers carry no time, so a second copy would become a second point at another
    receive time: every point must arrive exactly once. A topic only the joined subscription
    line/+/+ lets in is acknowledged and counted as ignored, not dead-lettered."""
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"mqtt.protocol": protocol}
    )
    messages = [
        *((f"hall/press-7/m{i}", f"{i}".encode()) for i in range(30)),  # press-7 and hall
        *((f"hall/dev{i}/kw", f"{i}".encode()) for i in range(30)),  # hall only
        *(("line/l2/temp", f"{i}".encode()) for i in range(30)),  # temps and line-two
        *(("line/l1/temp", f"{i}".encode()) for i in range(30)),  # temps only
        *(("line/l1/noise", b"1") for _ in range(5)),  # only the join matches
    ]
    async with running_bridge(settings, MAPPINGS) as bridge:
        assert bridge.source is not None
        await publish(broker.port, messages, protocol=protocol)
        await wait_for(
            lambda: metric(bridge, "metriqo_bridge_messages_received_total") >= len(messages),
            what="every message received",
        )
        await wait_drained(bridge)
        received = metric(bridge, "metriqo_bridge_messages_received_total")
        ignored = metric(bridge, "metriqo_bridge_messages_ignored_total", rule=OUTSIDE_FILTERS)
        unmatched = metric(bridge, "metriqo_bridge_messages_unmatched_total")
    got = Counter(
        (device, name, value) for device, name, _ts, value in delivered_points(api.store.points())
    )
    want = Counter(
        [
            *((("press-7-special", f"m{i}", float(i))) for i in range(30)),
            *(((f"dev{i}", "kw", float(i))) for i in range(30)),
            *((("l2", "temp", float(i))) for i in range(30)),  # temps is first: it wins
            *((("l1", "temp", float(i))) for i in range(30)),
        ]
    )
    assert got == want
    assert received == len(messages)  # no copies arrived at all
    assert ignored == 5
    assert unmatched == 0
