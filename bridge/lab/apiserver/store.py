"""What the local API server keeps in memory: every telemetry request as it arrived (for tests
to assert on), the points it stored, the devices it has seen, and the aggregation of GET
/metrics. No aiohttp: the server in :mod:`bridge.lab.apiserver.server` is the shell around it."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bridge.lab.apiserver.faults import FaultName
from bridge.lab.apiserver.validation import (
    JsonValue,
    format_timestamp,
)

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
                "status": device_status(now - device.last_seen),
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


def device_status(age: timedelta) -> str:
    if age <= ONLINE_WITHIN:
        return "online"
    return "offline" if age <= OFFLINE_WITHIN else "inactive"


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
