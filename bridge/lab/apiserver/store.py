"""What the local API server keeps in memory: every request as it arrived (for tests to assert
on), the points it stored, the device registry (:mod:`bridge.lab.apiserver.devices`), the alert
rules (:mod:`bridge.lab.apiserver.alerts`), and the aggregation of GET /metrics. No aiohttp: the
server in :mod:`bridge.lab.apiserver.server` is the shell around it.

Tests change it "behind the bridge's back" as a user of the dashboard or a data loss would:
:meth:`ApiStore.register_device` (a device with a label, perhaps silent) and
:meth:`ApiStore.delete_points`."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bridge.lab.apiserver.alerts import AlertBook
from bridge.lab.apiserver.devices import DeviceRegistry, StatusThresholds
from bridge.lab.apiserver.faults import FaultName
from bridge.lab.apiserver.validation import (
    JsonValue,
    format_timestamp,
)


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
        points_written: Data points stored (0 unless the status is 201, or 500 from the
            ``record_then_500`` fault).
        fault: The injected fault (`bridge.lab.apiserver.faults.FaultName`) that answered or
            delayed the request, None for a normal answer. A ``hang`` record has status 0:
            the request was never answered.
    """

    received_at: float
    received_wall: datetime
    status: int
    authorization: str | None = field(repr=False)
    idempotency_key: str | None
    content_type: str | None
    body: JsonValue | bytes
    points_written: int
    fault: FaultName | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One request to ``GET /devices``, ``GET /metrics`` or ``POST /alerts``.

    Attributes:
        endpoint: ``devices``, ``metrics`` or ``alerts``.
        received_at: The server clock at receipt (the rate limiter's clock).
        status: HTTP status the server answered with.
        retry_after: The ``Retry-After`` of a 429, in seconds.
        authorization: The Authorization header as sent (kept out of repr: it holds a token).
        query: The query string as sent (``page=2&per_page=100``).
    """

    endpoint: str
    received_at: float
    status: int
    retry_after: int | None = None
    authorization: str | None = field(default=None, repr=False)
    query: str = ""


@dataclass(frozen=True, slots=True)
class _Sample:
    point: StoredPoint
    fraction_digits: int


class ApiStore:
    """In-memory state of the fake API: devices, accepted points and a log of requests."""

    def __init__(self, thresholds: StatusThresholds | None = None) -> None:
        """Creates an empty store; ``thresholds`` derive the devices' status."""
        self._requests: list[RequestRecord] = []
        self._calls: list[CallRecord] = []
        self._samples: list[_Sample] = []
        self.registry = DeviceRegistry(thresholds)
        self.alerts = AlertBook()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def calls(self) -> list[CallRecord]:
        """Every request to the other endpoints, in arrival order (a copy)."""
        return list(self._calls)

    def record_call(self, record: CallRecord) -> None:
        """Appends a request to the log of the other endpoints (called by the server)."""
        self._calls.append(record)

    def register_device(
        self,
        device_id: str,
        label: str | None = None,
        *,
        created_at: datetime | None = None,
        last_seen: datetime | None = None,
    ) -> None:
        """Registers a device as a user of the dashboard would: with a label, and perhaps
        never seen (``last_seen`` None: inactive). ``created_at`` defaults to now."""
        created = created_at or datetime.now(UTC)
        self.registry.register(device_id, label, created, last_seen)

    def delete_points(
        self,
        device_id: str,
        metric: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> int:
        """Deletes stored points of a device (one metric, or all; ``start <= t < end`` when
        given), as a data loss on the API's side would; returns how many. The request log
        keeps what was sent: only what GET /metrics answers changes."""

        def doomed(p: StoredPoint) -> bool:
            return (
                p.device_id == device_id
                and (metric is None or p.metric == metric)
                and (start is None or p.timestamp >= start)
                and (end is None or p.timestamp < end)
            )

        kept = [sample for sample in self._samples if not doomed(sample.point)]
        removed = len(self._samples) - len(kept)
        self._samples = kept
        return removed

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
            self.registry.seen(point.device_id, received_wall)
        count = len(self._samples)
        for n, waiter in self._waiters:
            if count >= n and not waiter.done():
                waiter.set_result(None)

    def device_rows(self, now: datetime) -> list[dict[str, JsonValue]]:
        """Returns every device as the API lists it, sorted by device_id."""
        return self.registry.rows(now)

    def has_device(self, device_id: str) -> bool:
        """Tells whether the device is registered (telemetry was accepted, or it was
        registered in advance)."""
        return device_id in self.registry

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


def row(t: str, values: list[float]) -> dict[str, object]:
    return {"t": t, "avg": math.fsum(values) / len(values), "min": min(values), "max": max(values)}


def aggregate(series: list[tuple[StoredPoint, int]], interval: int) -> list[dict[str, object]]:
    # Integer microseconds since the epoch: float seconds would misplace points at bucket edges.
    step = interval * 1_000_000
    buckets: dict[int, list[float]] = {}
    for point, _ in series:
        micros = (point.timestamp - _EPOCH) // _MICROSECOND
        buckets.setdefault(micros - micros % step, []).append(point.value)
    # Series is ascending, so the buckets were created in ascending order too.
    return [
        row(format_timestamp(_EPOCH + timedelta(microseconds=start)), values)
        for start, values in buckets.items()
    ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
