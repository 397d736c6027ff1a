"""Typed results of the Metriqo API's other endpoints, and their parsing from the documented JSON.

Pure: a body that is not what the contract (API v2) documents raises :class:`ValueError` with the
path of the first wrong field; the client turns that into :class:`bridge.errors.ApiBadResponse`.
Timestamps are parsed to aware UTC datetimes; a field the contract marks optional may be None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Condition = Literal["gt", "lt", "gte", "lte"]
CONDITIONS: tuple[Condition, ...] = ("gt", "lt", "gte", "lte")
DeviceStatus = Literal["online", "offline", "inactive"]
DEVICE_STATUSES: tuple[DeviceStatus, ...] = ("online", "offline", "inactive")
Interval = Literal["1m", "5m", "1h", "1d"]
INTERVALS: tuple[Interval, ...] = ("1m", "5m", "1h", "1d")


@dataclass(frozen=True, slots=True)
class Device:
    """One device of ``GET /devices``."""

    device_id: str
    label: str | None
    status: str  # online, offline, inactive (kept as sent: a new status must not break a listing)
    last_seen: datetime | None
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One page of ``GET /devices`` and its ``pagination``."""

    devices: tuple[Device, ...]
    page: int
    per_page: int
    total: int

    @property
    def is_last(self) -> bool:
        """No page after this one (also true for an empty page, so paging always ends)."""
        return not self.devices or self.page * self.per_page >= self.total


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One bucket of ``GET /metrics``: its start ``t`` and the avg/min/max of its points."""

    t: datetime
    avg: float
    min: float
    max: float


@dataclass(frozen=True, slots=True)
class MetricSeries:
    """``GET /metrics`` for one device and metric, ascending by ``t``."""

    device_id: str
    metric: str
    interval: str | None
    data: tuple[Aggregate, ...]


@dataclass(frozen=True, slots=True)
class AlertRule:
    """The body of ``POST /alerts``: a threshold rule and its webhook."""

    name: str
    device_id: str  # or "*" for all devices
    metric: str
    condition: Condition
    threshold: float
    webhook_url: str

    def body(self) -> dict[str, object]:
        """The JSON object the contract documents."""
        return {
            "name": self.name,
            "device_id": self.device_id,
            "metric": self.metric,
            "condition": self.condition,
            "threshold": self.threshold,
            "notify": {"type": "webhook", "url": self.webhook_url},
        }


@dataclass(frozen=True, slots=True)
class AlertCreated:
    """A ``201`` of ``POST /alerts``."""

    id: str
    name: str
    status: str
    created_at: datetime | None


def parse_device_page(doc: Any) -> DevicePage:
    """``{"data": [...], "pagination": {page, per_page, total}}`` as a :class:`DevicePage`."""
    body = _object(doc, "body")
    rows = body.get("data")
    if not isinstance(rows, list):
        raise ValueError("body.data: must be an array")
    pagination = _object(body.get("pagination"), "body.pagination")
    devices = tuple(_device(row, f"body.data[{i}]") for i, row in enumerate(rows))
    return DevicePage(
        devices,
        _count(pagination, "page", "body.pagination"),
        _count(pagination, "per_page", "body.pagination"),
        _count(pagination, "total", "body.pagination"),
    )


def parse_series(doc: Any) -> MetricSeries:
    """``{"device_id", "metric", "interval", "data": [{t, avg, min, max}]}``."""
    body = _object(doc, "body")
    rows = body.get("data")
    if not isinstance(rows, list):
        raise ValueError("body.data: must be an array")
    interval = body.get("interval")
    return MetricSeries(
        _text(body, "device_id", "body"),
        _text(body, "metric", "body"),
        interval if isinstance(interval, str) else None,
        tuple(_aggregate(row, f"body.data[{i}]") for i, row in enumerate(rows)),
    )


def parse_alert_created(doc: Any) -> AlertCreated:
    """``{"id", "name", "status", "created_at"}`` of a ``201``."""
    body = _object(doc, "body")
    return AlertCreated(
        _text(body, "id", "body"),
        _text(body, "name", "body"),
        _text(body, "status", "body"),
        _optional_time(body, "created_at", "body"),
    )


def parse_time(text: str) -> datetime:
    """An ISO 8601 instant with an offset (``Z`` included), as aware UTC."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` for a query parameter (an aware datetime)."""
    if value.tzinfo is None:
        raise ValueError("a naive datetime has no place in an API query")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _device(doc: Any, where: str) -> Device:
    row = _object(doc, where)
    label = row.get("label")
    return Device(
        _text(row, "device_id", where),
        label if isinstance(label, str) else None,
        _text(row, "status", where),
        _optional_time(row, "last_seen", where),
        _optional_time(row, "created_at", where),
    )


def _aggregate(doc: Any, where: str) -> Aggregate:
    row = _object(doc, where)
    t = _text(row, "t", where)
    try:
        when = parse_time(t)
    except ValueError:
        raise ValueError(f"{where}.t: not an ISO 8601 instant with an offset") from None
    return Aggregate(when, *(_number(row, key, where) for key in ("avg", "min", "max")))


def _object(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: must be an object")
    return doc


def _text(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: must be a string")
    return value


def _count(doc: dict[str, Any], key: str, where: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}.{key}: must be a non-negative integer")
    return value


def _number(doc: dict[str, Any], key: str, where: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}.{key}: must be a finite number")
    return float(value)


def _optional_time(doc: dict[str, Any], key: str, where: str) -> datetime | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: must be a string")
    try:
        return parse_time(value)
    except ValueError:
        raise ValueError(f"{where}.{key}: not an ISO 8601 instant with an offset") from None
