"""Waiting on observable state, and running a loop for the length of a test, both under a
deadline: a bug fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any


async def until(
    predicate: Callable[[], bool], what: str, *, timeout: float = 10.0, step: float = 0.005
) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(step)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


@contextlib.asynccontextmanager
async def running(
    loop: Coroutine[Any, Any, None], *, timeout: float = 10.0
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``loop`` as a task for the body of the ``async with``; cancel it and wait (at most
    ``timeout``) for it to end afterwards."""
    task = asyncio.create_task(loop)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                await task
