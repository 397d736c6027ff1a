"""A tiny webhook receiver for the demo and the tests: it records every JSON body POSTed to it.

The local API server (:mod:`bridge.lab.apiserver`) calls an alert rule's webhook when its
threshold is crossed; point the rule's ``notify.url`` at :attr:`WebhookReceiver.url` and look at
:attr:`WebhookReceiver.received`.

Example:
    async with WebhookReceiver() as hook:
        ...  # create an alert rule with notify.url = hook.url, send telemetry that crosses it
        await hook.wait_for(1, timeout=5)
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

import orjson
from aiohttp import web


class WebhookReceiver:
    """Listens on a loopback port; answers ``204`` to every POST and keeps its JSON body (or
    the raw bytes, when it is not JSON) in arrival order."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, path: str = "/hook") -> None:
        self.received: list[Any] = []
        self._host = host
        self._requested_port = port
        self._path = path
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """Where to send, e.g. ``http://127.0.0.1:8125/hook``."""
        if self._port is None:
            raise RuntimeError("WebhookReceiver is not running")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}{self._path}"

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            self.received.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            self.received.append(raw)
        self._changed.set()
        return web.Response(status=204)

    # A plain timeout argument is the documented test-facing API; asyncio.timeout applies it.
    async def wait_for(self, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Waits until at least ``n`` calls arrived.

        Raises:
            TimeoutError: fewer arrived within ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                while len(self.received) < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError as exc:
            raise TimeoutError(f"{len(self.received)} of {n} webhook calls arrived") from exc

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post(self._path, self._receive)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
            self._port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()
