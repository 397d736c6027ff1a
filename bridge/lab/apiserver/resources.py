"""Handlers of ``GET /devices``, ``GET /metrics`` and ``POST /alerts`` of the local API server.

Each request is checked as a real gateway would, in order: identity (401), the endpoint's own
rate limit (429 with ``Retry-After``), then the parameters or body (400 with the documented
error body). Every request is logged in the store (:class:`bridge.lab.apiserver.store.CallRecord`)
with the server clock and its status, so a test can show that a client never came back before
the ``Retry-After`` it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from bridge.lab.apiserver.ratelimits import Endpoint, Limiters
from bridge.lab.apiserver.responses import error_response, json_response, rate_limited_response
from bridge.lab.apiserver.store import ApiStore, CallRecord, aggregate, row
from bridge.lab.apiserver.validation import (
    RequestError,
    decode_json,
    format_timestamp,
    parse_devices_query,
    parse_metrics_query,
    validate_alert,
)


class _Limited(Exception):
    def __init__(self, retry_after: int, message: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.message = message


class Resources:
    """The three handlers, bound to one app's store, limiters, identity check and clocks."""

    def __init__(
        self,
        store: ApiStore,
        limiters: Limiters,
        check_auth: Callable[[web.Request], None],
        clock: Callable[[], float],
        now_wall: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._limiters = limiters
        self._check_auth = check_auth
        self._clock = clock
        self._now_wall = now_wall

    def _admit(self, request: web.Request, endpoint: Endpoint, received_at: float) -> None:
        self._check_auth(request)
        refused = self._limiters.refuse(endpoint, received_at)
        if refused is not None:
            raise _Limited(*refused)

    async def _handle(
        self, request: web.Request, endpoint: Endpoint, answer: Callable[[], web.Response]
    ) -> web.Response:
        received_at = self._clock()
        retry_after = None
        try:
            self._admit(request, endpoint, received_at)
            response = answer()
        except RequestError as exc:
            response = error_response(exc)
        except _Limited as exc:
            retry_after = exc.retry_after
            response = rate_limited_response(exc.retry_after, exc.message)
        self._store.record_call(
            CallRecord(
                endpoint,
                received_at,
                response.status,
                retry_after,
                request.headers.get("Authorization"),
                request.query_string,
            )
        )
        return response

    async def devices(self, request: web.Request) -> web.Response:
        def answer() -> web.Response:
            query = parse_devices_query(list(request.query.items()))
            rows = self._store.device_rows(self._now_wall())
            if query.status is not None:
                rows = [r for r in rows if r["status"] == query.status]
            first = (query.page - 1) * query.per_page
            pagination = {"page": query.page, "per_page": query.per_page, "total": len(rows)}
            page = rows[first : first + query.per_page]
            return json_response(200, {"data": page, "pagination": pagination})

        return await self._handle(request, "devices", answer)

    async def metrics(self, request: web.Request) -> web.Response:
        def answer() -> web.Response:
            query = parse_metrics_query(list(request.query.items()))
            if not self._store.has_device(query.device_id):
                raise RequestError("No device with that device_id.", code="not_found", status=404)
            series = self._store.series(query.device_id, query.metric, query.start, query.end)
            if query.interval is None:
                data = [row(format_timestamp(p.timestamp, d), [p.value]) for p, d in series]
            else:
                data = aggregate(series, query.interval)
            payload = {"device_id": query.device_id, "metric": query.metric}
            return json_response(200, {**payload, "interval": query.interval_name, "data": data})

        return await self._handle(request, "metrics", answer)

    async def alerts(self, request: web.Request) -> web.Response:
        body = await request.read()

        def answer() -> web.Response:
            spec = validate_alert(decode_json(body))
            alert = self._store.alerts.create(spec, self._now_wall())
            return json_response(201, alert.created())

        return await self._handle(request, "alerts", answer)
