"""Calls alert webhooks for the local API without holding up telemetry.

The telemetry handler only queues a firing (:meth:`Notifier.submit`, never awaits); one
background task POSTs them, one at a time, with a short timeout. The queue is bounded: a firing
that finds it full is dropped and counted (``dropped``), as is a call that fails (``failed``:
a connection error, a timeout or a non-2xx answer); both are logged. Firings still queued when
the server stops count as dropped. Nothing here can raise into the request that caused the
firing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import orjson

from bridge.lab.apiserver.alerts import Firing

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
TIMEOUT_S = 5.0


class Notifier:
    """A bounded queue of firings and the task that delivers them."""

    def __init__(self, queue_size: int = QUEUE_SIZE, timeout_s: float = TIMEOUT_S) -> None:
        self._queue: asyncio.Queue[Firing] = asyncio.Queue(maxsize=queue_size)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._task: asyncio.Task[None] | None = None
        self.fired = 0  # crossings found (queued or dropped)
        self.sent = 0  # webhook calls answered 2xx
        self.failed = 0  # webhook calls that failed
        self.dropped = 0  # firings not queued: the queue was full

    def submit(self, firing: Firing) -> None:
        """Queues a firing; never blocks."""
        self.fired += 1
        try:
            self._queue.put_nowait(firing)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("alert %s: webhook queue full, firing dropped", firing.alert.id)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="alert-webhooks")

    async def stop(self) -> None:
        """Stops the calls; firings still queued are counted as dropped."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            self._queue.get_nowait()
            self.dropped += 1

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                firing = await self._queue.get()
                await self._call(session, firing)

    async def _call(self, session: aiohttp.ClientSession, firing: Firing) -> None:
        url = firing.alert.spec.url
        try:
            async with session.post(
                url,
                data=orjson.dumps(firing.payload()),
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                problem = f"answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            ok, problem = False, f"{type(exc).__name__}: {exc}"
        if ok:
            self.sent += 1
        else:
            self.failed += 1
            log.warning("alert %s: webhook %s %s", firing.alert.id, url, problem)
