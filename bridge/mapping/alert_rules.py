"""The ``alerts:`` section of the mapping file: its meaning checks, the alert rules it stands for,
and ``check``'s warning about an alert on a metric that no rule produces.

An entry becomes one :class:`~bridge.api.models.AlertRule` per device: ``device: line-1`` or
``device: "*"`` one, named as written; ``device: [a, b]`` one per id, named ``NAME (a)`` and
``NAME (b)``. That Metriqo name is the alert's identity in the local ledger
(:mod:`bridge.api.alert_ledger`), so names must be unique after the expansion. The condition
may be written ``gt``/``lt``/``gte``/``lte`` or ``>``/``<``/``>=``/``<=``; the API gets the words.
A webhook must be ``https``, except to a loopback host (a receiver on the same machine), since
the notification leaves the organization's network otherwise in clear text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from bridge.api.models import AlertRule, Condition
from bridge.config.secrets import is_loopback
from bridge.config.suggest import did_you_mean
from bridge.config.yamlfile import KeyPath, LineIndex
from bridge.errors import ConfigError
from bridge.mapping.mapper import Rule
from bridge.mapping.spec import AlertSpec
from bridge.mapping.templates import Template

_SPELLINGS: dict[str, Condition] = {
    "gt": "gt",
    "lt": "lt",
    "gte": "gte",
    "lte": "lte",
    ">": "gt",
    "<": "lt",
    ">=": "gte",
    "<=": "lte",
}


@dataclass(frozen=True, slots=True)
class DesiredAlert:
    """One alert rule the file asks for, and the line of its entry (for messages)."""

    rule: AlertRule
    line: int | None

    @property
    def key(self) -> str:
        """Its identity in the ledger: the name Metriqo shows."""
        return self.rule.name


def compile_alerts(
    specs: Sequence[AlertSpec], index: LineIndex, errors: list[ConfigError]
) -> list[DesiredAlert]:
    """The alert rules of ``alerts:``; problems are appended to ``errors``."""
    out: list[DesiredAlert] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        at: KeyPath = ("alerts", i)
        url_problem = webhook_problem(spec.notify)
        if url_problem is not None:
            errors.append(index.error((*at, "notify"), url_problem))
        if not math.isfinite(spec.threshold):
            errors.append(index.error((*at, "threshold"), "must be a finite number"))
        devices = [spec.device] if isinstance(spec.device, str) else spec.device
        if not isinstance(spec.device, str):
            if "*" in devices:
                errors.append(
                    index.error((*at, "device"), "'*' means every device: write it alone")
                )
            dupes = sorted({d for d in devices if devices.count(d) > 1})
            if dupes:
                errors.append(index.error((*at, "device"), f"listed twice: {', '.join(dupes)}"))
        for device in dict.fromkeys(devices):  # a repeated id is reported once, above
            if not device.strip():
                errors.append(index.error((*at, "device"), "a device id cannot be empty"))
                continue
            name = spec.name if isinstance(spec.device, str) else f"{spec.name} ({device})"
            if name in seen:
                errors.append(
                    index.error(
                        (*at, "name"),
                        f"duplicate alert name {name!r} (also alerts[{seen[name]}]): Metriqo "
                        "tells alerts apart by name here",
                    )
                )
                continue
            seen[name] = i
            rule = AlertRule(
                name=name,
                device_id=device,
                metric=spec.metric,
                condition=_SPELLINGS[spec.condition],
                threshold=float(spec.threshold),
                webhook_url=spec.notify,
            )
            out.append(DesiredAlert(rule, index.line_of(at)))
    return out


def webhook_problem(url: str) -> str | None:
    """Why ``url`` cannot be an alert's webhook, or None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return f"{url!r} is not a URL"
    if parts.scheme not in ("https", "http") or not host:
        return f"{url!r} is not an http(s) URL with a host"
    if parts.scheme == "http" and not is_loopback(host):
        return (
            f"webhook {url!r} must use https (http only to a loopback host such as 127.0.0.1): "
            "the notification would cross the network in clear text"
        )
    if parts.username or parts.password:
        return "a webhook URL must not hold a user name or password (put a token in the path)"
    return None


def unproduced_metric_warnings(
    alerts: Sequence[DesiredAlert], rules: Sequence[Rule], file: str
) -> list[str]:
    """``check``'s warnings: an alert whose metric no rule could produce. Conservative: a rule
    with ``collect`` or ``readings`` names its metrics from the payload, so with such a rule
    any name is possible and nothing is said; a templated name counts when its fixed parts
    fit."""
    fixed: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for rule in rules:
        if rule.ignore:
            continue
        if rule.collect is not None or rule.readings is not None:
            return []
        names = list(rule.metric_names) + [None] * (len(rule.metrics) - len(rule.metric_names))
        for (name, _path), template in zip(rule.metrics, names, strict=True):
            if template is None:
                fixed.add(name)
            else:
                patterns.append(_pattern(template))
        if rule.metric is not None:
            patterns.append(_pattern(rule.metric))
    out: list[str] = []
    for alert in alerts:
        metric = alert.rule.metric
        if metric in fixed or any(p.fullmatch(metric) for p in patterns):
            continue
        where = f"{file}:{alert.line}" if alert.line is not None else file
        out.append(
            f"{where}: warning: alert {alert.key!r}: no rule produces metric {metric!r}, so "
            f"the alert would never fire{did_you_mean(metric, sorted(fixed))}"
        )
    return out


def _pattern(template: Template) -> re.Pattern[str]:
    """What a template can render to: its fixed text, anything in between."""
    return re.compile(
        "".join(re.escape(p.value) if p.kind == "text" else ".*" for p in template.parts),
        re.DOTALL,
    )
