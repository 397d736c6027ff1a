"""Alert rules of the local API (``POST /alerts``) and their evaluation against telemetry.

A rule fires when its threshold is **crossed**: on the transition from not-met to met, per rule,
device and metric, not on every point that meets it. Each (rule, device, metric) starts not-met,
so the first point that meets the condition fires; a point that no longer meets it re-arms the
rule for that device and metric. Points are evaluated in the order the server accepted them
(the order of the body within a request), not by their timestamps: a replayed or late point is
evaluated when it arrives, and a replay of a value that already meets the condition does not
fire again. Pure: the server hands each firing to :class:`bridge.lab.apiserver.notifier.Notifier`.
"""

from __future__ import annotations

import operator
import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from bridge.lab.apiserver.validation import AlertSpec, JsonValue, format_timestamp

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """An alert rule as created: the validated body, its id and creation time."""

    id: str
    spec: AlertSpec
    created_at: datetime

    def created(self) -> dict[str, JsonValue]:
        """The ``201`` body the contract documents."""
        return {
            "id": self.id,
            "name": self.spec.name,
            "status": "active",
            "created_at": format_timestamp(self.created_at),
        }

    def met(self, value: float) -> bool:
        return _COMPARE[self.spec.condition](value, self.spec.threshold)


@dataclass(frozen=True, slots=True)
class Firing:
    """One threshold crossing: what the webhook is told."""

    alert: StoredAlert
    device_id: str
    metric: str
    value: float
    timestamp: datetime

    def payload(self) -> dict[str, JsonValue]:
        """The webhook's JSON body."""
        spec = self.alert.spec
        return {
            "alert_id": self.alert.id,
            "name": spec.name,
            "device_id": self.device_id,
            "metric": self.metric,
            "value": self.value,
            "threshold": spec.threshold,
            "condition": spec.condition,
            "timestamp": format_timestamp(self.timestamp, 3),
        }


class AlertBook:
    """The stored rules and, per (rule, device, metric), whether the condition is met now."""

    def __init__(self) -> None:
        self._alerts: list[StoredAlert] = []
        self._met: set[tuple[str, str, str]] = set()

    @property
    def alerts(self) -> list[StoredAlert]:
        """Every rule, in creation order (a copy)."""
        return list(self._alerts)

    def create(self, spec: AlertSpec, now: datetime) -> StoredAlert:
        """Stores a rule under a fresh id (``alert_`` and six letters or digits, as the
        contract's example)."""
        taken = {a.id for a in self._alerts}
        while True:
            alert_id = "alert_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(6))
            if alert_id not in taken:
                break
        alert = StoredAlert(alert_id, spec, now)
        self._alerts.append(alert)
        return alert

    def evaluate(self, points: Iterable[tuple[str, str, float, datetime]]) -> list[Firing]:
        """(device_id, metric, value, timestamp) in acceptance order → the crossings."""
        fired: list[Firing] = []
        if not self._alerts:
            return fired
        for device_id, metric, value, timestamp in points:
            for alert in self._alerts:
                spec = alert.spec
                if spec.metric != metric or spec.device_id not in ("*", device_id):
                    continue
                key = (alert.id, device_id, metric)
                if not alert.met(value):
                    self._met.discard(key)
                elif key not in self._met:
                    self._met.add(key)
                    fired.append(Firing(alert, device_id, metric, value, timestamp))
        return fired
