"""The local API's device registry: what ``GET /devices`` lists.

A device is registered the first time telemetry for it is accepted (``created_at``), or in
advance with a label (:meth:`DeviceRegistry.register`, for tests of the registry view);
``last_seen`` is the receipt time of its latest accepted point. Its status is derived from the
age of ``last_seen`` when listed (:class:`StatusThresholds`):

- ``online``: seen within ``online_within`` (default 5 min);
- ``offline``: seen within ``offline_within`` (default 24 h) but not online;
- ``inactive``: seen longer ago, or never (registered but no telemetry yet).

Metriqo does not document its thresholds; these are this server's reading, settable so a test
can age a device in seconds (``simulate-api --online-within/--offline-within``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bridge.lab.apiserver.validation import JsonValue, format_timestamp

ONLINE_WITHIN = timedelta(minutes=5)
OFFLINE_WITHIN = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class StatusThresholds:
    """When a device stops being online, and when it stops being offline (inactive)."""

    online_within: timedelta = ONLINE_WITHIN
    offline_within: timedelta = OFFLINE_WITHIN

    def __post_init__(self) -> None:
        if self.online_within < timedelta(0) or self.offline_within < self.online_within:
            raise ValueError("device status thresholds: need 0 <= online_within <= offline_within")

    def status(self, last_seen: datetime | None, now: datetime) -> str:
        if last_seen is None:
            return "inactive"
        age = now - last_seen
        if age <= self.online_within:
            return "online"
        return "offline" if age <= self.offline_within else "inactive"


@dataclass(slots=True)
class RegisteredDevice:
    """One device of the registry."""

    created_at: datetime
    last_seen: datetime | None
    label: str | None


class DeviceRegistry:
    """Devices by id, with the thresholds their status is derived with."""

    def __init__(self, thresholds: StatusThresholds | None = None) -> None:
        self.thresholds = thresholds or StatusThresholds()
        self._devices: dict[str, RegisteredDevice] = {}

    def seen(self, device_id: str, at: datetime) -> None:
        """Telemetry for ``device_id`` was accepted at ``at``: registers it, or moves its
        ``last_seen`` forward (never back: receipt times of concurrent requests interleave)."""
        device = self._devices.get(device_id)
        if device is None:
            self._devices[device_id] = RegisteredDevice(at, at, None)
        elif device.last_seen is None or at > device.last_seen:
            device.last_seen = at

    def register(
        self,
        device_id: str,
        label: str | None,
        created_at: datetime,
        last_seen: datetime | None = None,
    ) -> None:
        """Registers (or re-labels) a device as a user would in the dashboard; ``last_seen``
        None means it never sent anything (inactive)."""
        self._devices[device_id] = RegisteredDevice(created_at, last_seen, label)

    def remove(self, device_id: str) -> bool:
        """Deletes a device from the registry (its points stay); False if it was unknown."""
        return self._devices.pop(device_id, None) is not None

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def __len__(self) -> int:
        return len(self._devices)

    def rows(self, now: datetime) -> list[dict[str, JsonValue]]:
        """Every device as ``GET /devices`` lists it, sorted by device_id (a stable order, so
        pages do not overlap). A device never labelled shows its id as the label."""
        return [
            {
                "device_id": device_id,
                "label": device_id if device.label is None else device.label,
                "status": self.thresholds.status(device.last_seen, now),
                "last_seen": None
                if device.last_seen is None
                else format_timestamp(device.last_seen),
                "created_at": format_timestamp(device.created_at),
            }
            for device_id, device in sorted(self._devices.items())
        ]
