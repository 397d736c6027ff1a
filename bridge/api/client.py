"""The client of the Metriqo API's other endpoints: ``GET /devices``, ``GET /metrics`` and
``POST /alerts``, each paced within its own budget.

Why a client of its own and not the telemetry sender: nothing here may delay telemetry. The
client has its own aiohttp session (its own connection pool) and one :class:`Pacer` per endpoint,
and shares no lock, pacer or session with :class:`bridge.sender.Sender`; a full alerts budget
(60/min) therefore queues alert requests only. What it shares with the sender is the reading of
an answer (:mod:`bridge.api.http`): a 429 waits at least its ``Retry-After`` (seconds or an
HTTP-date) and halves that endpoint's pace; a 401/403 pauses and reads the token again, so a
rotated token file is picked up, as delivery does; redirects are never followed.

Unlike telemetry, whose data waits in the spool for as long as it takes, a request here belongs
to a command someone is waiting on: after :attr:`RetryPolicy.attempts` failed attempts it raises
the :class:`bridge.errors.ApiError` of the last failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

import aiohttp
import orjson

from bridge.api.http import AnswerKind, answer_kind, client_timeout, parse_retry_after, ssl_option
from bridge.api.models import (
    AlertCreated,
    AlertRule,
    Device,
    DevicePage,
    Interval,
    MetricSeries,
    format_time,
    parse_alert_created,
    parse_device_page,
    parse_series,
)
from bridge.backoff import Backoff
from bridge.config.secrets import secret_text_problem
from bridge.errors import (
    ApiBadResponse,
    ApiError,
    ApiNotFound,
    ApiRateLimited,
    ApiRejected,
    ApiUnauthorized,
    ApiUnavailable,
)
from bridge.limits import (
    ALERTS_REQUESTS_PER_MINUTE,
    DEVICES_REQUESTS_PER_MINUTE,
    MAX_PER_PAGE,
    METRICS_REQUESTS_PER_MINUTE,
)
from bridge.ratelimit import Pacer, pacing
from bridge.settings import SenderSettings

log = logging.getLogger(__name__)

Endpoint = Literal["devices", "metrics", "alerts"]
ENDPOINTS: dict[Endpoint, tuple[str, str]] = {
    "devices": ("GET", "/devices"),
    "metrics": ("GET", "/metrics"),
    "alerts": ("POST", "/alerts"),
}
_EXCERPT = 300


@dataclass(frozen=True, slots=True)
class Budgets:
    """Requests per minute this client may send to each endpoint (the contract's limits by
    default, :mod:`bridge.limits`); ``replicas`` bridges of one organization split them."""

    devices: float = float(DEVICES_REQUESTS_PER_MINUTE)
    metrics: float = float(METRICS_REQUESTS_PER_MINUTE)
    alerts: float = float(ALERTS_REQUESTS_PER_MINUTE)
    replicas: int = 1

    def per_minute(self, endpoint: Endpoint) -> float:
        return float(getattr(self, endpoint))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often one request is tried (429, 5xx, network errors and 401/403 each use an
    attempt) and the jittered backoff between failures that name no ``Retry-After``."""

    attempts: int = 5
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass(slots=True)
class EndpointStats:
    """What one endpoint's requests came to (for tests, and for the commands' metrics)."""

    requests: int = 0
    rate_limited: int = 0
    auth_refused: int = 0
    failed: int = 0
    waited_s: float = 0.0  # seconds 429s added to the endpoint's pause


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    retry_after: float | None


class ApiClient:
    """``async with ApiClient(settings.sender, token) as api:`` then :meth:`devices`,
    :meth:`metrics` and :meth:`create_alert`. ``token`` is called before every request (a
    :class:`bridge.config.secrets.TokenSource` re-reads a changed token file)."""

    def __init__(
        self,
        settings: SenderSettings,
        token: Callable[[], str],
        *,
        budgets: Budgets | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._base = settings.base_url.rstrip("/")
        self._token = token
        self._timeout = client_timeout(settings)
        self._ssl = ssl_option(settings)
        self._budgets = budgets or Budgets()
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._rng = rng
        now = clock()
        self._pacers: dict[Endpoint, Pacer] = {
            name: Pacer(pacing(self._budgets.per_minute(name), self._budgets.replicas), now)
            for name in ENDPOINTS
        }
        self.stats: dict[Endpoint, EndpointStats] = {name: EndpointStats() for name in ENDPOINTS}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout, raise_for_status=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"ApiClient({self._base!r}, token=<redacted>)"

    async def devices_page(
        self, page: int = 1, per_page: int = MAX_PER_PAGE, status: str | None = None
    ) -> DevicePage:
        """One page of ``GET /devices``."""
        params = {"page": str(page), "per_page": str(per_page)}
        if status is not None:
            params["status"] = status
        doc = await self._call("devices", params=params)
        found: DevicePage = _parsed("devices", parse_device_page, doc)
        return found

    async def devices(self, status: str | None = None) -> AsyncIterator[Device]:
        """Every device, page by page at ``per_page=100`` (the contract's maximum), each page
        within the devices budget. Stops at the last page by ``pagination.total``, or at an
        empty page, so a registry that shrinks while it is read cannot make it loop."""
        page = 1
        while True:
            found = await self.devices_page(page, MAX_PER_PAGE, status)
            for device in found.devices:
                yield device
            if found.is_last:
                return
            page += 1

    async def metrics(
        self,
        device_id: str,
        metric: str,
        start: datetime,
        end: datetime,
        interval: Interval | None = None,
    ) -> MetricSeries:
        """``GET /metrics`` of one device and metric over ``[start, end)``; ``interval`` gives
        aggregates (t/avg/min/max per bucket)."""
        params = {
            "device_id": device_id,
            "metric": metric,
            "from": format_time(start),
            "to": format_time(end),
        }
        if interval is not None:
            params["interval"] = interval
        doc = await self._call("metrics", params=params)
        series: MetricSeries = _parsed("metrics", parse_series, doc)
        return series

    async def create_alert(self, rule: AlertRule) -> AlertCreated:
        """``POST /alerts``: creates the rule (the contract has no list, update or delete)."""
        doc = await self._call("alerts", body=rule.body())
        created: AlertCreated = _parsed("alerts", parse_alert_created, doc)
        return created

    async def pace_only(self, endpoint: Endpoint) -> None:
        """Take one slot of the endpoint's budget without a request (a caller with nothing
        to ask this time waits as long as a request would have)."""
        await self._pace(self._pacers[endpoint])

    def pacer(self, endpoint: Endpoint) -> Pacer:
        """The endpoint's pacer (its rate after 429s; tests look at it)."""
        return self._pacers[endpoint]

    async def _call(
        self,
        endpoint: Endpoint,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, object] | None = None,
    ) -> Any:
        method, path = ENDPOINTS[endpoint]
        what = f"{method} {path}"
        stats, pacer = self.stats[endpoint], self._pacers[endpoint]
        backoff = Backoff(self._retry.backoff_min_s, self._retry.backoff_max_s, rng=self._rng)
        last: ApiError | None = None
        attempts = max(1, self._retry.attempts)
        for attempt in range(1, attempts + 1):
            await self._pace(pacer)
            token = self._token()
            if secret_text_problem(token, header=True) is not None:
                raise ApiUnauthorized("the API token cannot go into an HTTP header", endpoint=what)
            stats.requests += 1
            try:
                answer = await self._send(method, path, token, params, body)
            except ApiUnavailable as exc:
                stats.failed += 1
                last = exc
            else:
                kind = answer_kind(answer.status)
                if kind == "ok":
                    pacer.accepted(self._clock())
                    return _json_body(answer, what)
                last = self._failure(kind, answer, what, token)
                if kind == "rate_limited":
                    # Never sooner than asked: the pacer holds every request to this endpoint
                    # until then (and halves its pace); other endpoints keep their own pace.
                    stats.rate_limited += 1
                    added = pacer.rate_limited(
                        self._clock(), answer.retry_after, fallback=backoff.next_delay()
                    )
                    stats.waited_s += added
                    log.info(
                        "%s: rate limited (429); requests to it wait %.1f s more (%.2f/s)",
                        what,
                        added,
                        pacer.rate,
                    )
                    continue
                if kind == "auth":
                    stats.auth_refused += 1
                elif kind == "server":
                    stats.failed += 1
                else:  # not found, a redirect, a refusal: trying again cannot help
                    raise last
            if attempt < attempts:  # after the last one the error is raised at once
                delay = backoff.next_delay()
                if isinstance(last, ApiUnauthorized):
                    # As delivery does: pause, then the next attempt reads the token again (a
                    # rotated token file is picked up by the TokenSource).
                    log.warning(
                        "%s: the API refused the token (%s); reading it again in %.1f s",
                        what,
                        last.status,
                        delay,
                    )
                await self._sleep(delay)
        assert last is not None
        raise last

    def _failure(self, kind: AnswerKind, answer: _Answer, what: str, token: str) -> ApiError:
        """The error an answer other than 2xx stands for."""
        code, message = _error_body(answer.body, token)
        status = answer.status
        if kind == "rate_limited":
            return ApiRateLimited(
                f"rate limit (429): {message}", endpoint=what, status=429, code=code
            )
        if kind == "server":
            return ApiUnavailable(f"server error {status}", endpoint=what, status=status, code=code)
        if kind == "auth":
            return ApiUnauthorized(
                f"the API refused the token ({status}): {message}",
                endpoint=what,
                status=status,
                code=code,
            )
        if kind in ("not_found", "redirect"):
            return ApiNotFound(
                f"answered {status}: {message or 'check api.base_url'} "
                f"(api.base_url is {self._base})",
                endpoint=what,
                status=status,
                code=code,
            )
        return ApiRejected(
            f"refused ({status} {code}): {message}", endpoint=what, status=status, code=code
        )

    async def _pace(self, pacer: Pacer) -> None:
        while True:
            now = self._clock()
            wait = pacer.delay(now)
            if wait <= 0 and pacer.take(now):
                return
            await self._sleep(max(wait, 0.001))

    async def _send(
        self,
        method: str,
        path: str,
        token: str,
        params: dict[str, str] | None,
        body: dict[str, object] | None,
    ) -> _Answer:
        assert self._session is not None, "ApiClient used outside 'async with'"
        what = f"{method} {path}"
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        try:
            async with self._session.request(
                method,
                self._base + path,
                params=params,
                data=data,
                headers=headers,
                allow_redirects=False,
                ssl=self._ssl,
            ) as resp:
                raw = await resp.read()
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._wall())
                return _Answer(resp.status, raw, retry_after)
        except TimeoutError:
            raise ApiUnavailable("request timed out", endpoint=what) from None
        except aiohttp.ClientError as exc:
            # str() of aiohttp client errors names host and reason, never request headers.
            raise ApiUnavailable(f"connection failed: {exc}", endpoint=what) from None


def _error_body(raw: bytes, token: str) -> tuple[str, str]:
    """The contract's ``{"error", "message"}``, or an excerpt of whatever came; a token the
    server echoed is cut out (messages must never hold it)."""
    code, message = "", raw[:_EXCERPT].decode("utf-8", "replace")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        code = str(doc.get("error", ""))
        message = str(doc.get("message", message))
    if token:
        code, message = code.replace(token, "<token>"), message.replace(token, "<token>")
    return code, message


def _json_body(answer: _Answer, what: str) -> Any:
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        raise ApiBadResponse(
            f"answer {answer.status} is not JSON", endpoint=what, status=answer.status
        ) from None


def _parsed(endpoint: Endpoint, parse: Callable[[Any], Any], doc: Any) -> Any:
    method, path = ENDPOINTS[endpoint]
    try:
        return parse(doc)
    except ValueError as exc:
        raise ApiBadResponse(str(exc), endpoint=f"{method} {path}", status=200) from None
