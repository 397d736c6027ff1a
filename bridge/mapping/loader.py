"""Loading, validating and compiling ``topic-mappings.yaml`` into runtime rules.

pydantic checks the structure (unknown keys are errors); the compile step checks meaning (a
template naming a capture its topic does not have, a JSON rule without metrics). Both report
``file:line: key.path: message`` and all errors are collected before failing, so a user fixes a
file in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from bridge.config.pathnames import NamedBy
from bridge.config.yamlfile import KeyPath, LineIndex, load_yaml_file, load_yaml_text
from bridge.errors import ConfigError, ConfigErrors
from bridge.mapping.alert_rules import DesiredAlert, compile_alerts
from bridge.mapping.conversions import Conversion, expression, linear
from bridge.mapping.deadband_spec import compile_deadbands
from bridge.mapping.element_forms import compile_each, compile_readings, devices_per_reading
from bridge.mapping.identifiers import IdentifierLimits, literal_problem
from bridge.mapping.mapper import FieldPath, Mapper, Rule, TimestampRule
from bridge.mapping.number_spec import with_number_formats
from bridge.mapping.readings import CollectRule, split_path
from bridge.mapping.sparkplug_form import not_sparkplug, sparkplug_rule
from bridge.mapping.spec import (
    MappingFile,
    MappingTest,
    RuleSpec,
    TransformSpec,
)
from bridge.mapping.templates import Template, compile_template, literal_braces
from bridge.mapping.topics import parse_filter
from bridge.mapping.transforms import Transform
from bridge.mapping.validation import mapping_error
from bridge.models import Coalesce
from bridge.settings import MappingSettings


def load_mapping_tests(path: Path) -> tuple[list[Rule], list[MappingTest], LineIndex]:
    """The compiled rules and the ``tests:`` section of a mapping file."""
    data, index = load_yaml_file(path)
    rules = compile_mappings(data, index)
    spec = MappingFile.model_validate(data)
    return rules, list(spec.tests or []), index


def load_mapping_alerts(
    path: Path, named_by: NamedBy | None = None
) -> tuple[list[Rule], list[DesiredAlert], LineIndex]:
    """The compiled rules and the alert rules of a mapping file's ``alerts:`` section."""
    data, index = load_yaml_file(path, named_by)
    rules = compile_mappings(data, index)
    spec = MappingFile.model_validate(data)
    return rules, compile_alerts(spec.alerts or [], index, []), index


def load_mappings(
    path: Path, limits: IdentifierLimits | None = None, named_by: NamedBy | None = None
) -> list[Rule]:
    """Load, validate and compile a mapping file; raise ConfigError(s) naming file and line
    (``named_by``: the setting that gave the path, for a file that cannot be opened)."""
    data, index = load_yaml_file(path, named_by)
    return compile_mappings(data, index, limits)


def load_mappings_text(
    text: str, name: str = "<text>", limits: IdentifierLimits | None = None
) -> list[Rule]:
    """Same as :func:`load_mappings` for YAML held in memory (tests, ``check`` of stdin)."""
    data, index = load_yaml_text(text, name)
    return compile_mappings(data, index, limits)


def compile_mappings(
    data: object, index: LineIndex, limits: IdentifierLimits | None = None
) -> list[Rule]:
    """Validate parsed YAML and compile it into runtime rules; a device id or metric name whose
    fixed text already breaks ``limits`` is an error (every message would fail)."""
    if data is None:
        raise index.error((), "file is empty; expected 'version: 1' and 'rules:'")
    try:
        spec = MappingFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors(
            [mapping_error(err, index, MappingFile) for err in exc.errors()]
        ) from None
    errors: list[ConfigError] = []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, rule_spec in enumerate(spec.rules):
        at: KeyPath = ("rules", i)
        if rule_spec.name in seen:
            errors.append(
                index.error(
                    (*at, "name"), f"duplicate rule name (also rule {seen[rule_spec.name]})"
                )
            )
        seen.setdefault(rule_spec.name, i)
        rule = _Compiler(rule_spec, at, index, errors, limits or IdentifierLimits()).rule()
        if rule is not None:
            rules.append(rule)
    compile_alerts(spec.alerts or [], index, errors)  # checked here: start-up refuses a bad one
    if errors:
        raise ConfigErrors(errors)
    return rules


class _Compiler:
    """Checks the meaning of one rule and builds its runtime form."""

    def __init__(
        self,
        spec: RuleSpec,
        at: KeyPath,
        index: LineIndex,
        errors: list[ConfigError],
        limits: IdentifierLimits,
    ) -> None:
        self.spec = spec
        self.at = at
        self.index = index
        self.errors = errors
        self.limits = limits
        self.captures: set[str] = set()
        self.metric_names: list[Template | None] = []

    def fail(self, key: str | tuple[str, ...], message: str) -> None:
        keys = (key,) if isinstance(key, str) else key
        self.errors.append(self.index.error((*self.at, *keys), message))

    def rule(self) -> Rule | None:
        spec = self.spec
        before = len(self.errors)
        try:
            topic = parse_filter(spec.topic)
        except ValueError as exc:
            self.fail("topic", str(exc))
            return None
        self.captures = set(topic.capture_names)
        if spec.ignore:
            return self._ignore_rule(topic, before)
        if spec.payload == "sparkplug":
            compiled = sparkplug_rule(self, topic)
            return compiled if len(self.errors) == before else None
        not_sparkplug(self)
        json_payload = spec.payload == "json"
        if spec.device_id is None and not devices_per_reading(spec):
            per_reading = spec.readings is not None and spec.readings.device is not None
            self.fail(
                "device_id",
                "'readings.device' names the readings' devices only; 'metrics' and 'collect' "
                "need 'device_id'"
                if per_reading
                else "a rule needs 'device_id' (or 'ignore: true')",
            )
            return None
        each, each_where = compile_each(self, json_payload)
        device_id = Template("", ())  # readings.device names every device of the rule
        if spec.device_id is not None:
            device_id = self.template(spec.device_id, "device_id", payload_fields=json_payload)
            self.fixed_text(device_id.literals, "device_id", device=True)
        metrics: tuple[tuple[str, FieldPath], ...] = ()
        transforms: tuple[Transform, ...] = ()
        metric_name: Template | None = None
        collect = readings = readings_time = None
        if json_payload:
            metrics, transforms = self._json_metrics()
            collect = self._collect()
            readings, readings_time = compile_readings(self)
        else:
            metric_name, transforms = self._plain()
            for key in ("collect", "readings"):
                if getattr(spec, key) is not None:
                    self.fail(key, f"'{key}' is for payload: json")
        transforms = with_number_formats(spec, transforms, self.fail)
        timestamp = self._timestamp(json_payload)
        if len(self.errors) > before:
            return None
        return Rule(
            name=spec.name,
            topic=topic,
            device_id=device_id,
            payload=spec.payload,
            metrics=metrics,
            metric=metric_name,
            ts_field=timestamp.field if timestamp else None,
            ts_format=timestamp.fmt if timestamp else "auto",
            reject_on_error=spec.on_error == "reject_message",
            transforms=transforms,
            timestamp=timestamp,
            keep_going=spec.continue_,
            collect=collect,
            readings=readings,
            readings_time=readings_time,
            each=each,
            each_where=each_where,
            coalesce=(
                Coalesce(round(spec.coalesce.window_s * 1_000_000), spec.coalesce.function)
                if spec.coalesce
                else None
            ),
            metric_names=tuple(self.metric_names) if any(self.metric_names) else (),
            deadband=compile_deadbands(spec, self.fail),  # its errors fail the file too
        )

    def _ignore_rule(self, topic: object, before: int) -> Rule | None:
        spec = self.spec
        for key in (
            "device_id",
            "metrics",
            "metric",
            "transform",
            "timestamp",
            "collect",
            "readings",
            "deadband",
            "sparkplug",
        ):
            if getattr(spec, key) is not None:
                self.fail(key, "an ignore rule takes only name and topic")
        if spec.continue_:
            self.fail("continue", "an ignore rule ends the matching; 'continue' makes no sense")
        if len(self.errors) > before:
            return None
        assert not isinstance(topic, str)
        return Rule(
            name=spec.name,
            topic=topic,  # type: ignore[arg-type]
            device_id=Template("", ()),
            payload=spec.payload,
            metrics=(),
            metric=None,
            ts_field=None,
            ts_format="auto",
            reject_on_error=False,
            ignore=True,
        )

    def template(self, text: str, key: str | tuple[str, ...], *, payload_fields: bool) -> Template:
        try:
            return compile_template(text, self.captures, payload_fields)
        except ValueError as exc:
            self.fail(key, str(exc))
            return Template(text, ())

    def _json_metrics(self) -> tuple[tuple[tuple[str, FieldPath], ...], tuple[Transform, ...]]:
        spec = self.spec
        if spec.metric is not None:
            self.fail("metric", "'metric' is for plain payloads; use 'metrics'")
        if spec.transform is not None:
            self.fail("transform", "for a json rule, put transforms on each metric")
        if not spec.metrics:
            if spec.collect is None and spec.readings is None:
                self.fail(
                    "metrics",
                    "a json rule needs 'metrics: {name: field.path}', 'collect' or 'readings'",
                )
            return (), ()
        paths: list[tuple[str, FieldPath]] = []
        transforms: list[Transform] = []
        self.metric_names = []
        for name, entry in spec.metrics.items():
            if not name.strip():
                self.fail(("metrics", name), "metric name is empty")
            template = (
                self.template(name, ("metrics", name), payload_fields=True) if "{" in name else None
            )
            self.metric_names.append(template)
            fixed = [name] if template is None else template.literals
            self.fixed_text(fixed, ("metrics", name))
            if isinstance(entry, str):
                paths.append((name, self.field_path(entry, ("metrics", name))))
                transforms.append(Transform())
            else:
                paths.append((name, self.field_path(entry.path, ("metrics", name, "path"))))
                transforms.append(self.transform(entry, ("metrics", name)))
        return tuple(paths), tuple(transforms)

    def _collect(self) -> CollectRule | None:
        c = self.spec.collect
        if c is None:
            return None
        prefix = self.template(c.prefix, ("collect", "prefix"), payload_fields=False)
        self.prefix_and_names(c.prefix, c.rename, "collect", literals=prefix.literals)
        return CollectRule(
            path=self.segments(c.path, ("collect", "path")),
            include=tuple(c.include or ()),
            exclude=tuple(c.exclude or ()),
            rename=dict(c.rename or {}),
            prefix=c.prefix,
            transform=self.transform(c, ("collect",)),
            separator=c.separator,
            prefix_template=prefix if len(prefix.literals) < len(prefix.parts) else None,
        )

    def segments(self, text: str, key: tuple[str, ...]) -> tuple[str, ...]:
        if text in ("", "."):
            return ()
        return self.field_path(text, key).segments

    def fixed_text(
        self, parts: list[str], key: str | tuple[str, ...], *, device: bool = False
    ) -> None:
        lim = self.limits
        what, most = (
            ("device_id", lim.max_device_id) if device else ("metric_name", lim.max_metric_name)
        )
        problem = literal_braces("".join(parts)) or literal_problem(
            parts, what.replace("_", " "), most, f"mapping.max_{what}_length"
        )
        if problem is not None:
            self.fail(key, problem)

    def prefix_and_names(
        self,
        prefix: str,
        rename: dict[str, str] | None,
        key: str,
        literals: list[str] | None = None,
    ) -> None:
        fixed = [prefix] if literals is None else literals
        self.fixed_text(fixed, (key, "prefix"))
        for old, new in (rename or {}).items():
            self.fixed_text([*fixed, new], (key, "rename", old))

    def zone(self, name: str | None, key: tuple[str, ...]) -> ZoneInfo | None:
        try:
            return None if name is None else ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(key, f"unknown time zone {name!r}")
            return None

    def _plain(self) -> tuple[Template | None, tuple[Transform, ...]]:
        spec = self.spec
        if spec.metrics is not None:
            self.fail("metrics", "'metrics' is for payload: json; use 'metric'")
        if spec.metric is None:
            self.fail("metric", f"a {spec.payload} rule needs 'metric: <name or {{capture}}>'")
            return None, ()
        name = self.template(spec.metric, "metric", payload_fields=False)
        self.fixed_text(name.literals, "metric")
        transform = self.transform(spec.transform, ("transform",)) if spec.transform else None
        if spec.payload == "text" and (transform is None or not transform.value_map):
            self.fail("transform", "a text rule needs 'transform: {map: {TEXT: number, ...}}'")
        return name, (transform or Transform(),)

    def transform(self, t: TransformSpec, key: tuple[str, ...]) -> Transform:
        if t.range is not None and t.range[0] > t.range[1]:
            self.fail((*key, "range"), "range must be [low, high] with low <= high")
        return Transform.build(
            scale=t.scale,
            offset=t.offset,
            digits=t.round,
            valid_range=t.range,
            clamp=t.out_of_range == "clamp",
            value_map=t.map,
            convert=conversion(t, key, self.fail),
        )

    def _timestamp(self, json_payload: bool) -> TimestampRule | None:
        ts = self.spec.timestamp
        if ts is None:
            return None
        if (ts.field is None) == (ts.capture is None):
            self.fail("timestamp", "give exactly one of 'field' (payload) or 'capture' (topic)")
            return None
        if ts.field is not None and not json_payload:
            self.fail(("timestamp", "field"), "a plain payload has no field to read a time from")
        if ts.capture is not None and ts.capture not in self.captures:
            known = ", ".join(sorted(self.captures)) or "none"
            self.fail(("timestamp", "capture"), f"the topic captures: {known}")
        tz = self.zone(ts.timezone, ("timestamp", "timezone"))
        if ts.pattern is not None and "%" not in ts.pattern:
            self.fail(("timestamp", "pattern"), "a strptime pattern such as '%d.%m.%Y %H:%M:%S'")
        field = None
        if ts.field is not None:
            field = self.field_path(ts.field, ("timestamp", "field"))
        return TimestampRule(
            field=field,
            capture=ts.capture,
            fmt=ts.format,
            pattern=ts.pattern,
            tz=tz,
            max_future_s=ts.max_future_s,
            max_past_s=ts.max_past_s,
            fallback_to_receive_time=ts.on_invalid == "receive_time",
        )

    def field_path(self, text: str, key: tuple[str, ...]) -> FieldPath:
        try:
            segments = split_path(text)
        except ValueError as exc:
            self.fail(key, str(exc))
            segments = ()
        return FieldPath(text=text, segments=segments)


def conversion(
    t: TransformSpec, key: tuple[str, ...], fail: Callable[..., None]
) -> Conversion | None:
    """``linear`` or ``expr``: one conversion step per metric, so neither goes with the
    other nor with scale/offset (which would leave the order of the steps to guess)."""
    given = [k for k in ("linear", "expr") if getattr(t, k) is not None]
    if not given:
        return None
    step = given[-1]
    if len(given) == 2:
        fail((*key, step), "give 'linear' or 'expr', not both: a metric has one conversion step")
        return None
    clash = " and ".join(k for k in ("scale", "offset") if getattr(t, k) is not None)
    if clash:
        fail((*key, step), f"'{step}' replaces {clash}: write the whole conversion in it")
    try:
        if t.linear is not None:
            return linear(t.linear.from_, t.linear.to)
        assert t.expr is not None
        return expression(t.expr)
    except ValueError as exc:
        at = (*key, "expr") if t.linear is None else (*key, "linear")
        at = (*at, "from") if "'from'" in str(exc) else at
        fail(at, str(exc))
        return None


def make_mapper(rules: list[Rule], settings: MappingSettings) -> Mapper:
    """The mapper as the bridge runs it: the rules with the payload and time limits of the
    settings (shared by the bridge and ``dead-letters requeue``, so both map alike)."""
    return Mapper(
        rules,
        max_payload_bytes=settings.max_payload_bytes,
        max_future_s=settings.max_future_s,
        identifiers=IdentifierLimits.of(settings),
    )
