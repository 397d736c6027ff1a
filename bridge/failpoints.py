"""Failpoints: named places where a test makes the bridge crash or stall, armed by environment.

Compiled in but inert (the fail-rs pattern): unless ``METRIQO_BRIDGE_FAILPOINTS`` is set when
the bridge starts, :func:`hit` is one truthiness check of an empty dict, cheap enough for the
per-message path. The variable holds comma-separated ``name:action[@N]`` items::

    METRIQO_BRIDGE_FAILPOINTS=after_commit_before_puback:crash@3,after_2xx_before_delete:crash

Actions, taken at the N-th time the point is reached (default 1) and only then:

* ``crash`` sends the process SIGKILL, exactly like ``kill -9``: no ``finally``, no ``atexit``,
  no flush of buffered output, no spool close. One unbuffered line on stderr names the point.
* ``delay(SECONDS)`` blocks the calling thread, which for every hook here is the event loop:
  the whole bridge stalls, as a long GC pause or a stopped VM would make it.

A typo must never silently disable a failpoint, so an unknown name or bad syntax is a
:class:`~bridge.errors.ConfigError` at start (exit 78).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from bridge.errors import ConfigError

log = logging.getLogger(__name__)

ENV_VAR = "METRIQO_BRIDGE_FAILPOINTS"

POINTS: dict[str, str] = {
    "after_receive_before_commit": (
        "a message was received and mapped, not yet committed to the spool (bridge/intake.py)"
    ),
    "after_commit_before_puback": (
        "a spool group commit returned, no PUBACK of that batch sent yet (bridge/app.py)"
    ),
    "after_2xx_before_delete": (
        "the API accepted a batch, its spool delete transaction not yet run (bridge/delivery.py)"
    ),
    "alerts_after_create_before_ledger": (
        "alerts apply: the API created an alert (201), the ledger entry not yet written "
        "(bridge/api/alert_apply.py)"
    ),
}

_ITEM = re.compile(
    r"(?P<name>[a-z0-9_]+):(?P<action>crash|delay\((?P<seconds>[^()]*)\))(?:@(?P<at>[0-9]+))?"
)


@dataclass(frozen=True, slots=True)
class Failpoint:
    """One armed failpoint: do ``action`` the ``at``-th time ``name`` is reached."""

    name: str
    action: Literal["crash", "delay"]
    at: int = 1
    seconds: float = 0.0

    def __str__(self) -> str:
        action = f"delay({self.seconds:g})" if self.action == "delay" else self.action
        return f"{self.name}:{action}@{self.at}"


# name -> (failpoint, times reached so far). Empty unless armed: hit() tests only its truth.
_armed: dict[str, tuple[Failpoint, int]] = {}


def parse(spec: str) -> dict[str, Failpoint]:
    """Parse a ``name:action[@N],...`` list; an empty or blank string arms nothing.

    Raises:
        ConfigError: bad syntax, an unknown name, a count below 1, a bad delay or a name given
            twice; the message lists the known names.
    """
    out: dict[str, Failpoint] = {}
    if not spec.strip():
        return out
    for index, raw in enumerate(spec.split(","), 1):
        item = raw.strip()
        m = _ITEM.fullmatch(item)
        if m is None:
            raise _error(
                f"item {index} {item!r}: expected name:crash[@N] or name:delay(SECONDS)[@N]"
            )
        name = m["name"]
        if name not in POINTS:
            raise _error(f"item {index}: unknown failpoint {name!r}")
        if name in out:
            raise _error(f"item {index}: failpoint {name!r} given twice")
        at = int(m["at"]) if m["at"] is not None else 1
        if at < 1:
            raise _error(f"item {index} {item!r}: @N counts from 1")
        if m["seconds"] is None:
            out[name] = Failpoint(name, "crash", at)
            continue
        try:
            seconds = float(m["seconds"])
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise _error(f"item {index} {item!r}: delay needs a number of seconds >= 0")
        out[name] = Failpoint(name, "delay", at, seconds)
    return out


def _error(message: str) -> ConfigError:
    known = ", ".join(sorted(POINTS))
    return ConfigError(f"{message} (known failpoints: {known})", file=f"environment {ENV_VAR}")


def arm(points: Mapping[str, Failpoint]) -> None:
    """Replace the armed set (an empty mapping disarms); counts start again from zero."""
    _armed.clear()
    _armed.update({name: (fp, 0) for name, fp in points.items()})


def arm_from_env(environ: Mapping[str, str] = os.environ) -> list[Failpoint]:
    """Arm what ``METRIQO_BRIDGE_FAILPOINTS`` asks for (nothing when unset); log it loudly.

    Raises:
        ConfigError: the variable is set but malformed (see :func:`parse`).
    """
    points = parse(environ.get(ENV_VAR, ""))
    arm(points)
    if points:
        log.warning(
            "failpoints armed from %s (a test setting, never for production): %s",
            ENV_VAR,
            ", ".join(str(fp) for fp in points.values()),
        )
    return list(points.values())


def hit(name: str) -> None:
    """Mark that the bridge reached failpoint ``name``; acts only if it is armed.

    Unarmed this costs one call and one dict truth test (~80 ns). Every hook runs on the event
    loop thread, so the counts need no lock.
    """
    if _armed:
        _reach(name)


def _reach(name: str) -> None:
    entry = _armed.get(name)
    if entry is None:
        return
    fp, count = entry
    count += 1
    _armed[name] = (fp, count)
    if count != fp.at:
        return
    if fp.action == "delay":
        log.warning("failpoint %s: stalling this thread for %g s", fp, fp.seconds)
        time.sleep(fp.seconds)
        return
    # A raw write to fd 2: logging handlers and sys.stderr buffers are what kill -9 skips.
    with contextlib.suppress(OSError):
        os.write(2, f"failpoint {fp}: crash (SIGKILL)\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)  # not reached: SIGKILL can be neither caught nor blocked
