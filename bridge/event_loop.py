"""The event loop the bridge runs on: uvloop where it is installed, else asyncio's own.

Why: in a backlog the bridge is bound by one interpreter (the event loop's thread parses,
maps and posts; the spool's thread commits), and part of the loop thread's time is the loop
itself: selectors, callbacks, the transports under the HTTP client. uvloop does that in C.
On the peer harness's 100,000-message backlog it took the bridge from 0.0525 to 0.0495
CPU-s per 1,000 messages and from 18,500 to 19,250 msg/s (docs/design/performance.md,
round 6). It is a dependency where it has wheels (Linux and macOS, CPython): no compiler
is needed to install the bridge anywhere else either, where asyncio's loop serves.

``event_loop`` (a top-level setting): ``auto`` takes uvloop if it imports, ``uvloop``
insists on it (a configuration error if it is missing), ``asyncio`` never uses it.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

from bridge.errors import ConfigError
from bridge.settings import EventLoop

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: EventLoop, origin: str | None = None) -> tuple[str, LoopFactory]:
    """The name and factory of the loop ``choice`` asks for; ConfigError when ``uvloop`` is
    asked for and cannot be imported (``origin``: where the setting was made)."""
    if choice != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError as exc:
            if choice == "uvloop":
                raise ConfigError(
                    f"uvloop cannot be imported ({exc}); install it, or set auto or asyncio",
                    file=origin,
                    key="event_loop",
                ) from None
        else:
            factory: LoopFactory = uvloop.new_event_loop
            return "uvloop", factory
    return "asyncio", asyncio.new_event_loop
