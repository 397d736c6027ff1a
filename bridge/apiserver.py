"""A local Metriqo-compatible API server for tests, the demo and dry runs.

Serves ``POST /telemetry``, ``GET /devices`` and ``GET /metrics`` of the v2 contract
(``shared/metriqo-api-v2.md``) from memory, and records every telemetry request in an `ApiStore`
so tests can assert on what the bridge actually sent. Request parsing lives in
`bridge.apiserver_validation`; this module is the aiohttp shell, the store and the rate limiter.

Example:
    async with LocalApi(token="t") as api:
        ...  # point a sender at api.url
        await api.store.wait_for_points(4, timeout=5)

The token is never logged, printed or put into an error message.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Self

import orjson
from aiohttp import web

from bridge.apiserver_validation import (
    JsonValue,
    ParsedTimestamp,
    RequestError,
    check_bearer,
    decode_json,
    format_timestamp,
    parse_devices_query,
    parse_metrics_query,
    validate_telemetry,
)

API_PREFIX = "/api/v2"
RATE_WINDOW_SECONDS = 60.0
ONLINE_WITHIN = timedelta(minutes=5)
OFFLINE_WITHIN = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """One accepted data point: a single metric value of one device at one instant."""

    device_id: str
    metric: str
    timestamp: datetime
    value: float


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request received on ``POST /telemetry``, whatever its outcome.

    Attributes:
        received_at: The server clock at receipt (`time.monotonic` unless a clock was injected).
        received_wall: Wall-clock time of receipt, UTC.
        status: HTTP status the server answered with.
        authorization: The Authorization header as sent (kept out of repr: it holds a token).
        idempotency_key: The Idempotency-Key header, if any.
        content_type: The Content-Type header, if any.
        body: The parsed JSON body, or the raw bytes when it was not JSON.
        points_written: Data points accepted (0 unless the status is 201).
    """

    received_at: float
    received_wall: datetime
    status: int
    authorization: str | None = field(repr=False)
    idempotency_key: str | None
    content_type: str | None
    body: JsonValue | bytes
    points_written: int


@dataclass(slots=True)
class _Device:
    created_at: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class _Sample:
    point: StoredPoint
    fraction_digits: int


class ApiStore:
    """In-memory state of the fake API: devices, accepted points and a log of requests."""

    def __init__(self) -> None:
        """Creates an empty store."""
        self._requests: list[RequestRecord] = []
        self._samples: list[_Sample] = []
        self._devices: dict[str, _Device] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def requests(self) -> list[RequestRecord]:
        """Every telemetry request received, in arrival order (a copy)."""
        return list(self._requests)

    def points(self) -> list[StoredPoint]:
        """Returns every accepted point in arrival order."""
        return [sample.point for sample in self._samples]

    def point_count(self) -> int:
        """Returns the number of accepted points."""
        return len(self._samples)

    # A plain timeout argument is the documented test-facing API; asyncio.timeout applies it.
    async def wait_for_points(self, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Waits until at least `n` points have been accepted.

        Raises:
            TimeoutError: Fewer than `n` points arrived within `timeout` seconds.
        """
        if len(self._samples) >= n:
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (n, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError as exc:
            msg = f"{len(self._samples)} of {n} points arrived within {timeout} s"
            raise TimeoutError(msg) from exc
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def record_request(self, record: RequestRecord) -> None:
        """Appends a request to the log (called by the server)."""
        self._requests.append(record)

    def add_points(self, points: list[tuple[StoredPoint, int]], received_wall: datetime) -> None:
        """Stores accepted points and registers their devices (called by the server).

        Args:
            points: (point, fractional-second digits it was written with) pairs.
            received_wall: Wall-clock time of receipt; drives last_seen and device status.
        """
        for point, digits in points:
            self._samples.append(_Sample(point, digits))
            device = self._devices.setdefault(
                point.device_id, _Device(received_wall, received_wall)
            )
            device.last_seen = max(device.last_seen, received_wall)
        count = len(self._samples)
        for n, waiter in self._waiters:
            if count >= n and not waiter.done():
                waiter.set_result(None)

    def device_rows(self, now: datetime) -> list[dict[str, JsonValue]]:
        """Returns every device as the API lists it, sorted by device_id."""
        return [
            {
                "device_id": device_id,
                "label": device_id,
                "status": _device_status(now - device.last_seen),
                "last_seen": format_timestamp(device.last_seen),
                "created_at": format_timestamp(device.created_at),
            }
            for device_id, device in sorted(self._devices.items())
        ]

    def has_device(self, device_id: str) -> bool:
        """Tells whether any point was ever accepted for `device_id`."""
        return device_id in self._devices

    def series(
        self, device_id: str, metric: str, start: datetime, end: datetime
    ) -> list[tuple[StoredPoint, int]]:
        """Returns (point, fraction digits) with start <= timestamp < end, ascending, stable."""
        found = [
            (s.point, s.fraction_digits)
            for s in self._samples
            if s.point.device_id == device_id
            and s.point.metric == metric
            and start <= s.point.timestamp < end
        ]
        # Stable sort: duplicates (e.g. a replayed batch) stay visible in arrival order.
        return sorted(found, key=lambda pair: pair[0].timestamp)


def _device_status(age: timedelta) -> str:
    if age <= ONLINE_WITHIN:
        return "online"
    return "offline" if age <= OFFLINE_WITHIN else "inactive"


class _WindowLimiter:
    """Sliding 60 s window log: at most `limit` admitted requests in any 60 s span."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._admitted: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        """Admits a request at `now`, or returns the seconds until one would be admitted."""
        while self._admitted and self._admitted[0] <= now - RATE_WINDOW_SECONDS:
            self._admitted.popleft()
        if len(self._admitted) < self._limit:
            self._admitted.append(now)
            return None
        if not self._admitted:  # limit 0: nothing ever gets in
            return RATE_WINDOW_SECONDS
        return self._admitted[0] + RATE_WINDOW_SECONDS - now


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def _error(exc: RequestError) -> web.Response:
    # RFC 6750: a 401 names the scheme the client should use.
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return _json(exc.status, {"error": exc.code, "message": exc.message}, headers)


def _row(t: str, values: list[float]) -> dict[str, object]:
    return {"t": t, "avg": math.fsum(values) / len(values), "min": min(values), "max": max(values)}


def _aggregate(series: list[tuple[StoredPoint, int]], interval: int) -> list[dict[str, object]]:
    # Integer microseconds since the epoch: float seconds would misplace points at bucket edges.
    step = interval * 1_000_000
    buckets: dict[int, list[float]] = {}
    for point, _ in series:
        micros = (point.timestamp - _EPOCH) // _MICROSECOND
        buckets.setdefault(micros - micros % step, []).append(point.value)
    # Series is ascending, so the buckets were created in ascending order too.
    return [
        _row(format_timestamp(_EPOCH + timedelta(microseconds=start)), values)
        for start, values in buckets.items()
    ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class _Handlers:
    """Request handlers bound to one app's store, token, limiter and clocks."""

    def __init__(
        self,
        store: ApiStore,
        token: str,
        rate_limit_per_minute: int | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._token = token
        self._limit = rate_limit_per_minute
        # Only one token is valid, so a single window is the per-token window.
        self._limiter = (
            None if rate_limit_per_minute is None else _WindowLimiter(rate_limit_per_minute)
        )
        self._clock = clock
        self._wall_clock = wall_clock

    def _now_wall(self) -> datetime:
        return datetime.fromtimestamp(self._wall_clock(), UTC)

    def _check_auth(self, request: web.Request) -> None:
        check_bearer(request.headers.get("Authorization"), self._token)

    async def telemetry(self, request: web.Request) -> web.Response:
        received_at = self._clock()
        received_wall = self._now_wall()
        body: JsonValue | bytes = b""
        written = 0
        try:
            body = await request.read()
            parsed: JsonValue | RequestError
            try:
                parsed = decode_json(body)
                body = parsed
            except RequestError as exc:
                parsed = exc
            response, written = self._ingest(request, parsed, received_at, received_wall)
        except web.HTTPRequestEntityTooLarge as exc:
            response = _json(413, {"error": "payload_too_large", "message": exc.text})
        except RequestError as exc:
            response = _error(exc)
        self._store.record_request(
            RequestRecord(
                received_at=received_at,
                received_wall=received_wall,
                status=response.status,
                authorization=request.headers.get("Authorization"),
                idempotency_key=request.headers.get("Idempotency-Key"),
                content_type=request.headers.get("Content-Type"),
                body=body,
                points_written=written,
            )
        )
        return response

    def _ingest(
        self,
        request: web.Request,
        parsed: JsonValue | RequestError,
        received_at: float,
        received_wall: datetime,
    ) -> tuple[web.Response, int]:
        # Order as a real gateway would: identity, then quota, then payload.
        self._check_auth(request)
        if self._limiter is not None:
            wait = self._limiter.admit(received_at)
            if wait is not None:
                retry_after = max(1, math.ceil(wait))
                message = (
                    f"Rate limit of {self._limit} requests per minute exceeded; "
                    f"retry after {retry_after} s."
                )
                payload: dict[str, object] = {"error": "rate_limited", "message": message}
                return _json(429, payload, {"Retry-After": str(retry_after)}), 0
        if isinstance(parsed, RequestError):
            raise parsed
        items = validate_telemetry(parsed)
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
        accepted: dict[str, object] = {
            "status": "accepted",
            "points_written": len(points),
            "device_id": items[0].device_id,
            "devices": len({item.device_id for item in items}),
        }
        return _json(201, accepted), len(points)

    async def devices(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
            query = parse_devices_query(list(request.query.items()))
        except RequestError as exc:
            return _error(exc)
        rows = self._store.device_rows(self._now_wall())
        if query.status is not None:
            rows = [row for row in rows if row["status"] == query.status]
        first = (query.page - 1) * query.per_page
        pagination = {"page": query.page, "per_page": query.per_page, "total": len(rows)}
        return _json(200, {"data": rows[first : first + query.per_page], "pagination": pagination})

    async def metrics(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
            query = parse_metrics_query(list(request.query.items()))
            if not self._store.has_device(query.device_id):
                raise RequestError("No device with that device_id.", code="not_found", status=404)
        except RequestError as exc:
            return _error(exc)
        series = self._store.series(query.device_id, query.metric, query.start, query.end)
        if query.interval is None:
            data = [_row(format_timestamp(p.timestamp, d), [p.value]) for p, d in series]
        else:
            data = _aggregate(series, query.interval)
        payload = {"device_id": query.device_id, "metric": query.metric}
        return _json(200, {**payload, "interval": query.interval_name, "data": data})


def create_app(
    store: ApiStore,
    token: str,
    rate_limit_per_minute: int | None = 1000,
    clock: Callable[[], float] = time.monotonic,
    *,
    wall_clock: Callable[[], float] = time.time,
) -> web.Application:
    """Builds the aiohttp application serving the v2 endpoints under ``/api/v2``.

    Args:
        store: Where requests, points and devices are recorded.
        token: The only Bearer token accepted.
        rate_limit_per_minute: Admitted ``POST /telemetry`` requests per sliding 60 s window;
            None for no limit. The GET endpoints are not limited.
        clock: Monotonic seconds for the rate-limit window; inject a fake one in tests.
        wall_clock: Epoch seconds for receipt times, server stamps and device status.

    Raises:
        ValueError: An empty token or a negative rate limit.
    """
    if not token:
        raise ValueError("token must be non-empty")
    if rate_limit_per_minute is not None and rate_limit_per_minute < 0:
        raise ValueError("rate_limit_per_minute must be >= 0 or None")
    handlers = _Handlers(store, token, rate_limit_per_minute, clock, wall_clock)
    app = web.Application()
    app.router.add_post(f"{API_PREFIX}/telemetry", handlers.telemetry)
    app.router.add_get(f"{API_PREFIX}/devices", handlers.devices)
    app.router.add_get(f"{API_PREFIX}/metrics", handlers.metrics)
    return app


class LocalApi:
    """Runs the fake API on a TCP port for the duration of an ``async with`` block.

    Attributes:
        store: The `ApiStore` the server records into.
    """

    def __init__(
        self,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit_per_minute: int | None = 1000,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall_clock: Callable[[], float] = time.time,
        store: ApiStore | None = None,
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
        """
        self.store = ApiStore() if store is None else store
        self._app = create_app(
            self.store, token, rate_limit_per_minute, clock, wall_clock=wall_clock
        )
        self._host = host
        self._requested_port = port
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
        """Base URL of the API, e.g. ``http://127.0.0.1:8123/api/v2``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{API_PREFIX}"

    async def __aenter__(self) -> Self:
        """Binds and starts serving."""
        # A short shutdown grace: a fake server should not hold a test for aiohttp's 60 s.
        runner = web.AppRunner(self._app, shutdown_timeout=2.0)
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
        """Stops serving and closes open connections."""
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()


async def serve_forever(
    host: str, port: int, token: str, rate_limit_per_minute: int | None
) -> None:
    """Serves the fake API until cancelled, printing its URL (never the token) once.

    Backs ``metriqo-bridge simulate-api``.
    """
    async with LocalApi(token, host, port, rate_limit_per_minute) as api:
        limit = "none" if rate_limit_per_minute is None else f"{rate_limit_per_minute}/min"
        print(f"Metriqo-compatible API listening on {api.url} (telemetry rate limit: {limit})")
        await asyncio.get_running_loop().create_future()
