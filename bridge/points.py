"""The records that flow from the mapper through the spool to the API."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Coalesce:
    """Fold a rule's points into one per metric and time window before sending.

    Attributes:
        window_us: window length; windows are aligned to the Unix epoch.
        function: ``last``, ``avg``, ``min``, ``max``, ``sum`` or ``count``.
    """

    window_us: int
    function: str


@dataclass(frozen=True, slots=True)
class Record:
    """Metric values of one device at one timestamp: one object of an API request.

    Attributes:
        device_id: the API's device identifier.
        ts_us: measurement time, epoch microseconds UTC.
        metrics: metric name → finite float; each entry is one data point.
        received_us: when the bridge received the message (epoch µs), for delivery lag.
    """

    device_id: str
    ts_us: int
    metrics: dict[str, float]
    received_us: int
    coalesce: Coalesce | None = None

    @property
    def record_id(self) -> bytes:
        """Deterministic id: a redelivered message maps to the same id and is stored once.

        Built from what identifies the points (device, timestamp, metric names) so that the
        point id of each value, ``device_id/metric@timestamp``, is implied by it.
        """
        return record_id(self.device_id, self.ts_us, self.metrics)


def record_id(device_id: str, ts_us: int, metrics: dict[str, float]) -> bytes:
    """Hash of device, timestamp and sorted metric names (16 bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(device_id.encode("utf-8", "surrogatepass"))
    h.update(b"\x00%d\x00" % ts_us)
    h.update("\x00".join(sorted(metrics)).encode("utf-8", "surrogatepass"))
    return h.digest()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message (or part of one) the bridge could not deliver, kept with its reason.

    Attributes:
        reason: bounded label, e.g. ``invalid_json`` or ``api_rejected``.
        detail: human-readable explanation (never contains secrets).
        topic: MQTT topic, or "" for records rejected by the API.
        payload: the original bytes (truncated to a cap by the spool).
        rule: the mapping rule name, or "" when none matched.
        received_us: receive time, epoch microseconds.
    """

    reason: str
    detail: str
    topic: str
    payload: bytes
    rule: str
    received_us: int
