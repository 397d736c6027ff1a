"""Tests of the fault modes of the local API server, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
import pytest

from bridge.cli.main import build_parser
from bridge.lab.apiserver.faults import Faults, RetryAfterForm
from bridge.lab.apiserver.server import LocalApi, serve_forever
from tests.support.clock import FakeClock

TOKEN = "mqk_test_faults_7d1e"
ROTATED = "mqk_test_rotated_42ab"
WAIT = 5.0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


def reading(device_id: str, **metrics: float) -> dict[str, object]:
    return {"device_id": device_id, "timestamp": "2024-11-15T08:00:00Z", "metrics": metrics}


@asynccontextmanager
async def serve(faults: Faults) -> AsyncIterator[tuple[LocalApi, aiohttp.ClientSession]]:
    async with LocalApi(TOKEN, faults=faults) as api, aiohttp.ClientSession() as session:
        yield api, session


async def post(
    session: aiohttp.ClientSession,
    api: LocalApi,
    body: object,
    *,
    token: str = TOKEN,
    timeout: float = WAIT,
) -> Reply:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with (
        asyncio.timeout(timeout),
        session.post(f"{api.url}/telemetry", data=orjson.dumps(body), headers=headers) as resp,
    ):
        return Reply(resp.status, dict(resp.headers), orjson.loads(await resp.read()))


async def test_error_rate_rotates_5xx_and_stores_nothing() -> None:
    """A seeded error rate answers 500/502/503 in turn and stores no point for them."""
    seed = 7
    draws = random.Random(seed)
    expected_fail = [draws.random() < 0.5 for _ in range(12)]
    async with serve(Faults(error_rate=0.5, rng=random.Random(seed))) as (api, session):
        statuses = [(await post(session, api, reading("d1", t=i))).status for i in range(12)]
    failed = [s for s in statuses if s != 201]
    assert [s != 201 for s in statuses] == expected_fail
    assert failed == [(500, 502, 503)[i % 3] for i in range(len(failed))]
    assert len(failed) >= 3
    assert api.store.point_count() == statuses.count(201)
    faults = [(r.status, r.fault, r.points_written) for r in api.store.requests]
    assert all((f, w) == ("error_rate", 0) for s, f, w in faults if s != 201)
    assert all(f is None for s, f, _ in faults if s == 201)


async def test_record_then_500_stores_points_before_failing() -> None:
    """record_then_500 stores the points, answers 500, and a resend duplicates them."""
    async with serve(Faults(record_then_500=1.0, rng=random.Random(1))) as (api, session):
        body = [reading("d1", a=1.0, b=2.0)]
        first = await post(session, api, body)
        second = await post(session, api, body)
    assert (first.status, second.status) == (500, 500)
    assert first.body["error"] == "server_error"
    assert api.store.point_count() == 4
    assert [r.fault for r in api.store.requests] == ["record_then_500"] * 2
    assert [r.points_written for r in api.store.requests] == [2, 2]


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("seconds", "3"),
        ("zero", "0"),
        ("garbage", "soon, probably"),
        ("missing", None),
        ("huge", "86400000"),
    ],
)
async def test_429_storm_retry_after_forms(form: RetryAfterForm, expected: str | None) -> None:
    """During the storm every request gets 429 with the chosen Retry-After form, then 201."""
    clock = FakeClock()
    faults = Faults(storm_429_s=3.0, retry_after=form, clock=clock)
    async with serve(faults) as (api, session):
        clock.advance(0.5)
        stormy = await post(session, api, [reading("d1", t=1.0)])
        clock.advance(2.5)
        calm = await post(session, api, [reading("d1", t=1.0)])
    assert stormy.status == 429
    assert stormy.headers.get("Retry-After") == expected
    assert calm.status == 201
    assert [r.fault for r in api.store.requests] == ["storm_429", None]
    assert api.store.point_count() == 1


async def test_429_storm_http_date_points_past_the_storm_end() -> None:
    """The http-date form is an RFC 7231 GMT date no earlier than the storm's end."""
    clock = FakeClock()
    wall = FakeClock(1_700_000_000.25)
    faults = Faults(storm_429_s=10.0, retry_after="http-date", clock=clock, wall_clock=wall)
    async with serve(faults) as (api, session):
        clock.advance(4.0)
        reply = await post(session, api, [reading("d1", t=1.0)])
    assert reply.status == 429
    header = reply.headers["Retry-After"]
    assert header.endswith(" GMT")
    at = parsedate_to_datetime(header)
    assert at == datetime.fromtimestamp(1_700_000_007, UTC)
    assert api.store.requests[0].fault == "storm_429"


async def test_latency_delays_the_headers() -> None:
    """latency_s holds the response back, and the request is still stored."""
    async with serve(Faults(latency_s=0.2)) as (api, session):
        start = time.monotonic()
        reply = await post(session, api, [reading("d1", t=1.0)])
        elapsed = time.monotonic() - start
    assert reply.status == 201
    assert elapsed >= 0.2
    assert api.store.requests[0].fault == "latency"
    assert api.store.point_count() == 1


async def test_slow_body_trickles_the_response() -> None:
    """slow_body_bps streams the body so its duration follows its size."""
    async with serve(Faults(slow_body_bps=400)) as (api, session):
        start = time.monotonic()
        reply = await post(session, api, [reading("d1", t=1.0)])
        elapsed = time.monotonic() - start
    size = len(orjson.dumps(reply.body))
    assert reply.status == 201
    assert reply.body["points_written"] == 1
    assert elapsed >= size / 400 * 0.8
    assert api.store.requests[0].fault == "slow_body"


async def test_hang_never_answers() -> None:
    """hang reads the request and never answers; the client times out, nothing is stored."""
    async with serve(Faults(hang=True)) as (api, session):
        with pytest.raises(TimeoutError):
            await post(session, api, [reading("d1", t=1.0)], timeout=0.3)
    assert api.store.point_count() == 0
    [record] = api.store.requests
    assert (record.status, record.fault) == (0, "hang")


async def test_unauthorized_until_rotated_token_is_seen() -> None:
    """401 until the rotated token arrives; then only it is accepted, and it is never echoed."""
    async with serve(Faults(unauthorized_until_token=ROTATED)) as (api, session):
        before = await post(session, api, [reading("d1", t=1.0)])
        rotated = await post(session, api, [reading("d1", t=2.0)], token=ROTATED)
        old = await post(session, api, [reading("d1", t=3.0)])
        again = await post(session, api, [reading("d1", t=4.0)], token=ROTATED)
    assert [r.status for r in (before, rotated, old, again)] == [401, 201, 401, 201]
    assert before.body == {"error": "unauthorized", "message": "Invalid or expired API token."}
    assert before.headers["WWW-Authenticate"] == "Bearer"
    assert ROTATED not in orjson.dumps(old.body).decode()
    assert [r.fault for r in api.store.requests] == [
        "unauthorized_until_token",
        None,
        "unauthorized_until_token",
        None,
    ]
    assert [p.value for p in api.store.points()] == [2.0, 4.0]
    assert ROTATED not in repr(Faults(unauthorized_until_token=ROTATED))
    assert ROTATED not in Faults(unauthorized_until_token=ROTATED).summary()


async def test_max_points_413_rejects_big_batches() -> None:
    """More points than max_points_413 gets 413 with a JSON body; the limit itself passes."""
    async with serve(Faults(max_points_413=3)) as (api, session):
        big = await post(session, api, [reading("d1", a=1, b=2), reading("d2", c=3, d=4)])
        ok = await post(session, api, [reading("d1", a=1, b=2), reading("d2", c=3)])
    assert big.status == 413
    assert big.body["error"] == "payload_too_large"
    assert "4 data points" in big.body["message"]
    assert ok.status == 201
    assert [r.fault for r in api.store.requests] == ["max_points_413", None]
    assert api.store.point_count() == 3


async def test_poison_value_names_the_object_index() -> None:
    """A point equal to poison_value gets 400 naming its index; the batch stores nothing."""
    async with serve(Faults(poison_value=-999.0)) as (api, session):
        body = [reading("d1", a=1.0), reading("d2", a=2.0), reading("d3", b=-999.0)]
        bad = await post(session, api, body)
        good = await post(session, api, body[:2])
    assert bad.status == 400
    assert bad.body["error"] == "bad_request"
    assert bad.body["message"].startswith('body[2].metrics["b"]')
    assert good.status == 201
    assert [r.fault for r in api.store.requests] == ["poison_value", None]
    assert api.store.point_count() == 2


def test_faults_are_off_by_default_and_validated() -> None:
    """Default Faults inject nothing; out-of-range settings are refused."""
    assert Faults().summary() == "faults: none"
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError, match="latency_s"):
        Faults(latency_s=-1)


async def test_serve_forever_prints_the_fault_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """serve_forever prints a one-line summary of the active faults, never the token."""
    faults = Faults(error_rate=0.3, unauthorized_until_token=ROTATED, storm_429_s=5.0)
    task = asyncio.create_task(serve_forever("127.0.0.1", 0, TOKEN, None, faults))
    async with asyncio.timeout(WAIT):
        while "faults:" not in (out := capsys.readouterr().out):
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [line] = [line for line in out.splitlines() if line.startswith("faults:")]
    assert "error-rate 0.3" in line
    assert "429 storm 5 s" in line
    assert ROTATED not in out
    assert TOKEN not in out


def test_simulate_api_parses_fault_flags() -> None:
    """The simulate-api fault flags parse into the arguments _simulate_api reads."""
    args = build_parser().parse_args(
        [
            "simulate-api",
            "--error-rate", "0.3",
            "--record-then-500", "0.1",
            "--429-storm", "60",
            "--retry-after", "http-date",
            "--latency", "0.5",
            "--slow-body", "10",
            "--hang",
            "--max-points-413", "50",
            "--poison-value", "-1",
        ]
    )  # fmt: skip
    assert (args.error_rate, args.record_then_500, args.storm_429) == (0.3, 0.1, 60.0)
    assert (args.retry_after, args.latency, args.slow_body, args.hang) == (
        "http-date",
        0.5,
        10,
        True,
    )
    assert (args.max_points_413, args.poison_value) == (50, -1.0)
    assert args.unauthorized_until_token_file is None
