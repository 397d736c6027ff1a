"""What every request to the Metriqo API shares, telemetry or not: reading ``Retry-After``, the
aiohttp timeouts and TLS context built from the ``api.*`` settings, and what a status means.

Pure (no session): the telemetry sender (:mod:`bridge.sender`) and the API client
(:mod:`bridge.api.client`) both build on it, so that a 429 or a 401 is read the same way by both.
"""

from __future__ import annotations

import email.utils
import ssl
from typing import Literal

import aiohttp

from bridge.settings import SenderSettings

AnswerKind = Literal["ok", "rate_limited", "server", "auth", "not_found", "redirect", "refused"]
"""What an HTTP status means to a client of the API (see :func:`answer_kind`)."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date); None if absent
    or unreadable. A date in the past means 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def answer_kind(status: int) -> AnswerKind:
    """How a client treats a status: 2xx ok; 429 wait for ``Retry-After``; 5xx try again; 401/403
    the token (pause, re-read it); 404 and 3xx a wrong ``api.base_url`` (redirects are never
    followed: they would carry the token to another host); any other 4xx refuses the request."""
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if 300 <= status < 400:
        return "redirect"
    return "refused"


def client_timeout(settings: SenderSettings) -> aiohttp.ClientTimeout:
    """The timeouts of ``api.connect_timeout_s``, ``read_timeout_s`` and ``total_timeout_s``."""
    return aiohttp.ClientTimeout(
        total=settings.total_timeout_s,
        sock_connect=settings.connect_timeout_s,
        sock_read=settings.read_timeout_s,
    )


def ssl_option(settings: SenderSettings) -> ssl.SSLContext | bool:
    """The ``ssl=`` argument of a request: the system's CAs, or ``api.ca_file``'s."""
    if settings.ca_file is not None:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    return True
