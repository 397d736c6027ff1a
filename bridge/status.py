"""``/metrics``, ``/healthz``, ``/readyz`` and the ``/debug`` views on a small aiohttp server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bridge.serving import before_close
from bridge.settings import HttpSettings

ReadinessProbe = Callable[[], list[str]]  # returns the reasons for not being ready
DebugProvider = Callable[[], object]  # returns a JSON-serialisable value
TopProvider = Callable[[int], Awaitable[object]]  # the heaviest talkers, at most N of them
TOP_DEFAULT, TOP_MAX = 10, 100
# How long a stop waits for requests still being answered (aiohttp's default is 60 s). Every
# handler answers in milliseconds; one still running after this is stuck (a spool query
# behind a full disk, say), and a bridge told to stop must not wait a minute for it: a
# supervisor's own grace (Kubernetes: 30 s) would end in SIGKILL.
STOP_GRACE_S = 2.0


class StatusServer:
    """Serves the bridge's metrics and health endpoints until closed."""

    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: ReadinessProbe,
        settings: HttpSettings,
        unmatched: DebugProvider | None = None,
        top_devices: TopProvider | None = None,
    ) -> None:
        self._registry = registry
        self._readiness = readiness
        self._unmatched = unmatched
        self._top_devices = top_devices
        self._host = settings.host
        self._port = settings.port
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    async def __aenter__(self) -> StatusServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/debug/unmatched", self._debug_unmatched)
        app.router.add_get("/debug/top-devices", self._debug_top_devices)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=STOP_GRACE_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        if self._runner.addresses:  # the real port when 0 asked for a free one
            self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            # A scraper that connected as the bridge stops must not be left half-accepted
            # (bridge/serving.py); bounded, so a stop never waits long for it.
            await before_close(self._host, self.port, within_s=1.0)
            await self._runner.cleanup()

    async def _metrics(self, _req: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _req: web.Request) -> web.Response:
        # Answering at all proves the event loop is alive.
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def _debug_unmatched(self, _req: web.Request) -> web.Response:
        body = orjson.dumps({"unmatched": self._unmatched() if self._unmatched else []})
        return web.Response(body=body, content_type="application/json")

    async def _debug_top_devices(self, req: web.Request) -> web.Response:
        raw = req.query.get("limit", str(TOP_DEFAULT))
        if not raw.isdigit() or not 1 <= int(raw) <= TOP_MAX:
            body = orjson.dumps({"error": f"limit must be a whole number from 1 to {TOP_MAX}"})
            return web.Response(body=body, status=400, content_type="application/json")
        if self._top_devices is None:
            return web.Response(body=b'{"devices":[]}', content_type="application/json")
        body = orjson.dumps(await self._top_devices(int(raw)))
        return web.Response(body=body, content_type="application/json")

    async def _readyz(self, _req: web.Request) -> web.Response:
        problems = self._readiness()
        body = orjson.dumps({"ready": not problems, "problems": problems})
        return web.Response(
            body=body, status=503 if problems else 200, content_type="application/json"
        )
