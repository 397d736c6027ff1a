"""The JSON answers of the local API server: bodies, the documented error shape, and 429s."""

from __future__ import annotations

import orjson
from aiohttp import web

from bridge.lab.apiserver.validation import RequestError


def json_response(
    status: int, payload: object, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def error_response(exc: RequestError) -> web.Response:
    """``{"error": code, "message": ...}`` with the error's status."""
    # RFC 6750: a 401 names the scheme the client should use.
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return json_response(exc.status, {"error": exc.code, "message": exc.message}, headers)


def rate_limited_response(retry_after: int, message: str) -> web.Response:
    """``429`` with ``Retry-After`` in seconds, as the contract's "Rate limits" says."""
    payload = {"error": "rate_limited", "message": message}
    return json_response(429, payload, {"Retry-After": str(retry_after)})
