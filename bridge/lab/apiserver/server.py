"""A local Metriqo-compatible API server for tests, the demo and dry runs.

Serves the four endpoints of the v2 contract (``shared/metriqo-api-v2.md``) from memory:
``POST /telemetry``, ``GET /devices``, ``GET /metrics`` and ``POST /alerts``, each under its own
rate limit, and records every request in an `ApiStore` so tests can assert on what the bridge
actually sent. Accepted telemetry is evaluated against the stored alert rules; a crossing calls
the rule's webhook from a background task (`bridge.lab.apiserver.notifier`), never from the
request. Request parsing lives in `bridge.lab.apiserver.validation`, the in-memory store in
`bridge.lab.apiserver.store`, the other endpoints in `bridge.lab.apiserver.resources`, the
limits in `bridge.lab.apiserver.ratelimits`, the fault decisions in
`bridge.lab.apiserver.faults`; this module is the aiohttp shell and ``POST /telemetry``.

Example:
    async with LocalApi(token="t") as api:
        ...  # point a sender at api.url
        await api.store.wait_for_points(4, timeout=5)

The token is never logged, printed or put into an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Self

from aiohttp import web

from bridge.lab.apiserver.devices import StatusThresholds
from bridge.lab.apiserver.faults import FaultName, Faults, FaultState, StormReply, find_poison
from bridge.lab.apiserver.notifier import Notifier
from bridge.lab.apiserver.ratelimits import EndpointLimits, Limiters
from bridge.lab.apiserver.resources import Resources
from bridge.lab.apiserver.responses import error_response as _error
from bridge.lab.apiserver.responses import json_response as _json
from bridge.lab.apiserver.responses import rate_limited_response
from bridge.lab.apiserver.store import ApiStore, RequestRecord, StoredPoint
from bridge.lab.apiserver.validation import (
    JsonValue,
    ParsedTimestamp,
    RequestError,
    TelemetryItem,
    check_bearer,
    decode_json,
    validate_telemetry,
)
from bridge.limits import TELEMETRY_REQUESTS_PER_MINUTE
from bridge.serving import before_close, take_in_waiting

API_PREFIX = "/api/v2"
NOTIFIER = web.AppKey("notifier", Notifier)


class _RotationRefused(RequestError):
    """A 401 from the ``unauthorized_until_token`` fault (same body as a normal 401)."""

    def __init__(self) -> None:
        super().__init__("Invalid or expired API token.", code="unauthorized", status=401)


def _outage(state: FaultState) -> tuple[web.Response, int, FaultName] | None:
    # A hung or failing server answers before identity is even looked at, and stores nothing.
    if state.faults.hang:
        return _json(504, {"error": "hang", "message": "Never sent."}), 0, "hang"
    status = state.error_status()
    if status is None:
        return None
    payload = {"error": "server_error", "message": f"Injected fault: HTTP {status}."}
    return _json(status, payload), 0, "error_rate"


def _storm_reply(storm: StormReply) -> web.Response:
    message = f"Rate limited (storm, {math.ceil(storm.remaining_s)} s left)."
    headers = None if storm.retry_after is None else {"Retry-After": storm.retry_after}
    return _json(429, {"error": "rate_limited", "message": message}, headers)


def _refuse_payload(
    faults: Faults, items: list[TelemetryItem]
) -> tuple[web.Response, int, FaultName] | None:
    if faults.max_points_413 is not None:
        total = sum(len(item.metrics) for item in items)
        if total > faults.max_points_413:
            message = f"body: {total} data points exceed this server's limit of "
            payload = {"error": "payload_too_large", "message": f"{message}{faults.max_points_413}"}
            return _json(413, payload), 0, "max_points_413"
    if faults.poison_value is not None:
        where = find_poison(items, faults.poison_value)
        if where is not None:
            payload = {"error": "bad_request", "message": f"{where}: value rejected"}
            return _json(400, payload), 0, "poison_value"
    return None


async def _hang(
    request: web.Request, response: web.Response, stopping: asyncio.Event
) -> web.StreamResponse:
    # Never answer. aiohttp does not cancel a handler whose client went away, so look at the
    # transport now and then; return (unsent) once the client is gone or the server stops.
    while request.transport is not None and not request.transport.is_closing():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.05)
            break
    return response


async def _trickle(request: web.Request, response: web.Response, bps: int) -> web.StreamResponse:
    body = response.body
    assert isinstance(body, bytes)
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    chunk = max(1, bps // 10)
    for start in range(0, len(body), chunk):
        piece = body[start : start + chunk]
        await asyncio.sleep(len(piece) / bps)
        await stream.write(piece)
    await stream.write_eof()
    return stream


class _Handlers:
    """Request handlers bound to one app's store, token, limiter and clocks."""

    def __init__(
        self,
        store: ApiStore,
        token: str,
        limits: EndpointLimits,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        *,
        faults: Faults | None = None,
        notifier: Notifier,
    ) -> None:
        self._store = store
        self._faults = None if faults is None else FaultState(faults)
        self._stopping = asyncio.Event()
        self._token = token
        # Only one token is valid, so one window per endpoint is the per-token window.
        self._limiters = Limiters(limits)
        self._notifier = notifier
        self._clock = clock
        self._wall_clock = wall_clock
        self.resources = Resources(store, self._limiters, self._check_auth, clock, self._now_wall)

    def _now_wall(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), UTC)

    async def on_startup(self, _app: web.Application) -> None:
        if self._faults is not None:
            self._faults.start()
        await self._notifier.start()

    async def on_shutdown(self, _app: web.Application) -> None:
        self._stopping.set()

    async def on_cleanup(self, _app: web.Application) -> None:
        await self._notifier.stop()

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        if self._faults is not None and self._faults.rotates_token:
            if not self._faults.rotated_token_ok(header):
                raise _RotationRefused
            return
        check_bearer(header, self._token)

    async def telemetry(self, request: web.Request) -> web.StreamResponse:
        received_at = self._clock()
        received_wall = self._now_wall()
        body: JsonValue | bytes = b""
        written = 0
        fault: FaultName | None = None
        try:
            body = await request.read()
            parsed: JsonValue | RequestError
            try:
                parsed = decode_json(body)
                body = parsed
            except RequestError as exc:
                parsed = exc
            response, written, fault = self._ingest(request, parsed, received_at, received_wall)
        except web.HTTPRequestEntityTooLarge as exc:
            response = _json(413, {"error": "payload_too_large", "message": exc.text})
        except RequestError as exc:
            response = _error(exc)
            fault = "unauthorized_until_token" if isinstance(exc, _RotationRefused) else None
        if fault is None and self._faults is not None:
            if self._faults.faults.slow_body_bps:
                fault = "slow_body"
            elif self._faults.faults.latency_s:
                fault = "latency"
        self._store.record_request(
            RequestRecord(
                received_at=received_at,
                received_wall=received_wall,
                status=0 if fault == "hang" else response.status,
                authorization=request.headers.get("Authorization"),
                idempotency_key=request.headers.get("Idempotency-Key"),
                content_type=request.headers.get("Content-Type"),
                body=body,
                points_written=written,
                fault=fault,
            )
        )
        if fault == "hang":
            return await _hang(request, response, self._stopping)
        return await self._deliver(request, response)

    async def _deliver(self, request: web.Request, response: web.Response) -> web.StreamResponse:
        if self._faults is None:
            return response
        faults = self._faults.faults
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        if not faults.slow_body_bps or response.body is None:
            return response
        return await _trickle(request, response, faults.slow_body_bps)

    def _ingest(
        self,
        request: web.Request,
        parsed: JsonValue | RequestError,
        received_at: float,
        received_wall: datetime,
    ) -> tuple[web.Response, int, FaultName | None]:
        faults = self._faults
        early = None if faults is None else _outage(faults)
        if early is not None:
            return early
        # Order as a real gateway would: identity, then quota, then payload.
        self._check_auth(request)
        if faults is not None and (storm := faults.storm()) is not None:
            return _storm_reply(storm), 0, "storm_429"
        limited = self._limiters.refuse("telemetry", received_at)
        if limited is not None:
            return rate_limited_response(*limited), 0, None
        if isinstance(parsed, RequestError):
            raise parsed
        items = validate_telemetry(parsed)
        if faults is not None:
            refused = _refuse_payload(faults.faults, items)
            if refused is not None:
                return refused
        # Server-stamped points get millisecond precision, like typical client timestamps.
        stamp = ParsedTimestamp(
            received_wall.replace(microsecond=received_wall.microsecond // 1000 * 1000), 3
        )
        points = [
            (StoredPoint(item.device_id, name, ts.value, value), ts.fraction_digits)
            for item in items
            for ts in [item.timestamp or stamp]
            for name, value in item.metrics
        ]
        self._store.add_points(points, received_wall)
        # Alerts are evaluated on what was stored; the webhooks are called in the background.
        for firing in self._store.alerts.evaluate(
            (p.device_id, p.metric, p.value, p.timestamp) for p, _ in points
        ):
            self._notifier.submit(firing)
        if faults is not None and faults.record_then_fail():
            payload = {"error": "server_error", "message": "Injected fault: HTTP 500."}
            return _json(500, payload), len(points), "record_then_500"
        accepted: dict[str, object] = {
            "status": "accepted",
            "points_written": len(points),
            "device_id": items[0].device_id,
            "devices": len({item.device_id for item in items}),
        }
        return _json(201, accepted), len(points), None


def create_app(
    store: ApiStore,
    token: str,
    rate_limit_per_minute: int | None = TELEMETRY_REQUESTS_PER_MINUTE,
    clock: Callable[[], float] = time.monotonic,
    *,
    wall_clock: Callable[[], float] = time.time,
    faults: Faults | None = None,
    limits: EndpointLimits | None = None,
) -> web.Application:
    """Builds the aiohttp application serving the v2 endpoints under ``/api/v2``.

    Args:
        store: Where requests, points, devices and alert rules are recorded.
        token: The only Bearer token accepted.
        rate_limit_per_minute: Admitted ``POST /telemetry`` requests per sliding 60 s window;
            None for no limit. Ignored when `limits` is given.
        clock: Monotonic seconds for the rate-limit windows; inject a fake one in tests.
        wall_clock: Epoch seconds for receipt times, server stamps and device status.
        faults: Faults to inject into ``POST /telemetry`` (see `bridge.lab.apiserver.faults`);
            a rotated token (``unauthorized_until_token``) applies to every endpoint.
        limits: Every endpoint's limit and the window (`EndpointLimits`); by default the
            contract's limits, with `rate_limit_per_minute` for telemetry.

    The app's `Notifier` (webhook calls of alert rules, with its counters) is ``app[NOTIFIER]``.

    Raises:
        ValueError: An empty token or a negative rate limit.
    """
    if not token:
        raise ValueError("token must be non-empty")
    if limits is None:
        if rate_limit_per_minute is not None and rate_limit_per_minute < 0:
            raise ValueError("rate_limit_per_minute must be >= 0 or None")
        limits = EndpointLimits(telemetry=rate_limit_per_minute)
    notifier = Notifier()
    handlers = _Handlers(store, token, limits, clock, wall_clock, faults=faults, notifier=notifier)
    app = web.Application()
    app[NOTIFIER] = notifier
    app.on_startup.append(handlers.on_startup)
    app.on_shutdown.append(handlers.on_shutdown)
    app.on_cleanup.append(handlers.on_cleanup)
    app.router.add_post(f"{API_PREFIX}/telemetry", handlers.telemetry)
    app.router.add_get(f"{API_PREFIX}/devices", handlers.resources.devices)
    app.router.add_get(f"{API_PREFIX}/metrics", handlers.resources.metrics)
    app.router.add_post(f"{API_PREFIX}/alerts", handlers.resources.alerts)
    return app


class LocalApi:
    """Runs the fake API on a TCP port for the duration of an ``async with`` block.

    Attributes:
        store: The `ApiStore` the server records into.
        notifier: The webhook caller of the alert rules (counters ``fired``, ``sent``,
            ``failed``, ``dropped``).
    """

    def __init__(
        self,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit_per_minute: int | None = TELEMETRY_REQUESTS_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], float] = time.time,
        store: ApiStore | None = None,
        faults: Faults | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: EndpointLimits | None = None,
        thresholds: StatusThresholds | None = None,
    ) -> None:
        """Prepares the server; nothing listens until the block is entered.

        Args:
            token: The only Bearer token accepted.
            host: Address to bind; use an IP literal, since with port 0 a name that resolves
                to several addresses would get a different free port on each.
            port: TCP port; 0 picks a free one.
            rate_limit_per_minute: See `create_app`.
            clock: See `create_app`.
            wall_clock: See `create_app`.
            store: A store to record into; a fresh one by default.
            faults: See `create_app`.
            ssl_context: Serve HTTPS with this server context (tests of TLS to the API).
            limits: See `create_app`.
            thresholds: Device status thresholds of a fresh store (ignored with `store`).
        """
        self.store = ApiStore(thresholds) if store is None else store
        self._app = create_app(
            self.store,
            token,
            rate_limit_per_minute,
            clock,
            wall_clock=wall_clock,
            faults=faults,
            limits=limits,
        )
        self.notifier = self._app[NOTIFIER]
        self._host = host
        self._requested_port = port
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (known once started)."""
        if self._port is None:
            raise RuntimeError("LocalApi is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8123/api/v2`` (https with TLS)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{host}:{self.port}{API_PREFIX}"

    async def settle(self) -> None:
        """Returns once every connection the server had accepted or had waiting when called is
        finished with, each request on it stored or discarded: after a client was killed, a
        snapshot of the store is then final for that client (a request it sent just before it
        died can otherwise still sit in the server's buffers and be stored a moment later).

        A request of its own goes through first: the kernel hands out waiting connections in
        the order they were made, so once it is answered every earlier one has been taken in.
        """
        if self._runner is None or self._runner.server is None:
            raise RuntimeError("LocalApi is not running")
        await take_in_waiting(self._host, self.port, tls=self._ssl_context is not None)
        server = self._runner.server
        # aiohttp's Server signals no connection's end, so it is polled.
        while server.connections:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Self:
        """Binds and starts serving."""
        # A short shutdown grace: a fake server should not hold a test for aiohttp's 60 s.
        runner = web.AppRunner(self._app, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self._host, self._requested_port, ssl_context=self._ssl_context
            )
            await site.start()
            self._port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stops serving and closes open connections."""
        if self._runner is not None:  # see bridge/serving.py
            await before_close(self._host, self.port, tls=self._ssl_context is not None)
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()


async def serve_forever(
    host: str,
    port: int,
    token: str,
    rate_limit_per_minute: int | None,
    faults: Faults | None = None,
    *,
    limits: EndpointLimits | None = None,
    thresholds: StatusThresholds | None = None,
) -> None:
    """Serves the fake API until cancelled, printing its URL (never the token) once.

    Backs ``metriqo-bridge simulate-api``. With `faults`, prints their one-line summary too.
    """
    async with LocalApi(
        token,
        host,
        port,
        rate_limit_per_minute,
        faults=faults,
        limits=limits,
        thresholds=thresholds,
    ) as api:
        effective = limits or EndpointLimits(telemetry=rate_limit_per_minute)
        print(
            f"Metriqo-compatible API listening on {api.url} (rate limits: {effective.describe()})"
        )
        if faults is not None:
            print(faults.summary())
        await asyncio.get_running_loop().create_future()
