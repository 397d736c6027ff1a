"""The mapping file as written: pydantic models of ``topic-mappings.yaml`` (structure only;
:mod:`bridge.mapping.loader` checks meaning and compiles). The JSON Schema is generated from
these classes, so their docstrings and field constraints are what editors show."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.mapping.number_spec import NumberFormatSpec
from bridge.mapping.timestamps import TimestampFormat

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class LinearSpec(_Strict):
    """A linear map between two points of a datasheet: ``{from: [4, 20], to: [0, 10]}``."""

    from_: list[float] = Field(alias="from", min_length=2, max_length=2)
    to: list[float] = Field(min_length=2, max_length=2)


class TransformSpec(_Strict):
    """Value transforms: for a plain payload (``transform:``) or one JSON metric."""

    scale: float | None = None
    offset: float | None = None
    linear: LinearSpec | None = None
    expr: str | None = Field(None, min_length=1)
    round: int | None = Field(None, ge=0, le=12)
    range: list[float] | None = Field(None, min_length=2, max_length=2)
    out_of_range: Literal["reject", "clamp"] = "reject"
    map: dict[str, float] | None = None


class DeadbandSpec(_Strict):
    """Send a value only when it moved, and at least every ``heartbeat_s`` anyway: one of
    ``{absolute: 0.5}`` (moved by more than 0.5 from the last sent value), ``{relative: 0.02}``
    (by more than 2 % of it) or ``{on_change: true}`` (changed at all)."""

    absolute: float | None = Field(None, gt=0)
    relative: float | None = Field(None, gt=0)
    on_change: bool | None = None
    heartbeat_s: float = Field(3600, gt=0, le=604800)


class MetricSpec(TransformSpec):
    """A JSON metric with transforms: ``{path: p, scale: 0.001, range: [0, 16]}``."""

    path: str = Field(min_length=1)
    number_format: NumberFormatSpec | None = None
    deadband: DeadbandSpec | None = None


class CollectSpec(TransformSpec):
    """Every numeric field under ``path``: ``{path: sensors, include: ['temp*'], prefix: env_}``."""

    path: str = ""
    include: list[str] | None = None
    exclude: list[str] | None = None
    rename: dict[str, str] | None = None
    prefix: str = ""
    separator: str = Field(".", min_length=1, max_length=3)


class ReadingsSpec(TransformSpec):
    """A list of readings, each element with its own name, value and time; ``device`` and
    ``metric`` are templates over the reading's own fields (``{$id|segment:.:-1}``)."""

    path: str = ""
    name: str | None = Field(None, min_length=1)
    metric: str | None = Field(None, min_length=1)
    device: str | None = Field(None, min_length=1)
    value: str = Field(min_length=1)
    time: str | None = Field(None, min_length=1)
    time_format: TimestampFormat = "auto"
    timezone: str | None = None
    pattern: str | None = Field(None, min_length=1)
    where: dict[str, str | bool | int | float] | None = None
    rename: dict[str, str] | None = None
    prefix: str = ""


class EachSpec(_Strict):
    """``each`` with conditions: ``{path: devices, where: {online: true}}``."""

    path: str = Field(min_length=1)
    where: dict[str, str | bool | int | float] | None = None


class TimestampSpec(_Strict):
    """Where a rule finds the measurement time."""

    field: str | None = Field(None, min_length=1)
    capture: str | None = Field(None, min_length=1)
    format: TimestampFormat = "auto"
    pattern: str | None = Field(None, min_length=1)
    timezone: str | None = None
    max_future_s: float | None = Field(None, ge=0)
    max_past_s: float | None = Field(None, ge=0)
    on_invalid: Literal["reject", "receive_time"] = "reject"


class CoalesceSpec(_Strict):
    """Fold each metric's points into one per window: ``{window_s: 60, function: avg}``."""

    window_s: float = Field(gt=0, le=86400)
    function: Literal["last", "avg", "min", "max", "sum", "count"] = "last"


class SparkplugSpec(_Strict):
    """Options of a ``payload: sparkplug`` rule: ``{separator: _, exclude: ['Debug/*']}``.
    Metric names are the Sparkplug names with their folder ``/`` replaced by ``separator``;
    ``include``/``exclude`` are globs over the Sparkplug names (default exclude: ``bdSeq`` and
    ``Node Control/*``); ``rename`` maps a Sparkplug name to a metric name; ``map`` turns the
    texts of String metrics into numbers; ``node_device_id`` is the device id template of an
    edge node's own metrics (NBIRTH, NDATA), default ``{group}-{node}``; ``online_metric``
    names a metric sent as 1 at each BIRTH and 0 at each DEATH of a device or node."""

    node_device_id: str | None = Field(None, min_length=1)
    separator: str = Field(".", min_length=1, max_length=3)
    include: list[str] | None = None
    exclude: list[str] | None = None
    rename: dict[str, str] | None = None
    map: dict[str, float] | None = None
    online_metric: str | None = Field(None, min_length=1)


class RuleSpec(_Strict):
    """One mapping rule as written in the file."""

    name: str = Field(pattern=_NAME)
    topic: str = Field(min_length=1)
    device_id: str | None = Field(None, min_length=1)
    payload: Literal["json", "number", "boolean", "text", "sparkplug"] = "json"
    metrics: dict[str, str | MetricSpec] | None = None
    collect: CollectSpec | None = None
    readings: ReadingsSpec | None = None
    sparkplug: SparkplugSpec | None = None
    each: Annotated[str, Field(min_length=1)] | EachSpec | None = None
    coalesce: CoalesceSpec | None = None
    deadband: DeadbandSpec | None = None
    metric: str | None = None
    transform: TransformSpec | None = None
    number_format: NumberFormatSpec | None = None
    timestamp: TimestampSpec | None = None
    on_error: Literal["drop_metric", "reject_message"] = "drop_metric"
    ignore: bool = False
    continue_: bool = Field(False, alias="continue")


class ExpectedPoints(_Strict):
    """The points one message should become: one object as the API receives it."""

    device_id: str = Field(min_length=1)
    timestamp: str | None = None  # ISO 8601; leave out for receive-time points
    metrics: dict[str, float] = Field(min_length=1)


class MappingTest(_Strict):
    """A message and what the rules must make of it (``metriqo-bridge test``)."""

    name: str | None = None
    topic: str = Field(min_length=1)
    payload: str | None = None
    payload_json: object = None
    payload_hex: str | None = None  # binary payloads (Sparkplug B) as hex digits
    received_at: str | None = None  # ISO 8601 receive time; default: when the test runs
    expect: list[ExpectedPoints] | None = None
    expect_failures: list[str] | None = None  # reasons, in order
    expect_ignored: bool = False


class AlertSpec(_Strict):
    """An alert rule that ``metriqo-bridge alerts apply`` creates in Metriqo (``POST /alerts``):
    ``{name: Hot line, device: line-1, metric: temp, condition: gt, threshold: 80, notify:
    https://ops.example.com/hooks/thermal}``. ``device`` is one device id, ``*`` (every device)
    or a list of device ids (one alert each, named ``NAME (DEVICE)``)."""

    name: str = Field(min_length=1, max_length=200)
    device: str | list[str] = Field(min_length=1)
    metric: str = Field(min_length=1)
    condition: Literal["gt", "lt", "gte", "lte", ">", "<", ">=", "<="]
    threshold: float
    notify: str = Field(min_length=1, description="webhook URL (https, or http to loopback)")


class MappingFile(_Strict):
    """The whole ``topic-mappings.yaml``."""

    version: Literal[1]
    rules: list[RuleSpec] = Field(min_length=1)
    tests: list[MappingTest] | None = None
    alerts: list[AlertSpec] | None = None
