"""The API client (bridge/api) against the local API server over real loopback HTTP: paging the
registry, each endpoint's own 429 and Retry-After, the token re-read after a 401, alert rules
that fire their webhook once per crossing, validation errors, metric aggregates, and the proof
that a saturated alerts budget does not hold up telemetry."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.api.client import ApiClient, Budgets, Endpoint, RetryPolicy
from bridge.api.models import AlertRule
from bridge.config.secrets import TokenSource
from bridge.errors import (
    ApiBadResponse,
    ApiNotFound,
    ApiRateLimited,
    ApiRejected,
    ApiUnauthorized,
    ApiUnavailable,
)
from bridge.lab.apiserver.devices import StatusThresholds
from bridge.lab.apiserver.faults import Faults
from bridge.lab.apiserver.ratelimits import EndpointLimits
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.lab.webhook import WebhookReceiver
from bridge.sender import Sender
from bridge.settings import Credentials, SenderSettings
from tests.support import TOKEN
from tests.support.clock import FakeClock
from tests.support.harness import (
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)
from tests.support.oracle import wait_delivered, wait_for

WAIT = 10.0  # generous: only a bug makes loopback requests take this long
FAST = Budgets(devices=6000, metrics=6000, alerts=6000)  # above the server's: provokes 429s
QUICK_RETRY = RetryPolicy(attempts=6, backoff_min_s=0.01, backoff_max_s=0.05)
T0 = datetime(2024, 11, 15, 8, 0, tzinfo=UTC)
UNLIMITED = EndpointLimits(telemetry=None, devices=None, metrics=None, alerts=None)


def client(api: LocalApi, token: Callable[[], str] = lambda: TOKEN, **kw: Any) -> ApiClient:
    kw.setdefault("budgets", FAST)
    kw.setdefault("retry", QUICK_RETRY)
    return ApiClient(SenderSettings(base_url=api.url), token, **kw)


@contextlib.asynccontextmanager
async def client_at(url: str, **kw: Any) -> AsyncIterator[ApiClient]:
    kw.setdefault("budgets", FAST)
    kw.setdefault("retry", QUICK_RETRY)
    async with (
        asyncio.timeout(WAIT),
        ApiClient(SenderSettings(base_url=url), lambda: TOKEN, **kw) as api,
    ):
        yield api


def rule(url: str, **changes: Any) -> AlertRule:
    fields: dict[str, Any] = {
        "name": "Hot line",
        "device_id": "d1",
        "metric": "temp",
        "condition": "gt",
        "threshold": 30.0,
        "webhook_url": url,
    }
    fields.update(changes)
    return AlertRule(**fields)


async def post_values(api: LocalApi, device: str, metric_name: str, values: list[float]) -> None:
    """One telemetry request per value, a second apart from T0, through the real sender."""
    async with Sender(SenderSettings(base_url=api.url), lambda: TOKEN) as sender:
        for i, value in enumerate(values):
            stamp = (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
            obj: dict[str, object] = {
                "device_id": device,
                "timestamp": stamp,
                "metrics": {metric_name: value},
            }
            assert await sender.post([obj], f"k-{device}-{metric_name}-{i}") == 1


@pytest.fixture
async def open_api() -> AsyncIterator[LocalApi]:
    async with LocalApi(TOKEN, limits=UNLIMITED) as server:
        yield server


async def test_pages_through_250_devices_at_100_per_page(open_api: LocalApi) -> None:
    for i in range(250):
        seen = T0 if i % 5 else None  # every fifth never sent anything: inactive
        open_api.store.register_device(f"dev-{i:03d}", f"Device {i}", created_at=T0, last_seen=seen)
    async with asyncio.timeout(WAIT), client(open_api) as api:
        devices = [d async for d in api.devices()]
        inactive = [d async for d in api.devices(status="inactive")]
    assert [d.device_id for d in devices] == [f"dev-{i:03d}" for i in range(250)]
    assert devices[7].label == "Device 7"
    assert devices[7].created_at == T0
    assert devices[5].last_seen is None
    assert len(inactive) == 250  # T0 is long ago: seen or not, all are inactive now
    queries = [c.query for c in open_api.store.calls]
    assert queries[:3] == [f"page={p}&per_page=100" for p in (1, 2, 3)]
    assert len(queries) == 6  # 3 pages each, no more


async def test_device_status_follows_the_thresholds() -> None:
    thresholds = StatusThresholds(timedelta(seconds=60), timedelta(seconds=3600))
    now = T0 + timedelta(days=1)
    async with LocalApi(
        TOKEN, limits=UNLIMITED, thresholds=thresholds, wall_clock=now.timestamp
    ) as server:
        server.store.register_device("fresh", last_seen=now)
        server.store.register_device("quiet", last_seen=now - timedelta(seconds=120))
        server.store.register_device("gone", last_seen=now - timedelta(hours=2))
        async with asyncio.timeout(WAIT), client(server) as api:
            status = {d.device_id: d.status async for d in api.devices()}
            online = [d.device_id async for d in api.devices(status="online")]
    assert status == {"fresh": "online", "quiet": "offline", "gone": "inactive"}
    assert online == ["fresh"]


ENDPOINTS: list[Endpoint] = ["devices", "metrics", "alerts"]


def shared_time() -> tuple[FakeClock, Callable[[float], Awaitable[None]]]:
    """One fake monotonic clock for the server's windows and the client's pacing; the client's
    sleep moves it. Waits cost no real time, and a busy machine cannot change the outcome."""
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    return clock, sleep


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_each_endpoint_is_limited_on_its_own_and_retry_after_is_honoured(
    endpoint: Endpoint,
) -> None:
    """Each endpoint allows 2 requests per 60 s window. Five requests to one endpoint meet
    429s; each retry reaches the server no earlier than the Retry-After it was given (server
    and client share one clock); a request to another endpoint meanwhile is not limited."""
    clock, sleep = shared_time()
    limits = EndpointLimits(telemetry=None, devices=2, metrics=2, alerts=2)
    async with LocalApi(TOKEN, clock=clock, limits=limits) as server, WebhookReceiver() as hook:
        server.store.register_device("d1", last_seen=T0)
        other: Endpoint = "metrics" if endpoint != "metrics" else "devices"

        async def call(api: ApiClient, which: Endpoint) -> None:
            if which == "devices":
                await api.devices_page()
            elif which == "metrics":
                await api.metrics("d1", "temp", T0, T0 + timedelta(hours=1), "1m")
            else:
                await api.create_alert(rule(hook.url))

        async with asyncio.timeout(WAIT), client(server, clock=clock, sleep=sleep) as api:
            await call(api, endpoint)
            await call(api, endpoint)
            await call(api, other)  # its own window: not limited by the full one
            for _ in range(3):
                await call(api, endpoint)
        calls = [c for c in server.store.calls if c.endpoint == endpoint]
        assert next(c for c in server.store.calls if c.endpoint == other).status == 200
    ok = 201 if endpoint == "alerts" else 200
    assert [c.status for c in calls] == [ok, ok, 429, ok, ok, 429, ok]
    assert api.stats[endpoint].rate_limited == 2
    assert api.stats[other].rate_limited == 0
    for i in (2, 5):
        retry_after = calls[i].retry_after
        assert retry_after is not None
        assert retry_after >= 59  # the window is a minute: the API asks for most of it
        assert calls[i + 1].received_at >= calls[i].received_at + retry_after


async def test_rate_limited_until_the_attempts_run_out() -> None:
    clock, sleep = shared_time()
    limits = EndpointLimits(telemetry=None, devices=0, metrics=None, alerts=None)
    async with LocalApi(TOKEN, clock=clock, limits=limits) as server:
        retry = RetryPolicy(attempts=2, backoff_min_s=0.01, backoff_max_s=0.05)
        async with (
            asyncio.timeout(WAIT),
            client(server, retry=retry, clock=clock, sleep=sleep) as api,
        ):
            with pytest.raises(ApiRateLimited) as caught:
                await api.devices_page()
    assert caught.value.status == 429
    assert caught.value.code == "rate_limited"
    assert "GET /devices" in str(caught.value)
    assert [c.status for c in server.store.calls] == [429, 429]
    assert server.store.calls[1].received_at >= server.store.calls[0].received_at + 60


def _write_token(path: Path, token: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)


async def test_a_401_pauses_and_reads_the_rotated_token_again(tmp_path: Path) -> None:
    """The API accepts only the new token; the client holds the old one. On the 401 it
    pauses (the injected sleep rotates the file meanwhile, as an operator would) and the next
    attempt goes out with the token read again from the file."""
    new_token = "mqk_test_n3w-r0tat3d-t0ken"
    home = tmp_path / "secrets"
    home.mkdir(mode=0o700)
    token_file = home / "token"
    _write_token(token_file, TOKEN)
    source = TokenSource(Credentials(api_token_file=token_file))
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 1:
            _write_token(token_file, new_token)
        await asyncio.sleep(0)

    faults = Faults(unauthorized_until_token=new_token)
    async with LocalApi(TOKEN, limits=UNLIMITED, faults=faults) as server:
        server.store.register_device("d1", last_seen=T0)
        async with asyncio.timeout(WAIT), client(server, source, sleep=sleep) as api:
            page = await api.devices_page()
    assert [d.device_id for d in page.devices] == ["d1"]
    assert [(c.status, c.authorization) for c in server.store.calls] == [
        (401, f"Bearer {TOKEN}"),
        (200, f"Bearer {new_token}"),
    ]
    assert api.stats["devices"].auth_refused == 1
    assert len(pauses) == 1


async def test_a_token_never_accepted_ends_in_api_unauthorized_without_the_token() -> None:
    faults = Faults(unauthorized_until_token="mqk_test_0ther-t0ken")
    async with LocalApi(TOKEN, limits=UNLIMITED, faults=faults) as server:
        retry = RetryPolicy(attempts=3, backoff_min_s=0.01, backoff_max_s=0.02)
        async with asyncio.timeout(WAIT), client(server, retry=retry) as api:
            with pytest.raises(ApiUnauthorized) as caught:
                await api.devices_page()
    assert caught.value.status == 401
    assert TOKEN not in str(caught.value)
    assert [c.status for c in server.store.calls] == [401, 401, 401]


async def test_an_alert_fires_its_webhook_once_per_crossing(open_api: LocalApi) -> None:
    async with WebhookReceiver() as hook, asyncio.timeout(WAIT):
        async with client(open_api) as api:
            created = await api.create_alert(rule(hook.url))
            everywhere = await api.create_alert(
                rule(hook.url, name="Very hot", device_id="*", condition="gte", threshold=40)
            )
        assert created.id.startswith("alert_")
        assert created.name == "Hot line"
        assert created.status == "active"
        assert created.created_at is not None
        assert everywhere.id != created.id
        # d1: crosses 30 at 31 (once, though 35 and 32 stay above), re-arms at 25, crosses at
        # 33; the wildcard rule crosses 40 at 40 exactly (gte). d2 crosses 40 too; the first
        # rule names d1 only. Another metric never fires.
        await post_values(open_api, "d1", "temp", [20, 31, 35, 32, 25, 33, 40])
        await post_values(open_api, "d2", "temp", [41, 39])
        await post_values(open_api, "d1", "rh", [99])
        notifier = open_api.notifier
        await wait_for(lambda: notifier.sent + notifier.failed == notifier.fired, WAIT)
    assert notifier.fired == 4
    assert notifier.failed == notifier.dropped == 0
    got = sorted(
        (call["alert_id"], call["device_id"], call["value"], call["timestamp"])
        for call in hook.received
    )
    assert got == sorted(
        [
            (created.id, "d1", 31.0, "2024-11-15T08:00:01.000Z"),
            (created.id, "d1", 33.0, "2024-11-15T08:00:05.000Z"),
            (everywhere.id, "d1", 40.0, "2024-11-15T08:00:06.000Z"),
            (everywhere.id, "d2", 41.0, "2024-11-15T08:00:00.000Z"),
        ]
    )
    first = next(c for c in hook.received if c["value"] == 31.0)
    assert first == {
        "alert_id": created.id,
        "name": "Hot line",
        "device_id": "d1",
        "metric": "temp",
        "value": 31.0,
        "threshold": 30.0,
        "condition": "gt",
        "timestamp": "2024-11-15T08:00:01.000Z",
    }


async def test_a_failing_webhook_is_counted_and_telemetry_is_still_accepted(
    open_api: LocalApi,
) -> None:
    async with WebhookReceiver() as gone:
        dead_url = gone.url  # nothing listens there once the block is left
    async with asyncio.timeout(WAIT), client(open_api) as api:
        await api.create_alert(rule(dead_url))
    await post_values(open_api, "d1", "temp", [50])
    await wait_for(lambda: open_api.notifier.failed == 1, WAIT)
    assert open_api.notifier.sent == 0
    assert open_api.store.point_count() == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"condition": "above"}, "body.condition"),
        ({"webhook_url": "ftp://hooks.example.com/x"}, "body.notify.url"),
        ({"metric": ""}, "body.metric"),
        ({"name": " "}, "body.name"),
    ],
)
async def test_an_invalid_alert_is_a_400_naming_the_field(
    open_api: LocalApi, changes: dict[str, Any], field: str
) -> None:
    bad = rule("https://hooks.example.com/x", **changes)
    async with asyncio.timeout(WAIT), client(open_api) as api:
        with pytest.raises(ApiRejected) as caught:
            await api.create_alert(bad)
    assert caught.value.status == 400
    assert caught.value.code == "bad_request"
    assert field in str(caught.value)
    assert open_api.store.alerts.alerts == []


async def test_invalid_queries_are_rejected_and_an_unknown_device_is_not_found(
    open_api: LocalApi,
) -> None:
    open_api.store.register_device("d1", last_seen=T0)
    async with asyncio.timeout(WAIT), client(open_api) as api:
        with pytest.raises(ApiRejected, match=r"query\.per_page"):
            await api.devices_page(per_page=101)
        with pytest.raises(ApiRejected, match=r"query\.status"):
            await api.devices_page(status="asleep")
        with pytest.raises(ApiRejected, match=r"query\.from"):
            await api.metrics("d1", "temp", T0 + timedelta(hours=1), T0)
        with pytest.raises(ApiNotFound):
            await api.metrics("nope", "temp", T0, T0 + timedelta(hours=1))
    assert [c.status for c in open_api.store.calls] == [400, 400, 400, 404]


async def test_metrics_aggregates_per_interval_and_a_deleted_minute_is_gone(
    open_api: LocalApi,
) -> None:
    # 70 points a second apart from 08:00:00: minute 08:00 holds values 0..59, 08:01 60..69.
    await post_values(open_api, "d1", "temp", [float(v) for v in range(70)])
    window = (T0, T0 + timedelta(hours=1))
    async with asyncio.timeout(WAIT), client(open_api) as api:
        minutes = await api.metrics("d1", "temp", *window, interval="1m")
        hour = await api.metrics("d1", "temp", *window, interval="1h")
        raw = await api.metrics("d1", "temp", *window)
        removed = open_api.store.delete_points("d1", "temp", T0, T0 + timedelta(minutes=1))
        after = await api.metrics("d1", "temp", *window, interval="1m")
    assert minutes.interval == "1m"
    assert [(a.t, a.min, a.max, a.avg) for a in minutes.data] == [
        (T0, 0.0, 59.0, 29.5),
        (T0 + timedelta(minutes=1), 60.0, 69.0, 64.5),
    ]
    assert [(a.t, a.min, a.max, a.avg) for a in hour.data] == [(T0, 0.0, 69.0, 34.5)]
    assert len(raw.data) == 70
    assert raw.interval is None
    assert removed == 60
    assert [a.t for a in after.data] == [T0 + timedelta(minutes=1)]


async def test_a_saturated_alerts_budget_does_not_hold_up_telemetry(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """A running bridge delivers telemetry while a client has 100 alert rules queued behind
    the 60/min alerts budget. The client's clock is frozen, so that budget stays spent for the
    whole test however slow the machine is: every alert but the first waits, and every point
    is delivered anyway, with no 429 on the way."""
    limits = EndpointLimits(telemetry=None, devices=None, metrics=None)  # alerts: 60/min
    async with LocalApi(TOKEN, limits=limits) as server, WebhookReceiver() as hook:
        frozen = 1000.0
        api = ApiClient(SenderSettings(base_url=server.url), lambda: TOKEN, clock=lambda: frozen)
        assert api.pacer("alerts").rate == pytest.approx(60 / 60.5)
        async with api:
            queued = [
                asyncio.create_task(api.create_alert(rule(hook.url, name=f"rule {i}")))
                for i in range(100)
            ]
            await wait_for(lambda: len(server.store.calls) == 1, WAIT)
            settings = make_settings(broker.port, server.url, tmp_path / "spool.db")
            start_ms = int(T0.timestamp() * 1000)
            async with running_bridge(settings) as bridge:
                await publish(broker.port, env_messages(60, start_ms))
                await wait_delivered(server, expected_env_points(60, start_ms), timeout=WAIT * 3)
                assert metric(bridge, "metriqo_bridge_api_rate_limited_total") == 0
            still_waiting = sum(not task.done() for task in queued)
            for task in queued:
                task.cancel()
            await asyncio.gather(*queued, return_exceptions=True)
    assert [c.endpoint for c in server.store.calls] == ["alerts"]
    assert still_waiting == 99
    assert all(r.status == 201 for r in server.store.requests)


Answer = tuple[int, dict[str, str], bytes]
Script = list[Answer]
EMPTY_PAGE = b'{"data": [], "pagination": {"page": 1, "per_page": 100, "total": 0}}'


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[str, list[float], list[str]]]:
    """A server answering GET /api/v2/devices from ``script`` in turn (the last answer
    repeats); yields its base URL, the monotonic arrival times, and every path requested."""
    arrivals: list[float] = []
    paths: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        paths.append(request.path)
        arrivals.append(time.monotonic())
        status, headers, body = script[min(len(arrivals), len(script)) - 1]
        return web.Response(status=status, headers=headers, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/v2", arrivals, paths
    finally:
        await runner.cleanup()


async def test_server_errors_are_retried_then_given_up_on() -> None:
    busy: Answer = (503, {}, b'{"error": "unavailable", "message": "busy"}')
    async with scripted([busy, (200, {}, EMPTY_PAGE)]) as (url, _, paths), client_at(url) as api:
        page = await api.devices_page()
    assert page.total == 0
    assert len(paths) == 2
    assert api.stats["devices"].failed == 1
    async with scripted([busy]) as (url, _, paths), client_at(url) as api:
        with pytest.raises(ApiUnavailable, match="server error 503") as caught:
            await api.devices_page()
    assert caught.value.code == "unavailable"
    assert len(paths) == QUICK_RETRY.attempts


async def test_a_redirect_is_not_followed_and_a_bad_body_is_a_bad_response() -> None:
    moved = (302, {"Location": "/elsewhere"}, b"")
    async with scripted([moved]) as (url, _, paths), client_at(url) as api:
        with pytest.raises(ApiNotFound, match="302"):
            await api.devices_page()
    assert paths == ["/api/v2/devices"]  # once, and never /elsewhere
    async with scripted([(200, {}, b"<html>")]) as (url, _, _paths), client_at(url) as api:
        with pytest.raises(ApiBadResponse, match="not JSON"):
            await api.devices_page()
    async with scripted([(200, {}, b'{"data": 5}')]) as (url, _, _paths), client_at(url) as api:
        with pytest.raises(ApiBadResponse, match=r"body\.data"):
            await api.devices_page()


async def test_a_token_echoed_by_the_server_is_cut_out_of_the_error() -> None:
    echo: Answer = (
        400,
        {},
        b'{"error": "bad_request", "message": "token ' + TOKEN.encode() + b' bad"}',
    )
    async with scripted([echo]) as (url, _, _paths), client_at(url) as api:
        with pytest.raises(ApiRejected) as caught:
            await api.devices_page()
    assert TOKEN not in str(caught.value)
    assert "<token>" in str(caught.value)


async def test_a_retry_after_http_date_is_honoured() -> None:
    """The first answer is a 429 whose ``Retry-After`` is an HTTP-date two seconds after the
    client's (injected) wall clock: the retry comes no sooner than that."""
    wall = 1_731_657_600.0  # 2024-11-15T08:00:00Z
    retry_at = format_datetime(datetime.fromtimestamp(wall + 2, UTC), usegmt=True)
    limited = (429, {"Retry-After": retry_at}, b'{"error": "rate_limited", "message": "wait"}')
    script: Script = [limited, (200, {}, EMPTY_PAGE)]
    async with (
        scripted(script) as (url, arrivals, _paths),
        client_at(url, wall_clock=lambda: wall) as api,
    ):
        page = await api.devices_page()
    assert page.total == 0
    assert len(arrivals) == 2
    assert arrivals[1] >= arrivals[0] + 2
    assert api.stats["devices"].rate_limited == 1
