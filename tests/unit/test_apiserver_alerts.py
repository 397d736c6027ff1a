"""The local API's alert rules: POST /alerts validation over real HTTP, crossing semantics of
the evaluation (pure), and the per-endpoint limits' and device thresholds' own checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from bridge.lab.apiserver.alerts import AlertBook
from bridge.lab.apiserver.devices import StatusThresholds
from bridge.lab.apiserver.notifier import Notifier
from bridge.lab.apiserver.ratelimits import EndpointLimits, Limiters
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.apiserver.validation import AlertSpec
from tests.support import TOKEN

T0 = datetime(2024, 11, 15, 8, 0, tzinfo=UTC)
GOOD: dict[str, Any] = {
    "name": "High CPU Temperature",
    "device_id": "sensor-gw-0417",
    "metric": "cpu_temp",
    "condition": "gt",
    "threshold": 80,
    "notify": {"type": "webhook", "url": "https://ops.example.com/hooks/thermal"},
}


@pytest.fixture
async def api() -> AsyncIterator[LocalApi]:
    async with LocalApi(TOKEN) as server:
        yield server


async def post_alert(api: LocalApi, body: bytes, token: str = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api.url}/alerts", data=body, headers=headers) as resp,
    ):
        return resp.status, orjson.loads(await resp.read())


async def test_the_documented_alert_is_created(api: LocalApi) -> None:
    status, body = await post_alert(api, orjson.dumps(GOOD))
    assert status == 201
    assert set(body) == {"id", "name", "status", "created_at"}
    assert body["id"].startswith("alert_")
    assert (body["name"], body["status"]) == ("High CPU Temperature", "active")
    [stored] = api.store.alerts.alerts
    assert stored.id == body["id"]
    assert stored.spec.threshold == 80.0


async def test_a_wildcard_device_and_a_loopback_http_webhook_are_accepted(api: LocalApi) -> None:
    body = GOOD | {"device_id": "*", "notify": {"type": "webhook", "url": "http://127.0.0.1:9/h"}}
    status, _ = await post_alert(api, orjson.dumps(body))
    assert status == 201


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_without("notify"), "body.notify: is missing"),
        (_without("threshold"), "body.threshold: is missing"),
        (GOOD | {"extra": 1}, 'body: unknown field "extra"'),
        (GOOD | {"condition": "eq"}, "body.condition: must be one of gt, gte, lt, lte"),
        (GOOD | {"condition": 1}, "body.condition"),
        (GOOD | {"threshold": "80"}, "body.threshold: must be a number, got string"),
        (GOOD | {"threshold": True}, "body.threshold: must be a number, got boolean"),
        (GOOD | {"notify": {"type": "email", "url": "https://x/y"}}, "body.notify.type"),
        (GOOD | {"notify": {"type": "webhook"}}, "body.notify.url"),
        (GOOD | {"notify": {"type": "webhook", "url": "ops.example.com/h"}}, "body.notify.url"),
        (GOOD | {"notify": {"type": "webhook", "url": "https://x/y", "a": 1}}, "body.notify"),
        (GOOD | {"notify": "https://x/y"}, "body.notify: must be a object"),
        (GOOD | {"device_id": ""}, "body.device_id"),
        (GOOD | {"metric": "a\nb"}, "body.metric"),
        (GOOD | {"name": 5}, "body.name"),
        ([GOOD], "body: must be an object"),
    ],
)
async def test_an_invalid_alert_is_a_400_naming_the_field(
    api: LocalApi, body: Any, message: str
) -> None:
    status, answer = await post_alert(api, orjson.dumps(body))
    assert status == 400
    assert answer["error"] == "bad_request"
    assert message in answer["message"]
    assert api.store.alerts.alerts == []
    assert [c.status for c in api.store.calls] == [400]


async def test_not_json_is_400_and_a_bad_token_401_before_anything(api: LocalApi) -> None:
    assert (await post_alert(api, b"{nope"))[0] == 400
    status, answer = await post_alert(api, orjson.dumps(GOOD), token="wrong")
    assert (status, answer["error"]) == (401, "unauthorized")
    assert "wrong" not in answer["message"]


def _spec(condition: str, threshold: float, device: str = "d1") -> AlertSpec:
    return AlertSpec("r", device, "temp", condition, threshold, "http://127.0.0.1:9/h")


@pytest.mark.parametrize(
    ("condition", "values", "fired_at"),
    [
        ("gt", [1, 5, 6, 5, 7, 8], [6, 7]),  # 5 is not > 5: re-arms; 7 crosses again
        ("gte", [1, 5, 6, 4, 5], [5, 5]),
        ("lt", [9, 2, 1, 7, 2], [2, 2]),
        ("lte", [5, 5, 6, 5], [5, 5]),
        ("gt", [9, 9, 9], [9]),  # the first point that meets it fires; repeats do not
    ],
)
def test_a_rule_fires_on_each_crossing_only(
    condition: str, values: list[float], fired_at: list[float]
) -> None:
    book = AlertBook()
    book.create(_spec(condition, 5), T0)
    fired = []
    for value in values:  # one request per value: state carries across requests
        fired += book.evaluate([("d1", "temp", float(value), T0)])
    assert [f.value for f in fired] == fired_at


def test_state_is_per_device_and_metric_and_a_named_device_is_only_that_one() -> None:
    book = AlertBook()
    wildcard = book.create(_spec("gt", 5, device="*"), T0)
    only_d1 = book.create(_spec("gt", 5), T0)
    fired = book.evaluate([("d1", "temp", 6.0, T0), ("d2", "temp", 6.0, T0), ("d2", "rh", 9.0, T0)])
    assert [(f.alert.id, f.device_id) for f in fired] == [
        (wildcard.id, "d1"),
        (only_d1.id, "d1"),
        (wildcard.id, "d2"),
    ]


def test_limits_and_thresholds_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="alerts rate limit"):
        EndpointLimits(alerts=-1)
    with pytest.raises(ValueError, match="window"):
        EndpointLimits(window_s=0)
    with pytest.raises(ValueError, match="thresholds"):
        StatusThresholds(timedelta(hours=2), timedelta(hours=1))


def test_each_endpoint_counts_its_own_window() -> None:
    limiters = Limiters(EndpointLimits(telemetry=None, devices=1, metrics=1, alerts=1))
    assert limiters.refuse("alerts", 0.0) is None
    refused = limiters.refuse("alerts", 1.0)
    assert refused is not None
    assert refused[0] == 59  # seconds until the first admission leaves the 60 s window
    assert "1 requests per minute" in refused[1]
    assert limiters.refuse("devices", 1.0) is None
    assert limiters.refuse("metrics", 1.0) is None
    assert all(limiters.refuse("telemetry", 1.0) is None for _ in range(100))
    assert limiters.refuse("alerts", 60.0) is None  # the window moved on


async def test_a_full_webhook_queue_drops_and_counts() -> None:
    """Firings beyond the queue's bound are dropped and counted, never awaited; what is still
    queued at stop counts as dropped too."""
    book = AlertBook()
    book.create(_spec("gt", 5), T0)
    notifier = Notifier(queue_size=1)  # not started: nothing drains the queue
    for value in (6.0, 1.0, 7.0, 1.0, 8.0):
        for firing in book.evaluate([("d1", "temp", value, T0)]):
            notifier.submit(firing)
    assert (notifier.fired, notifier.dropped) == (3, 2)
    await notifier.stop()
    assert (notifier.fired, notifier.dropped, notifier.sent) == (3, 3, 0)
