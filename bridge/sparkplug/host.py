"""What a Sparkplug 3.0 host application says, and how often it may ask for a rebirth.

The host mode (``sparkplug.host_id``) publishes its state on ``spBv1.0/STATE/<host_id>``: a
retained JSON object ``{"online": true|false, "timestamp": <ms>}`` at QoS 1. The death is the
MQTT Will of each connection and its timestamp is the one of the birth published after that
connection's CONNACK (Sparkplug 3.0, 5.9: edge nodes match a death to its birth by it). When
the bridge sees DATA with an alias no BIRTH defined, or a gap in ``seq``, it asks the edge node
for a rebirth: an NCMD to ``spBv1.0/<group>/NCMD/<node>`` with the Boolean metric
``Node Control/Rebirth`` = true (QoS 0, not retained, as the specification wants commands).

A burst of unknown aliases (every DATA of a node whose BIRTH was missed) must not become a
burst of NCMDs: :class:`RebirthLimiter` lets one request per edge node through per interval,
and at most so many per minute across all nodes. Pure: no I/O, the caller passes the time.
"""

from __future__ import annotations

import json
from collections import deque

from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.encode import REBIRTH, Metric, encode_payload
from bridge.sparkplug.topic import NAMESPACE, StateTopic

STATE_QOS = 1  # Sparkplug 3.0: STATE birth and death at QoS 1, retained
COMMAND_QOS = 0  # Sparkplug 3.0: NCMD at QoS 0, not retained
_FORGET_AFTER = 10_000  # edge nodes remembered before old entries are pruned


def state_topic(host_id: str) -> str:
    """``spBv1.0/STATE/<host_id>``, the 3.0 form."""
    return StateTopic(host_id).text()


def state_payload(online: bool, timestamp_ms: int) -> bytes:
    """The STATE birth (``online``) or death payload, as compact JSON."""
    return json.dumps({"online": online, "timestamp": timestamp_ms}, separators=(",", ":")).encode()


def rebirth_command(group: str, node: str, timestamp_ms: int) -> tuple[str, bytes]:
    """(topic, payload) of the NCMD that asks one edge node to publish its BIRTHs again."""
    payload = encode_payload(
        [Metric(REBIRTH, DataType.BOOLEAN, True, timestamp_ms=timestamp_ms)],
        timestamp_ms=timestamp_ms,
    )
    return f"{NAMESPACE}/{group}/NCMD/{node}", payload


class RebirthLimiter:
    """At most one rebirth request per edge node per ``interval_s``, and at most
    ``per_minute`` in any 60 seconds across all nodes."""

    def __init__(self, interval_s: float, per_minute: int) -> None:
        self.interval_s = interval_s
        self.per_minute = per_minute
        self._last: dict[tuple[str, str], float] = {}
        self._recent: deque[float] = deque()

    def allow(self, group: str, node: str, now: float) -> bool:
        """Whether a request to this node may go out at ``now`` (seconds, monotonic); a True
        answer counts as sent."""
        key = (group, node)
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        recent = self._recent
        while recent and now - recent[0] >= 60.0:
            recent.popleft()
        if len(recent) >= self.per_minute:
            return False
        recent.append(now)
        if len(self._last) >= _FORGET_AFTER:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
        self._last[key] = now
        return True
