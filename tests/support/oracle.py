"""The no-loss oracle of the delivery tests: wait for what the bridge committed, what the API
stored and the spool emptying, then judge the points the API holds (none lost, none invented,
none twice)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence

from bridge.app import Bridge
from bridge.lab.apiserver.server import LocalApi
from tests.support.harness import delivered_points, metric

Point = tuple[str, str, int, float]  # (device, metric, ts_ms, value), as delivered_points()


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; TimeoutError naming ``what`` after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise TimeoutError(f"not within {timeout} s: {what or predicate}") from None


async def wait_committed(bridge: Bridge, messages: int) -> None:
    """Wait until the bridge has committed exactly ``messages`` messages to its spool."""
    await wait_for(
        lambda: metric(bridge, "metriqo_bridge_messages_committed_total") == messages,
        what=f"{messages} messages committed to the spool",
    )


async def wait_delivered(api: LocalApi, want: set[Point], timeout: float = 20.0) -> None:
    """Wait until every wanted point is stored (a count would be fooled by duplicates)."""
    try:
        await wait_for(lambda: want <= set(delivered_points(api.store.points())), timeout)
    except TimeoutError:
        missing = want - set(delivered_points(api.store.points()))
        msg = f"{len(missing)} of {len(want)} points not stored within {timeout} s"
        raise TimeoutError(msg) from None


async def wait_drained(bridge: Bridge) -> None:
    """Wait until the bridge's spool holds no point."""
    await wait_for(lambda: bridge.spool.file.depth_points == 0, what="spool drained")


def assert_exactly(got: Sequence[Point], want: set[Point]) -> None:
    """No point lost, none invented, none twice."""
    missing, extra = want - set(got), set(got) - want
    assert not missing, f"{len(missing)} points lost, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} points invented, e.g. {sorted(extra)[:5]}"
    twice = [p for p, c in Counter(got).items() if c > 1]
    assert not twice, f"{len(twice)} points delivered more than once, e.g. {twice[:5]}"


def assert_none_lost(got: Sequence[Point], want: set[Point], *, copies: int = 2) -> None:
    """No point lost, none invented; a point may come twice (a batch in flight when the bridge
    was killed is sent again), never more than ``copies`` times."""
    missing, extra = want - set(got), set(got) - want
    assert not missing, f"{len(missing)} points lost, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} points invented, e.g. {sorted(extra)[:5]}"
    many = [p for p, c in Counter(got).items() if c > copies]
    assert not many, f"{len(many)} points delivered more than {copies} times, e.g. {many[:5]}"
