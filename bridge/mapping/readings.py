"""JSON forms that yield many metrics: "every numeric field under a path" (collect) and lists of
readings, each element carrying its own name, value and time (readings). Pure code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, NamedTuple

from bridge.errors import PayloadError
from bridge.limits import MAX_POINTS_PER_REQUEST
from bridge.mapping.transforms import IDENTITY, Transform
from bridge.models import Coalesce, Deadbands, Record

if TYPE_CHECKING:  # templates imports this module; the rules here only need the type
    from bridge.mapping.templates import Template

MISSING: object = object()  # what get_path returns for an absent path


def split_path(text: str) -> tuple[str, ...]:
    """Split a field path on dots. A key containing dots is quoted or escaped:
    ``meta."fw.version"``, ``meta.'fw.version'`` or ``meta.fw\\.version``.

    Raises:
        ValueError: for an unterminated quote or an empty segment.
    """
    segments: list[str] = []
    buf: list[str] = []
    quote: str | None = None
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == quote:
                quote = None
            else:
                buf.append(ch)
        elif ch == "\\" and i + 1 < len(text):
            i += 1
            buf.append(text[i])
        elif ch in "\"'" and not buf:
            quote, quoted = ch, True
        elif ch == ".":
            if not buf and not quoted:
                raise ValueError(f"field path {text!r} has an empty segment")
            segments.append("".join(buf))
            buf, quoted = [], False
        else:
            buf.append(ch)
        i += 1
    if quote is not None:
        raise ValueError(f"field path {text!r} has an unterminated quote")
    if not buf and not quoted:
        raise ValueError(f"field path {text!r} has an empty segment")
    segments.append("".join(buf))
    return tuple(segments)


def get_path(doc: object, segments: tuple[str, ...]) -> object:
    """Value at a dotted path (numeric segments index lists), or the module's missing marker."""
    cur = doc
    for seg in segments:
        if isinstance(cur, dict):
            cur = cur.get(seg, MISSING)
            if cur is MISSING:
                return MISSING
        elif isinstance(cur, list) and seg.isascii() and seg.isdigit() and int(seg) < len(cur):
            cur = cur[int(seg)]
        else:
            return MISSING
    return cur


def is_missing(value: object) -> bool:
    """True for the marker :func:`get_path` returns for an absent path."""
    return value is MISSING


@dataclass(frozen=True, slots=True)
class CollectRule:
    """Every numeric field under ``path``, named by its path below it: the keys joined by
    ``separator``, after the rule's ``prefix`` (a template over the topic's captures)."""

    path: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    transform: Transform = IDENTITY
    separator: str = "."
    prefix_template: Template | None = None  # set when the prefix uses captures

    def collect(
        self, doc: object, failures: list[PayloadError], captures: dict[str, str] | None = None
    ) -> dict[str, float]:
        """Metric name → value; strings, booleans and nulls are not numeric and are skipped."""
        base = get_path(doc, self.path)
        if is_missing(base):
            failures.append(PayloadError("missing_field", f"no field {'.'.join(self.path)!r}"))
            return {}
        prefix = self.prefix
        if self.prefix_template is not None:
            prefix = self.prefix_template.render(captures or {})
        out: dict[str, float] = {}
        for keys, value in _numeric_leaves(base):
            # Globs and rename always see the dotted path: they are field paths, whatever
            # the separator of the metric names.
            leaf = ".".join(keys)
            if self.include and not any(fnmatchcase(leaf, g) for g in self.include):
                continue
            if any(fnmatchcase(leaf, g) for g in self.exclude):
                continue
            # A number at the collect path itself is named after the path.
            name = leaf or (self.path[-1] if self.path else "")
            if not name and not prefix:
                failures.append(PayloadError("bad_metric_name", "collected value has no name"))
                continue
            renamed = self.rename.get(name)
            if renamed is None:
                renamed = self.separator.join(keys) if keys else name
            metric = prefix + renamed
            try:
                out[metric] = self.transform.apply(metric, value)
            except PayloadError as exc:
                failures.append(exc)
        return out


def _numeric_leaves(node: object) -> list[tuple[tuple[str, ...], float]]:
    found: list[tuple[tuple[str, ...], float]] = []
    stack: list[tuple[object, tuple[str, ...]]] = [(node, ())]
    while stack:  # iterative: payload nesting depth must not reach the recursion limit
        cur, keys = stack.pop()
        if isinstance(cur, dict):
            stack.extend((v, (*keys, str(k))) for k, v in reversed(cur.items()))
        elif isinstance(cur, list):
            stack.extend((v, (*keys, str(i))) for i, v in reversed(list(enumerate(cur))))
        elif isinstance(cur, int | float) and not isinstance(cur, bool):
            found.append((keys, cur))
    return found


def _same(got: object, want: object) -> bool:
    # True == 1 in Python; a quality flag `q: true` must not match a reading with q = 1.
    return isinstance(got, bool) == isinstance(want, bool) and got == want


Where = tuple[tuple[tuple[str, ...], object], ...]


def matches(element: object, where: Where) -> bool:
    """True if every ``where`` condition holds: the field equals the value (booleans strictly:
    ``true`` is not ``1``)."""
    return all(_same(get_path(element, p), want) for p, want in where)


class Reading(NamedTuple):
    """One kept element of a readings list: its position in the list, its device (None: the
    rule's), metric name, value and time (epoch µs; None: the message's)."""

    position: int
    device: str | None
    name: str
    value: float
    ts: int | None


@dataclass(frozen=True, slots=True)
class ReadingsRule:
    """A list of readings at ``path`` (empty: the payload itself is the list).

    The metric name is the element's ``name`` field, or the ``metric`` template rendered over
    the element (``{$id|segment:.:-1}``); ``device``, when set, names each reading's device the
    same way, so that one message may carry several devices.
    """

    path: tuple[str, ...]
    name: tuple[str, ...]
    value: tuple[str, ...]
    time: tuple[str, ...] | None = None
    where: Where = ()
    rename: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    transform: Transform = IDENTITY
    metric: Template | None = None
    device: Template | None = None

    def extract(
        self,
        doc: object,
        parse_time: Callable[[object], int],
        failures: list[PayloadError],
        captures: dict[str, str] | None = None,
    ) -> tuple[list[Reading], int]:
        """The kept elements as readings, and how many the ``where`` conditions left out.

        A reading that cannot be used (no name, no value, a device or name template that
        finds nothing) is a failure naming its index; the others are still kept.
        """
        items = get_path(doc, self.path)
        if not isinstance(items, list):
            where = ".".join(self.path) or "the payload"
            failures.append(PayloadError("not_a_list", f"{where} is not a list of readings"))
            return [], 0
        out: list[Reading] = []
        skipped = 0
        for i, element in enumerate(items):
            if not matches(element, self.where):
                skipped += 1
                continue
            try:
                out.append(self._reading(i, element, parse_time, captures or {}))
            except PayloadError as exc:
                failures.append(exc)
        return out, skipped

    def _reading(
        self, i: int, element: object, parse_time: Callable[[object], int], captures: dict[str, str]
    ) -> Reading:
        if self.metric is None:
            raw_name = get_path(element, self.name)
            if not isinstance(raw_name, str | int) or isinstance(raw_name, bool) or raw_name == "":
                raise PayloadError("missing_field", f"reading {i}: no usable name")
            raw = str(raw_name)
        else:
            raw = _rendered(self.metric, i, element, captures, "bad_metric_name")
        name = self.prefix + self.rename.get(raw, raw)
        device = None
        if self.device is not None:
            device = _rendered(self.device, i, element, captures, "bad_device_id")
        raw_value = get_path(element, self.value)
        if is_missing(raw_value):
            raise PayloadError("missing_field", f"reading {i} ({name}): no value")
        value = self.transform.apply(name, raw_value)
        ts = None
        if self.time is not None:
            raw_time = get_path(element, self.time)
            if is_missing(raw_time):
                raise PayloadError("missing_timestamp", f"reading {i} ({name}): no time")
            ts = parse_time(raw_time)
        return Reading(i, device, name, value, ts)


def _rendered(
    template: Template, i: int, element: object, captures: dict[str, str], empty: str
) -> str:
    """``template`` over one reading (``{$field}`` reads the element, ``{capture}`` the
    topic); a miss or an empty result fails that reading only, naming its index."""
    try:
        text = template.render(captures, element)
    except PayloadError as exc:
        raise PayloadError(exc.reason, f"reading {i}: {exc.detail}") from None
    if not text:
        raise PayloadError(empty, f"reading {i}: {template.text!r} rendered empty")
    return text


def group_readings(
    readings: list[Reading],
    device_id: str,
    ts_us: int,
    metrics: dict[str, float],
    failures: list[PayloadError],
) -> dict[tuple[str, int], dict[str, float]]:
    """Points grouped by (device, time): one API object each. ``metrics`` and readings without
    their own device or time take the rule's ``device_id`` and the message's ``ts_us``. The
    first of two readings of the same metric, device and time wins; the other is reported."""
    groups: dict[tuple[str, int], dict[str, float]] = (
        {(device_id, ts_us): dict(metrics)} if metrics else {}
    )
    for r in readings:
        key = (device_id if r.device is None else r.device, ts_us if r.ts is None else r.ts)
        group = groups.setdefault(key, {})
        if r.name in group:
            failures.append(
                PayloadError(
                    "duplicate_reading", f"reading {r.position} ({r.name}): twice at one time"
                )
            )
            continue
        group[r.name] = r.value
    return groups


def grouped_records(
    groups: dict[tuple[str, int], dict[str, float]],
    received_us: int,
    coalesce: Coalesce | None,
    deadband: Deadbands | None,
) -> list[Record]:
    """One record per (device, time) group, split where it holds more points than one request
    may carry. A group of at most that many is the record's metrics as it is, not a copy."""
    records = []
    for (device, ts_us), values in groups.items():
        if len(values) <= MAX_POINTS_PER_REQUEST:
            records.append(Record(device, ts_us, values, received_us, coalesce, deadband))
            continue
        items = list(values.items())
        for start in range(0, len(items), MAX_POINTS_PER_REQUEST):
            chunk = dict(items[start : start + MAX_POINTS_PER_REQUEST])
            records.append(Record(device, ts_us, chunk, received_us, coalesce, deadband))
    return records
