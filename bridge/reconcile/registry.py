"""``devices``: the registry (``GET /devices``) against the spool's table of delivered devices
(:mod:`bridge.spool.audit`). Four findings, each a list of device ids:

- ``unknown``: the bridge delivered for it, the registry does not list it (deleted in the
  dashboard, or registered under another organization);
- ``silent``: registered, but not seen by the registry for longer than ``silent_for`` (or
  never);
- ``offline_delivering``: offline or inactive in the registry although the bridge delivered
  for it within ``silent_for`` (points accepted but not counted as seen, or a clock problem);
- ``online_not_delivered``: online in the registry although this bridge has not delivered
  for it within ``silent_for``: another writer sends for it (or this bridge's table evicted
  it, see ``evicted``).

Metrics carry only the counts (device ids are unbounded label values).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from bridge.api.models import Device
from bridge.spool.audit import DeliveredDevice

FINDINGS = ("unknown", "silent", "offline_delivering", "online_not_delivered")


@dataclass(frozen=True, slots=True)
class RegistryReport:
    """What ``devices`` found; each list sorted by device id."""

    registered: int
    delivered: int
    evicted: int
    findings: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # device id → registry label

    def counts(self) -> dict[str, int]:
        return {name: len(self.findings.get(name, [])) for name in FINDINGS}

    def as_json(self) -> dict[str, object]:
        return {
            "registered": self.registered,
            "delivered": self.delivered,
            "evicted_from_table": self.evicted,
            "counts": self.counts(),
            "devices": {name: self.findings.get(name, []) for name in FINDINGS},
        }


def reconcile(
    registry: Iterable[Device],
    delivered: Iterable[DeliveredDevice],
    now: datetime,
    silent_for_s: float,
    evicted: int = 0,
) -> RegistryReport:
    """The four findings of the module docstring at ``now``."""
    now_us = int(now.timestamp() * 1_000_000)
    recent_us = now_us - int(silent_for_s * 1_000_000)
    listed = {d.device_id: d for d in registry}
    ours = {d.device_id: d for d in delivered}
    found: dict[str, list[str]] = {name: [] for name in FINDINGS}
    for device_id in sorted(set(ours) - set(listed)):
        found["unknown"].append(device_id)
    for device_id, device in sorted(listed.items()):
        seen = device.last_seen
        if seen is None or int(seen.timestamp() * 1_000_000) < recent_us:
            found["silent"].append(device_id)
        mine = ours.get(device_id)
        lately = mine is not None and mine.last_us >= recent_us
        if device.status in ("offline", "inactive") and lately:
            found["offline_delivering"].append(device_id)
        if device.status == "online" and not lately:
            found["online_not_delivered"].append(device_id)
    labels = {d: listed[d].label or "" for d in listed}
    return RegistryReport(len(listed), len(ours), evicted, found, labels)
