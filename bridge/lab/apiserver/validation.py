"""Request parsing for the local Metriqo-compatible API server (`bridge.lab.apiserver.server`).

Pure functions over bytes, parsed JSON and query pairs: no aiohttp and no clock, so every rule
here can be read (and tested) without a socket. A rejected request raises `RequestError`, whose
`code` and `message` go into the JSON error body unchanged; messages name the offending array
index and field (``body[3].metrics["temp"]``) and never echo a header.
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias
from urllib.parse import urlsplit

import orjson

from bridge.limits import MAX_IDENTIFIER_CHARS, MAX_PER_PAGE, MAX_POINTS_PER_REQUEST
from bridge.mapping.identifiers import identifier_problem

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
"""A document as `orjson.loads` returns it."""

DEFAULT_PER_PAGE = 25
DEVICE_STATUSES = frozenset({"online", "offline", "inactive"})
INTERVALS: dict[str, int] = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
"""Aggregation intervals of GET /metrics, in seconds."""

_TELEMETRY_FIELDS = frozenset({"device_id", "timestamp", "metrics"})
_ALERT_FIELDS = frozenset({"name", "device_id", "metric", "condition", "threshold", "notify"})
ALERT_CONDITIONS = frozenset({"gt", "lt", "gte", "lte"})
MAX_ALERT_NAME_CHARS = 256
MAX_URL_CHARS = 2048
_FRACTION = re.compile(r"\d\d:?\d\d:?\d\d[.,](\d+)")
# A small positive integer without sign, spaces or leading zeros: int() alone accepts " +1".
_POSITIVE_INT = re.compile(r"[1-9][0-9]{0,8}")


class RequestError(Exception):
    """A request the server rejects; maps one-to-one onto an error response.

    This is the fake server's own signal, not part of the bridge's `errors.py` hierarchy: it
    never crosses into bridge code, which only sees the HTTP response.

    Attributes:
        code: Machine-readable error code, e.g. ``bad_request``.
        message: Human-readable explanation naming the offending field.
        status: HTTP status to answer with.
    """

    def __init__(self, message: str, *, code: str = "bad_request", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class ParsedTimestamp:
    """An ISO 8601 instant and how many fractional-second digits it was written with.

    Attributes:
        value: The instant, converted to UTC.
        fraction_digits: Digits after the seconds (0-6); the raw metrics query echoes them.
    """

    value: datetime
    fraction_digits: int


@dataclass(frozen=True, slots=True)
class TelemetryItem:
    """One validated object of a telemetry body.

    Attributes:
        device_id: Non-empty device identifier.
        timestamp: The measurement time, or None when the payload left it to the server.
        metrics: (name, value) pairs in payload order; never empty.
    """

    device_id: str
    timestamp: ParsedTimestamp | None
    metrics: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class DevicesQuery:
    """Validated parameters of GET /devices."""

    page: int
    per_page: int
    status: str | None


@dataclass(frozen=True, slots=True)
class MetricsQuery:
    """Validated parameters of GET /metrics; `interval` is in seconds, None for raw points."""

    device_id: str
    metric: str
    start: datetime
    end: datetime
    interval_name: str | None
    interval: int | None


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """A validated body of ``POST /alerts``; ``device_id`` may be ``*`` (all devices)."""

    name: str
    device_id: str
    metric: str
    condition: str
    threshold: float
    url: str


def check_bearer(header: str | None, token: str) -> None:
    """Checks an Authorization header against the one valid Bearer token.

    Raises:
        RequestError: ``unauthorized`` (401) with the contract's message, which never echoes
            what was presented.
    """
    scheme, _, credentials = (header or "").partition(" ")
    # The scheme is case-insensitive (RFC 7235); compare_digest keeps the check constant-time.
    presented = f"{scheme.lower()} {credentials}".encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(presented, f"bearer {token}".encode()):
        raise RequestError("Invalid or expired API token.", code="unauthorized", status=401)


def decode_json(raw: bytes) -> JsonValue:
    """Parses a request body as strict JSON (no NaN/Infinity, no overflowing numbers).

    Raises:
        RequestError: The body is empty or not valid JSON.
    """
    try:
        value: JsonValue = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"body is not valid JSON: {exc}") from exc
    return value


def validate_telemetry(doc: JsonValue) -> list[TelemetryItem]:
    """Validates a telemetry body: one object, or a non-empty array of objects.

    Raises:
        RequestError: ``bad_request`` naming the first wrong field, or ``too_many_points``
            when the metric values add up to more than `MAX_POINTS_PER_REQUEST`.
    """
    if isinstance(doc, dict):
        items = [_telemetry_item(doc, "body")]
    elif isinstance(doc, list):
        if not doc:
            raise RequestError("body: array must contain at least one object")
        items = [_telemetry_item(obj, f"body[{i}]") for i, obj in enumerate(doc)]
    else:
        raise RequestError(f"body: must be an object or an array, got {_json_type(doc)}")
    total = sum(len(item.metrics) for item in items)
    if total > MAX_POINTS_PER_REQUEST:
        raise RequestError(
            f"body: {total} data points (one per metric value) exceed the limit of "
            f"{MAX_POINTS_PER_REQUEST} per request",
            code="too_many_points",
        )
    return items


def _telemetry_item(obj: JsonValue, where: str) -> TelemetryItem:
    if not isinstance(obj, dict):
        raise RequestError(f"{where}: must be an object, got {_json_type(obj)}")
    # Unknown fields are rejected: a misspelt "timestamp" would otherwise be silently
    # replaced by server time, which is exactly the bug this server exists to expose.
    unknown = sorted(set(obj) - _TELEMETRY_FIELDS)
    if unknown:
        raise RequestError(f"{where}: unknown field {_quote(unknown[0])}")
    device_id = obj.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        problem = "is missing" if "device_id" not in obj else _not_a("non-empty string", device_id)
        raise RequestError(f"{where}.device_id: {problem}")
    # The contract states no limit; this is the bridge's reading of it (bridge/limits.py).
    bad = identifier_problem(device_id, "device id", MAX_IDENTIFIER_CHARS)
    if bad is not None:
        raise RequestError(f"{where}.device_id: {bad}")
    timestamp: ParsedTimestamp | None = None
    if "timestamp" in obj:
        raw_ts = obj["timestamp"]
        if not isinstance(raw_ts, str):
            raise RequestError(f"{where}.timestamp: {_not_a('string', raw_ts)}")
        timestamp = parse_timestamp(raw_ts, f"{where}.timestamp")
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict):
        problem = "is missing" if "metrics" not in obj else _not_a("object", metrics)
        raise RequestError(f"{where}.metrics: {problem}")
    if not metrics:
        raise RequestError(f"{where}.metrics: must contain at least one metric")
    pairs: list[tuple[str, float]] = []
    for name, value in metrics.items():
        field = f"{where}.metrics[{_quote(name)}]"
        if not name:
            raise RequestError(f"{field}: metric name must be non-empty")
        bad = identifier_problem(name, "metric name", MAX_IDENTIFIER_CHARS)
        if bad is not None:
            raise RequestError(f"{where}.metrics: {bad}")
        # bool is a subclass of int in Python, but JSON true/false are not numbers.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(f"{field}: {_not_a('number', value)}")
        number = float(value)
        if not math.isfinite(number):
            raise RequestError(f"{field}: must be a finite number")
        pairs.append((name, number))
    return TelemetryItem(device_id, timestamp, tuple(pairs))


def validate_alert(doc: JsonValue) -> AlertSpec:
    """Validates a ``POST /alerts`` body: every documented field, no other.

    Raises:
        RequestError: ``bad_request`` naming the first wrong field.
    """
    if not isinstance(doc, dict):
        raise RequestError(f"body: must be an object, got {_json_type(doc)}")
    unknown = sorted(set(doc) - _ALERT_FIELDS)
    if unknown:
        raise RequestError(f"body: unknown field {_quote(unknown[0])}")
    for key in sorted(_ALERT_FIELDS):
        if key not in doc:
            raise RequestError(f"body.{key}: is missing")
    name = doc["name"]
    if not isinstance(name, str) or not name.strip():
        raise RequestError(f"body.name: {_not_a('non-empty string', name)}")
    if len(name) > MAX_ALERT_NAME_CHARS or not name.isprintable():
        raise RequestError(f"body.name: at most {MAX_ALERT_NAME_CHARS} printable characters")
    device_id, metric = doc["device_id"], doc["metric"]
    if not isinstance(device_id, str) or not device_id:
        raise RequestError(f"body.device_id: {_not_a('non-empty string', device_id)}")
    if device_id != "*":
        bad = identifier_problem(device_id, "device id", MAX_IDENTIFIER_CHARS)
        if bad is not None:
            raise RequestError(f"body.device_id: {bad}")
    if not isinstance(metric, str) or not metric:
        raise RequestError(f"body.metric: {_not_a('non-empty string', metric)}")
    bad = identifier_problem(metric, "metric name", MAX_IDENTIFIER_CHARS)
    if bad is not None:
        raise RequestError(f"body.metric: {bad}")
    condition = doc["condition"]
    if not isinstance(condition, str) or condition not in ALERT_CONDITIONS:
        shown = _quote(condition) if isinstance(condition, str) else _json_type(condition)
        raise RequestError(f"body.condition: must be one of gt, gte, lt, lte, got {shown}")
    threshold = doc["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise RequestError(f"body.threshold: {_not_a('number', threshold)}")
    if not math.isfinite(float(threshold)):
        raise RequestError("body.threshold: must be a finite number")
    return AlertSpec(name, device_id, metric, condition, float(threshold), _webhook(doc["notify"]))


def _webhook(notify: JsonValue) -> str:
    if not isinstance(notify, dict):
        raise RequestError(f"body.notify: {_not_a('object', notify)}")
    unknown = sorted(set(notify) - {"type", "url"})
    if unknown:
        raise RequestError(f"body.notify: unknown field {_quote(unknown[0])}")
    kind = notify.get("type")
    if kind != "webhook":
        shown = _quote(kind) if isinstance(kind, str) else _json_type(kind)
        raise RequestError(f'body.notify.type: must be "webhook", got {shown}')
    url = notify.get("url")
    if not isinstance(url, str) or not url:
        raise RequestError(f"body.notify.url: {_not_a('non-empty string', url)}")
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a malformed port or IPv6 literal
        usable = False
    if len(url) > MAX_URL_CHARS or not url.isprintable() or " " in url or not usable:
        raise RequestError(
            f"body.notify.url: must be an http(s) URL with a host, got {_quote(url)}"
        )
    return url


def parse_timestamp(text: str, where: str) -> ParsedTimestamp:
    """Parses an ISO 8601 date-time that carries a UTC offset (``Z`` or ``±HH:MM``).

    A time without an offset is rejected rather than guessed: reading it as UTC or as local
    time would each be wrong for some client.

    Args:
        text: The timestamp as sent.
        where: Field path for the error message.

    Raises:
        RequestError: The text is not an ISO 8601 date-time with an offset.
    """
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        hint = " (was a '+' in a query string left un-encoded?)" if " " in text else ""
        raise RequestError(f"{where}: {_quote(text)} is not an ISO 8601 date-time{hint}") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise RequestError(f"{where}: {_quote(text)} has no UTC offset (add 'Z' or '+00:00')")
    try:
        value = parsed.astimezone(UTC)
    except OverflowError as exc:
        raise RequestError(f"{where}: {_quote(text)} is out of range") from exc
    match = _FRACTION.search(text)
    digits = min(len(match.group(1)), 6) if match else 0
    return ParsedTimestamp(value, digits)


def format_timestamp(value: datetime, fraction_digits: int = 0) -> str:
    """Formats a UTC-aware instant as ``YYYY-MM-DDTHH:MM:SS[.fff]Z``.

    Args:
        value: A timezone-aware datetime.
        fraction_digits: Fractional-second digits to keep (0-6), truncated, not rounded.
    """
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction_digits > 0:
        text += "." + f"{utc.microsecond:06d}"[: min(fraction_digits, 6)]
    return text + "Z"


def parse_devices_query(pairs: Sequence[tuple[str, str]]) -> DevicesQuery:
    """Validates ``page``, ``per_page`` and ``status`` of GET /devices.

    Raises:
        RequestError: An unknown or repeated parameter, or a value out of range.
    """
    params = _single_params(pairs, allowed={"page", "per_page", "status"})
    page = _positive_int(params, "page", default=1)
    per_page = _positive_int(params, "per_page", default=DEFAULT_PER_PAGE)
    if per_page > MAX_PER_PAGE:
        raise RequestError(f"query.per_page: must be at most {MAX_PER_PAGE}, got {per_page}")
    status = params.get("status")
    if status is not None and status not in DEVICE_STATUSES:
        allowed = ", ".join(sorted(DEVICE_STATUSES))
        raise RequestError(f"query.status: must be one of {allowed}, got {_quote(status)}")
    return DevicesQuery(page, per_page, status)


def parse_metrics_query(pairs: Sequence[tuple[str, str]]) -> MetricsQuery:
    """Validates ``device_id``, ``metric``, ``from``, ``to`` and ``interval`` of GET /metrics.

    Raises:
        RequestError: A missing, unknown or repeated parameter, a bad date-time, ``from``
            after ``to``, or an interval other than 1m, 5m, 1h, 1d.
    """
    params = _single_params(pairs, allowed={"device_id", "metric", "from", "to", "interval"})
    for name in ("device_id", "metric", "from", "to"):
        if not params.get(name):
            raise RequestError(f"query.{name}: is required")
    start = parse_timestamp(params["from"], "query.from").value
    end = parse_timestamp(params["to"], "query.to").value
    if start > end:
        raise RequestError("query.from: must not be after query.to")
    interval_name = params.get("interval")
    interval: int | None = None
    if interval_name is not None:
        if interval_name not in INTERVALS:
            raise RequestError(
                f"query.interval: must be one of 1m, 5m, 1h, 1d, got {_quote(interval_name)}"
            )
        interval = INTERVALS[interval_name]
    return MetricsQuery(params["device_id"], params["metric"], start, end, interval_name, interval)


def _single_params(pairs: Sequence[tuple[str, str]], allowed: set[str]) -> dict[str, str]:
    # Strict on purpose: a misspelt or repeated parameter is a client bug worth failing on.
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise RequestError(f"query: unknown parameter {_quote(name)}")
        if name in params:
            raise RequestError(f"query.{name}: given more than once")
        params[name] = value
    return params


def _positive_int(params: dict[str, str], name: str, default: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not _POSITIVE_INT.fullmatch(text):
        raise RequestError(f"query.{name}: must be a positive integer, got {_quote(text)}")
    return int(text)


def _not_a(expected: str, value: JsonValue) -> str:
    return f"must be a {expected}, got {_json_type(value)}"


def _json_type(value: JsonValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string" if value else "empty string"
    return "array" if isinstance(value, list) else "object"


def _quote(text: str) -> str:
    # JSON quoting keeps control characters and quotes in client data from garbling messages;
    # long names are cut so one bad request cannot produce a megabyte of error text.
    shown = text if len(text) <= 64 else text[:64] + "..."
    return orjson.dumps(shown).decode()
