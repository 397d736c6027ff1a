"""``/readyz``: the reasons the bridge is not ready, in words an operator can act on."""

from __future__ import annotations

from bridge.committer import Committer, full_problem
from bridge.delivery import Delivery
from bridge.mqtt.source import MqttSource
from bridge.spool.file import SpoolFile


def problems(
    source: MqttSource | None,
    spool: SpoolFile,
    committer: Committer | None,
    delivery: Delivery | None,
) -> list[str]:
    """Why the bridge is not ready (an empty list: ready)."""
    out: list[str] = []
    if source is None or not source.state.connected:
        detail = source.state.last_error if source else "not started"
        out.append(f"mqtt not connected: {detail}" if detail else "mqtt not connected")
    elif not source.state.subscribed:
        out.append("mqtt subscriptions not yet acknowledged")
    if committer is not None and committer.waiting_for_space:
        out.append(committer.full_problem)
    elif spool.full:
        out.append(full_problem(spool.data_bytes, spool.settings.max_bytes))
    if delivery is not None and delivery.paused_reason:
        out.append(f"delivery paused: {delivery.paused_reason}")
    return out
