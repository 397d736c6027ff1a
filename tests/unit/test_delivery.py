"""The delivery loop over a real spool (tmp_path) with a fake sender: one fault at one seam.

The fake sender answers each POST from a script (success, a RetryableDelivery or a
PermanentDelivery, or a gate to hold the request open) and records when each call started, so
the tests check batching, lingering, pacing and refusals from what was sent and what the spool
still holds. Pacing decisions are checked directly on the pacer, with fake time, in
``test_pacer.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import orjson
import pytest

from bridge.delivery import Delivery
from bridge.errors import DeliveryError, PermanentDelivery, RetryableDelivery, UnsendableRequest
from bridge.metrics import BridgeMetrics
from bridge.models import Record
from bridge.sender import Sender
from bridge.settings import DeliverySettings, SpoolSettings
from bridge.spool.facade import AsyncSpool
from bridge.spool.store import Spool
from tests.support.waiting import running, until

T0_US = 1_731_657_600_000_000  # 2024-11-15T08:00:00Z
DEADLINE_S = 10.0
FAST = {"requests_per_minute": 1e6, "retry_min_s": 0.01, "retry_max_s": 0.05}

Outcome = DeliveryError | asyncio.Event | Literal["ok"]


@dataclass
class Call:
    """One POST as the sender saw it."""

    at: float  # time.monotonic() when it started
    objects: list[dict[str, object]]
    key: str

    @property
    def points(self) -> int:
        return sum(len(cast(dict[str, float], o["metrics"])) for o in self.objects)

    @property
    def devices(self) -> list[str]:
        return [str(o["device_id"]) for o in self.objects]


class FakeSender:
    """Answers POSTs from ``script`` in order, then with ``refuse(objects)`` (a refusal or
    None), else success with points_written = the points sent. An Event in the script holds
    that request open until it is set."""

    def __init__(
        self,
        *script: Outcome,
        refuse: Callable[[list[dict[str, object]]], DeliveryError | None] = lambda _: None,
    ) -> None:
        self.script = list(script)
        self.refuse = refuse
        self.calls: list[Call] = []
        self.accepted: list[Call] = []

    async def post(self, objects: list[dict[str, object]], idempotency_key: str) -> int | None:
        call = Call(time.monotonic(), objects, idempotency_key)
        self.calls.append(call)
        outcome = self.script.pop(0) if self.script else self.refuse(objects) or "ok"
        if isinstance(outcome, asyncio.Event):
            await outcome.wait()
        elif isinstance(outcome, DeliveryError):
            raise outcome
        self.accepted.append(call)
        return call.points


def rec(i: int, n: int = 1, device: str | None = None) -> Record:
    """Record ``i`` with ``n`` metrics (device ``d<i>`` unless given), one second apart."""
    return Record(
        device or f"d{i}", T0_US + i * 1_000_000, {f"m{j}": float(i + j) for j in range(n)}, T0_US
    )


@pytest.fixture
async def spools(tmp_path: Path) -> AsyncIterator[tuple[Spool, AsyncSpool]]:
    """A real spool file, open: the blocking one (for inspection) and its async facade."""
    raw = Spool(SpoolSettings(tmp_path / "spool.db", reserve_bytes=0))
    async with AsyncSpool(raw) as spool:
        yield raw, spool


def make(
    spool: AsyncSpool, sender: FakeSender, **settings: object
) -> tuple[Delivery, BridgeMetrics]:
    metrics = BridgeMetrics()
    s = DeliverySettings(**{**FAST, **settings})  # type: ignore[arg-type]
    return Delivery(spool, cast(Sender, sender), metrics, s, rng=lambda: 0.0), metrics


async def add(spool: AsyncSpool, delivery: Delivery, records: list[Record]) -> None:
    """Commit records as the committer does, and tell delivery."""
    result = await spool.commit(records, [], [], [], forget_unacked=False)
    delivery.notify(result.points_inserted)


def drained(raw: Spool, delivery: Delivery) -> Callable[[], bool]:
    return lambda: delivery.idle and raw.file.depth_records == 0


def sample(metrics: BridgeMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if got is None else got


async def test_batches_never_exceed_max_points(spools: tuple[Spool, AsyncSpool]) -> None:
    """30 records of 3 points with max_points=10: every request holds at most 10 points
    (whole records), and every record is sent exactly once."""
    raw, spool = spools
    sender = FakeSender()
    delivery, _ = make(spool, sender, max_points=10, linger_s=0.05, concurrency=3)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(i, n=3) for i in range(30)])
        await until(drained(raw, delivery), "all delivered")
    assert max(c.points for c in sender.calls) == 9
    assert sorted(d for c in sender.calls for d in c.devices) == sorted(f"d{i}" for i in range(30))


async def test_delivered_records_leave_the_spool(spools: tuple[Spool, AsyncSpool]) -> None:
    """After a 2xx the records are deleted and counted as delivered."""
    raw, spool = spools
    sender = FakeSender()
    delivery, metrics = make(spool, sender, linger_s=0.0)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(1, n=2), rec(2, n=3)])
        await until(drained(raw, delivery), "delivered")
    assert raw.outbox.fetch(0, 100) == []
    assert (raw.file.depth_points, raw.file.delivered_points_total) == (0, 5)
    assert sample(metrics, "metriqo_bridge_points_delivered_total") == 5
    assert len(sender.calls) == 1


async def test_partial_batch_waits_linger_then_goes(spools: tuple[Spool, AsyncSpool]) -> None:
    """A batch below max_points is sent no earlier than linger_s after the points arrived,
    and then in one request."""
    raw, spool = spools
    sender = FakeSender()
    delivery, _ = make(spool, sender, linger_s=0.3)
    async with running(delivery.run()):
        start = time.monotonic()
        await add(spool, delivery, [rec(1), rec(2), rec(3)])
        await until(drained(raw, delivery), "sent after the linger")
    assert len(sender.calls) == 1
    assert sender.calls[0].devices == ["d1", "d2", "d3"]
    assert sender.calls[0].at - start >= 0.3


async def test_full_batch_goes_without_lingering(spools: tuple[Spool, AsyncSpool]) -> None:
    """max_points waiting go at once, though linger_s is an hour."""
    raw, spool = spools
    sender = FakeSender()
    delivery, _ = make(spool, sender, linger_s=3600.0, max_points=10)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(i, n=2) for i in range(5)])
        await until(drained(raw, delivery), "a full batch sent")
    assert [c.points for c in sender.calls] == [10]


async def test_flush_sends_without_lingering(spools: tuple[Spool, AsyncSpool]) -> None:
    """A partial batch lingers (an hour here) until flush() sends it at once."""
    raw, spool = spools
    sender = FakeSender()
    delivery, _ = make(spool, sender, linger_s=3600.0)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(1), rec(2)])
        await asyncio.sleep(0.1)
        assert sender.calls == []
        delivery.flush()
        await until(drained(raw, delivery), "flushed")
    assert [c.devices for c in sender.calls] == [["d1", "d2"]]


async def test_retryable_failure_resends_the_same_batch(spools: tuple[Spool, AsyncSpool]) -> None:
    """A 503 is retried with the same objects and Idempotency-Key, and nothing is lost."""
    raw, spool = spools
    sender = FakeSender(RetryableDelivery("API server error 503", status=503))
    delivery, _ = make(spool, sender, linger_s=0.0)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(1, n=2)])
        await until(drained(raw, delivery), "delivered after the retry")
    first, second = sender.calls
    assert (first.objects, first.key) == (second.objects, second.key)


async def test_429_pauses_every_slot_until_retry_after(spools: tuple[Spool, AsyncSpool]) -> None:
    """After a 429 with Retry-After 0.5 s no request of any slot starts earlier than 0.5 s
    later; the pause is counted; the request rate is halved, and doubles back to the share a
    recovery period (1 s, the floor) after the first 2xx."""
    raw, spool = spools
    sender = FakeSender(RetryableDelivery("API rate limit (429)", status=429, retry_after=0.5))
    delivery, metrics = make(spool, sender, linger_s=0.0, max_points=1, concurrency=2)
    start_rate = sample(metrics, "metriqo_bridge_api_pacing_rate_requests_per_second")
    async with running(delivery.run()):
        await add(spool, delivery, [rec(i) for i in range(4)])
        await until(drained(raw, delivery), "delivered after the pause")
    first, *later = sender.calls
    assert len(later) == 4  # the refused batch again, and the other three
    assert min(c.at for c in later) >= first.at + 0.5
    assert sample(metrics, "metriqo_bridge_api_rate_limited_pause_seconds_total") == 0.5
    # Halved once, each acceptance adding a fiftieth back, until the doubling a second later.
    rate = sample(metrics, "metriqo_bridge_api_pacing_rate_requests_per_second")
    if time.monotonic() < sender.accepted[0].at + 1.0:
        assert rate == pytest.approx(start_rate / 2 + 4 * start_rate / 50)
    await until(
        lambda: (
            sample(metrics, "metriqo_bridge_api_pacing_rate_requests_per_second")
            == pytest.approx(start_rate)
        ),
        "back at the share",
    )


async def test_401_pauses_delivery_until_the_next_2xx(spools: tuple[Spool, AsyncSpool]) -> None:
    """A 401 sets paused_reason (and the gauge) while the retry is in flight; its 2xx
    clears both and the data is delivered, not dropped."""
    raw, spool = spools
    gate = asyncio.Event()
    refused = RetryableDelivery("API refused the token (401); delivery paused", status=401)
    sender = FakeSender(refused, gate)
    delivery, metrics = make(spool, sender, linger_s=0.0)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(1)])
        await until(lambda: len(sender.calls) == 2, "the retry in flight")
        assert delivery.paused_reason == str(refused)
        assert sample(metrics, "metriqo_bridge_delivery_paused") == 1
        assert raw.file.depth_points == 1
        gate.set()
        await until(drained(raw, delivery), "delivered after the pause")
    assert delivery.paused_reason is None
    assert sample(metrics, "metriqo_bridge_delivery_paused") == 0


async def test_an_unsendable_token_pauses_and_counts_until_it_is_fixed(
    spools: tuple[Spool, AsyncSpool],
) -> None:
    """A request that cannot be built (a token no header can carry) pauses delivery like a
    401 and counts token_unusable_total{reason="send"}, not an API request; the data waits
    and goes with the next usable token."""
    raw, spool = spools
    unsendable = UnsendableRequest("the API token cannot be sent: it holds a line break")
    sender = FakeSender(unsendable, unsendable)
    delivery, metrics = make(spool, sender, linger_s=0.0)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(1)])
        await until(drained(raw, delivery), "delivered once the token is usable")
    assert len(sender.calls) == 3
    assert sample(metrics, "metriqo_bridge_token_unusable_total", reason="send") == 2
    assert sample(metrics, "metriqo_bridge_api_requests_total", status_class="error") == 0
    assert delivery.paused_reason is None
    assert sample(metrics, "metriqo_bridge_delivery_paused") == 0


async def test_an_unsendable_token_sets_the_pause_reason(
    spools: tuple[Spool, AsyncSpool],
) -> None:
    """While the token cannot be sent, /readyz's reason and the paused gauge say so."""
    raw, spool = spools
    unsendable = UnsendableRequest("the API token cannot be sent: it holds a line break")
    gate = asyncio.Event()
    sender = FakeSender(unsendable, gate)
    delivery, metrics = make(spool, sender, linger_s=0.0)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(1)])
        await until(lambda: len(sender.calls) == 2, "the retry in flight")
        assert delivery.paused_reason == str(unsendable)
        assert sample(metrics, "metriqo_bridge_delivery_paused") == 1
        assert raw.file.depth_points == 1
        gate.set()
        await until(drained(raw, delivery), "delivered after the pause")


def refuse_device(device: str) -> Callable[[list[dict[str, object]]], DeliveryError | None]:
    def refuse(objects: list[dict[str, object]]) -> DeliveryError | None:
        if any(o["device_id"] == device for o in objects):
            return PermanentDelivery("API rejected the batch (400)", status=400, body="bad d2")
        return None

    return refuse


async def test_400_is_bisected_to_the_refused_record(spools: tuple[Spool, AsyncSpool]) -> None:
    """A 400 on four records: only the refused one becomes a dead letter (with the API's
    answer), the other three are delivered once each, and the spool is empty."""
    raw, spool = spools
    sender = FakeSender(refuse=refuse_device("d2"))
    delivery, metrics = make(spool, sender, linger_s=0.0)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(i) for i in range(4)])
        await until(drained(raw, delivery), "settled")
    assert sorted(d for c in sender.accepted for d in c.devices) == ["d0", "d1", "d3"]
    dead = raw.dead_letters.recent()
    assert len(dead) == 1
    _at, reason, _rule, _topic, payload, detail = dead[0]
    assert (reason, detail) == ("api_rejected", "HTTP 400: bad d2")
    assert orjson.loads(payload)["device_id"] == "d2"
    assert raw.file.depth_records == 0
    assert sample(metrics, "metriqo_bridge_dead_letters_total", reason="api_rejected") == 1
    assert sample(metrics, "metriqo_bridge_points_delivered_total") == 3


async def test_400_on_one_record_is_bisected_by_metric(spools: tuple[Spool, AsyncSpool]) -> None:
    """A refused record of four metrics: the good three are delivered, only the refused metric
    is dead-lettered."""
    raw, spool = spools

    def refuse(objects: list[dict[str, object]]) -> DeliveryError | None:
        if any("m2" in cast(dict[str, float], o["metrics"]) for o in objects):
            return PermanentDelivery("API rejected the batch (422)", status=422, body="m2")
        return None

    sender = FakeSender(refuse=refuse)
    delivery, metrics = make(spool, sender, linger_s=0.0)
    async with running(delivery.run()):
        await add(spool, delivery, [rec(1, n=4)])
        await until(drained(raw, delivery), "settled")
    sent = sorted(
        m for c in sender.accepted for o in c.objects for m in cast(dict[str, float], o["metrics"])
    )
    assert sent == ["m0", "m1", "m3"]
    (dead,) = raw.dead_letters.recent()
    assert orjson.loads(dead[4])["metrics"] == {"m2": 3.0}
    assert sample(metrics, "metriqo_bridge_points_delivered_total") == 3
