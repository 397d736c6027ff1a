"""``deadband`` in the mapping file: compiling a rule's and its metrics' deadbands (its own
module: the loader is near the module size limit). What a band does at run time is
:mod:`bridge.deadband`'s."""

from __future__ import annotations

from collections.abc import Callable

from bridge.mapping.spec import DeadbandSpec, MetricSpec, RuleSpec
from bridge.models import Deadband, Deadbands

_ONE_OF = "give exactly one of 'absolute', 'relative' or 'on_change: true'"


def compile_deadbands(spec: RuleSpec, fail: Callable[..., None]) -> Deadbands | None:
    """The rule's deadbands: the rule's own for every metric, a metric's own instead (under
    ``metrics:``). None when neither is given."""
    default = _band(spec.deadband, ("deadband",), fail) if spec.deadband else None
    own: list[tuple[str, Deadband]] = []
    for name, entry in (spec.metrics or {}).items():
        if not isinstance(entry, MetricSpec) or entry.deadband is None:
            continue
        key = ("metrics", name, "deadband")
        if "{" in name:
            fail(key, "a metric's own deadband needs a fixed metric name; put it on the rule")
            continue
        band = _band(entry.deadband, key, fail)
        if band is not None:
            own.append((name, band))
    if default is None and not own:
        return None
    if spec.coalesce is not None:
        at = ("deadband",) if spec.deadband else ("metrics", own[0][0], "deadband")
        fail(
            at,
            "deadband and coalesce do not combine: a coalesced rule already sends one point "
            "per window; use one of them",
        )
        return None
    return Deadbands(spec.name, default, tuple(own))


def _band(spec: DeadbandSpec, key: tuple[str, ...], fail: Callable[..., None]) -> Deadband | None:
    if spec.on_change is False:
        fail((*key, "on_change"), "on_change: false is no deadband; leave 'deadband' out")
        return None
    given = [
        (kind, value)
        for kind, value in (
            ("absolute", spec.absolute),
            ("relative", spec.relative),
            ("on_change", 0.0 if spec.on_change else None),
        )
        if value is not None
    ]
    if len(given) != 1:
        names = ", ".join(k for k, _v in given)
        fail(key, f"{_ONE_OF} (found {names})" if given else _ONE_OF)
        return None
    [(kind, band)] = given
    return Deadband(kind, float(band), round(spec.heartbeat_s * 1_000_000))
