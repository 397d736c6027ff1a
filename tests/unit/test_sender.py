"""The HTTP sender against a real aiohttp server on loopback: what it sends (headers, body
shape) and how it classifies every kind of answer, refusal and network failure."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

import orjson
import pytest
from aiohttp import web

from bridge.errors import PermanentDelivery, RetryableDelivery
from bridge.sender import Sender
from bridge.settings import SenderSettings
from tests.support import TOKEN

NOW = 1_731_657_600.0  # the sender's fake wall clock: 2024-11-15T08:00:00Z
OBJ: dict[str, object] = {
    "device_id": "d1",
    "timestamp": "2024-11-15T08:00:00Z",
    "metrics": {"t": 1.5},
}
OBJ2: dict[str, object] = {
    "device_id": "d2",
    "timestamp": "2024-11-15T08:00:00Z",
    "metrics": {"t": 2.5},
}


@dataclass
class Seen:
    """One request the test server received."""

    path: str
    headers: dict[str, str]
    body: object


@dataclass
class Api:
    """A scripted server: every POST /api/telemetry gets ``status``/``headers``/``body``;
    anything posted to /elsewhere is recorded too (a redirect target)."""

    status: int = 201
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"points_written": 1}'
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.seen.append(Seen(request.path, dict(request.headers), orjson.loads(raw)))
        return web.Response(status=self.status, headers=self.headers, body=self.body)


@contextlib.asynccontextmanager
async def serving(api: Api) -> AsyncIterator[Api]:
    app = web.Application()
    app.router.add_post("/api/telemetry", api.handle)
    app.router.add_post("/elsewhere", api.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api.url = f"http://127.0.0.1:{runner.addresses[0][1]}/api"
    try:
        yield api
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def sender_for(url: str, **settings: object) -> AsyncIterator[Sender]:
    s = SenderSettings(base_url=url, **settings)  # type: ignore[arg-type]
    async with Sender(s, lambda: TOKEN, wall_clock=lambda: NOW) as sender:
        yield sender


async def post_to(
    api: Api, objects: list[dict[str, object]] | None = None, **kw: object
) -> int | None:
    async with serving(api), sender_for(api.url, **kw) as sender:
        return await sender.post(objects or [OBJ], "key-1")


async def test_2xx_returns_points_written_and_sends_exact_headers() -> None:
    """A 201 returns points_written; the request carries exactly 'Bearer <token>', the
    Idempotency-Key and a JSON array body at <base_url>/telemetry."""
    api = Api(status=201, body=b'{"points_written": 2}')
    assert await post_to(api, [OBJ, OBJ2]) == 2
    (seen,) = api.seen
    assert seen.path == "/api/telemetry"
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["Idempotency-Key"] == "key-1"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body == [OBJ, OBJ2]


@pytest.mark.parametrize(
    "body", [b'{"status": "ok"}', b"not json", b"[1, 2]", b'{"points_written": true}', b""]
)
async def test_2xx_without_a_usable_count_returns_none(body: bytes) -> None:
    """A 2xx whose body has no integer points_written is still a success: None."""
    assert await post_to(Api(status=200, body=body)) is None


async def test_object_body_mode_sends_the_single_object() -> None:
    """api.body: object sends the one object itself, not an array, and refuses two."""
    api = Api()
    async with serving(api), sender_for(api.url, body="object") as sender:
        assert await sender.post([OBJ], "k") == 1
        with pytest.raises(ValueError, match="exactly one object"):
            await sender.post([OBJ, OBJ2], "k")
    assert [s.body for s in api.seen] == [OBJ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True), 30.0),
        (format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True), 0.0),
        ("soon, probably", None),
        (None, None),
    ],
    ids=["delay-seconds", "http-date", "date-in-the-past", "garbage", "missing"],
)
async def test_429_is_retryable_with_retry_after(
    header: str | None, expected: float | None
) -> None:
    """A 429 is retryable and carries Retry-After as seconds (either form; unreadable: None)."""
    headers = {} if header is None else {"Retry-After": header}
    with pytest.raises(RetryableDelivery) as caught:
        await post_to(Api(status=429, headers=headers, body=b"slow down"))
    assert (caught.value.status, caught.value.retry_after) == (429, expected)
    assert caught.value.body == "slow down"


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_retryable(status: int) -> None:
    """A server error is retryable and keeps its status."""
    with pytest.raises(RetryableDelivery) as caught:
        await post_to(Api(status=status, body=b"oops"))
    assert caught.value.status == status
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_content_refusals_are_permanent_with_a_body_excerpt(status: int) -> None:
    """400/413/422 are permanent; the body is kept, cut to 500 characters."""
    body = b'{"error": "metric t: value out of range"}' + b"x" * 1000
    with pytest.raises(PermanentDelivery) as caught:
        await post_to(Api(status=status, body=body))
    assert caught.value.status == status
    assert caught.value.body == body[:500].decode()


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refusals_are_retryable_and_never_name_the_token(status: int) -> None:
    """401/403 are retryable (delivery pauses, data kept) and the message, repr and body of
    the error do not contain the token."""
    with pytest.raises(RetryableDelivery) as caught:
        await post_to(Api(status=status, body=b'{"error": "invalid token"}'))
    exc = caught.value
    assert exc.status == status
    assert str(status) in str(exc)
    assert TOKEN not in f"{exc} {exc!r} {exc.body} {exc.args}"


@pytest.mark.parametrize(
    "token",
    [
        TOKEN + "\n",
        TOKEN + "\r\nX-Injected: 1",
        TOKEN[:8] + "\x00" + TOKEN[8:],
        TOKEN[:8] + " " + TOKEN[8:],
        TOKEN[:8] + "\udc80" + TOKEN[8:],
    ],
)
async def test_a_token_no_header_can_carry_is_refused_before_anything_is_sent(token: str) -> None:
    """A token with a line break, a NUL, a space or a byte that is not UTF-8 cannot go into
    the Authorization header: a retryable refusal (delivery pauses), nothing sent, the token
    not quoted — instead of aiohttp's ValueError, which ended the bridge."""
    api = Api()
    async with serving(api), Sender(SenderSettings(base_url=api.url), lambda: token) as sender:
        with pytest.raises(RetryableDelivery) as caught:
            await sender.post([OBJ], "key-1")
    exc = caught.value
    assert "the API token cannot be sent" in str(exc)
    assert exc.status is None
    assert api.seen == []
    assert TOKEN[8:] not in f"{exc} {exc!r} {exc.args}"


async def test_a_token_read_again_is_checked_again() -> None:
    """The check is remembered for the token that passed it, not for the sender: a token
    re-read from its file with a line break is refused even after good ones were sent, and
    the good one is sent again after it."""
    api = Api()
    tokens = [TOKEN, TOKEN + "\n", TOKEN]
    async with serving(api), Sender(SenderSettings(base_url=api.url), lambda: tokens[0]) as sender:
        await sender.post([OBJ], "key-1")
        tokens.pop(0)
        with pytest.raises(RetryableDelivery, match="the API token cannot be sent"):
            await sender.post([OBJ], "key-2")
        tokens.pop(0)
        await sender.post([OBJ], "key-3")
    assert [r.headers["Idempotency-Key"] for r in api.seen] == ["key-1", "key-3"]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_not_followed(status: int) -> None:
    """A 3xx is retryable and no request reaches the Location target (the token stays home)."""
    api = Api(status=status, body=b"")
    async with serving(api), sender_for(api.url) as sender:
        api.headers = {"Location": api.url.removesuffix("/api") + "/elsewhere"}
        with pytest.raises(RetryableDelivery) as caught:
            await sender.post([OBJ], "k")
    assert caught.value.status == status
    assert [s.path for s in api.seen] == ["/api/telemetry"]


async def test_404_is_retryable_and_names_the_url() -> None:
    """A wrong base_url is retryable (data kept) and the message shows the URL used."""
    api = Api(status=404, body=b"not here")
    with pytest.raises(RetryableDelivery) as caught:
        async with serving(api), sender_for(api.url + "/v9") as sender:
            await sender.post([OBJ], "k")
    assert caught.value.status == 404
    assert "/api/v9/telemetry" in str(caught.value)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_retryable() -> None:
    """Nothing listening: a retryable error without a status."""
    async with sender_for(f"http://127.0.0.1:{closed_port()}/api") as sender:
        with pytest.raises(RetryableDelivery, match="connection failed") as caught:
            await sender.post([OBJ], "k")
    assert caught.value.status is None


async def test_a_server_that_never_answers_times_out_as_retryable() -> None:
    """A peer that accepts and stays silent: a retryable timeout after read_timeout_s."""
    handlers: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        handlers.append(w)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with sender_for(
            f"http://127.0.0.1:{port}/api", read_timeout_s=0.2, total_timeout_s=1.0
        ) as sender:
            async with asyncio.timeout(5):
                with pytest.raises(RetryableDelivery, match="timed out") as caught:
                    await sender.post([OBJ], "k")
        assert caught.value.status is None
        assert handlers  # the connection was accepted: a timeout, not a refusal
    finally:
        for w in handlers:
            w.close()
        server.close()
        await server.wait_closed()
