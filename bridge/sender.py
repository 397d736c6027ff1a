"""HTTP client for ``POST /telemetry``. aiohttp is used only here.

One session for the bridge's lifetime, the token in ``Authorization: Bearer`` only, redirects
never followed (a redirect would carry the token to another host). Responses are classified into
the error hierarchy; the delivery loop decides what to do with each class.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import aiohttp
import orjson

from bridge.api.http import answer_kind, client_timeout, parse_retry_after, ssl_option
from bridge.config.secrets import secret_text_problem
from bridge.errors import PermanentDelivery, RetryableDelivery, UnsendableRequest
from bridge.settings import SenderSettings

_BODY_EXCERPT = 500


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """What one ``GET /devices?per_page=1`` showed of the API and the token
    (``check --connect``). Holds no header and never the token.

    Attributes:
        status: the HTTP status; None when no answer came.
        problem: why no answer came (DNS, refused, timeout, TLS).
        tls_error: the TLS error, when that was why.
        dns: the host name did not resolve.
        devices: the organization's device count (a 200's ``pagination.total``).
        location: a redirect's target.
        retry_after: a 429's wait, in seconds.
    """

    status: int | None
    problem: str = ""
    tls_error: ssl.SSLError | None = None
    dns: bool = False
    devices: int | None = None
    location: str | None = None
    retry_after: float | None = None


class Sender:
    """Posts batches to the API and classifies the outcome."""

    def __init__(
        self,
        settings: SenderSettings,
        token: Callable[[], str],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = settings.base_url.rstrip("/") + "/telemetry"
        self.devices_url = settings.base_url.rstrip("/") + "/devices"
        self._token = token
        self._body = settings.body
        self._timeout = client_timeout(settings)
        self._ssl: ssl.SSLContext | bool = ssl_option(settings)
        self._wall = wall_clock
        self._session: aiohttp.ClientSession | None = None
        # The last token found sendable: checking one walks it character by character (~10 µs,
        # once per request otherwise); a token read again from its file is checked again.
        self._sendable: str | None = None

    async def __aenter__(self) -> Sender:
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

    async def post(self, objects: list[dict[str, object]], idempotency_key: str) -> int | None:
        """Send one batch; return the server's ``points_written`` (None if it gave none).

        Raises:
            RetryableDelivery: network error, timeout, 5xx, 429, 401/403, 404, redirects.
            PermanentDelivery: 400, 413, 422 and other 4xx: the content was refused.
        """
        assert self._session is not None, "Sender used outside 'async with'"
        if self._body == "object" and len(objects) != 1:
            raise ValueError("object body mode needs exactly one object per request")
        body = orjson.dumps(objects if self._body == "array" else objects[0])
        token = self._token()
        # The settings refuse such a token at start and at each re-read of its file; this is
        # the last guard, so that no token can make aiohttp raise (and the bridge exit).
        if token != self._sendable:
            problem = secret_text_problem(token, header=True)
            if problem is not None:
                raise UnsendableRequest(
                    f"the API token cannot be sent: it holds {problem}; delivery paused, data "
                    "kept in the spool"
                )
            self._sendable = token
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
        }
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, allow_redirects=False, ssl=self._ssl
            ) as resp:
                status = resp.status
                raw = await resp.read()
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise RetryableDelivery("API request timed out") from None
        except aiohttp.ClientError as exc:
            # str(exc) of aiohttp client errors names host and reason, never request headers.
            raise RetryableDelivery(f"API connection failed: {exc}") from None
        except ValueError as exc:
            # aiohttp refuses a header it cannot write (its text may quote the header: not shown)
            raise UnsendableRequest(
                f"the API request could not be built ({type(exc).__name__}); delivery paused, "
                "data kept in the spool"
            ) from None
        excerpt = raw[:_BODY_EXCERPT].decode("utf-8", "replace")
        kind = answer_kind(status)
        if kind == "ok":
            try:
                written = orjson.loads(raw).get("points_written")
            except (orjson.JSONDecodeError, AttributeError):
                return None
            return written if isinstance(written, int) and not isinstance(written, bool) else None
        if kind == "rate_limited":
            raise RetryableDelivery(
                "API rate limit (429)",
                status=status,
                body=excerpt,
                retry_after=parse_retry_after(retry_after, self._wall()),
            )
        if kind == "server":
            raise RetryableDelivery(f"API server error {status}", status=status, body=excerpt)
        if kind == "auth":
            raise RetryableDelivery(
                f"API refused the token ({status}); delivery paused, data kept in the spool",
                status=status,
                body=excerpt,
            )
        if kind in ("not_found", "redirect"):
            raise RetryableDelivery(
                f"API answered {status}: check api.base_url (now {self.url}); data kept",
                status=status,
                body=excerpt,
            )
        raise PermanentDelivery(f"API rejected the batch ({status})", status=status, body=excerpt)

    async def probe(self) -> ApiAnswer:
        """One cheap authenticated request (``GET /devices?per_page=1``): is the API reachable
        and the token accepted? Never raises for what the network or the API does."""
        assert self._session is not None, "Sender used outside 'async with'"
        token = self._token()
        if secret_text_problem(token, header=True) is not None:
            return ApiAnswer(None, "the API token cannot go into an HTTP header")
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self._session.get(
                self.devices_url,
                params={"per_page": "1"},
                headers=headers,
                allow_redirects=False,
                ssl=self._ssl,
            ) as resp:
                status = resp.status
                raw = await resp.read()
                location = resp.headers.get("Location")
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._wall())
        except TimeoutError:
            return ApiAnswer(
                None,
                "no answer in time (api.connect_timeout_s, api.read_timeout_s, "
                "api.total_timeout_s)",
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            cert = exc.certificate_error
            return ApiAnswer(None, str(cert), cert if isinstance(cert, ssl.SSLError) else None)
        except aiohttp.ClientConnectorSSLError as exc:
            err = exc.os_error
            return ApiAnswer(None, str(err), err if isinstance(err, ssl.SSLError) else None)
        except aiohttp.ClientConnectorDNSError as exc:
            return ApiAnswer(None, exc.os_error.strerror or str(exc.os_error), dns=True)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                return ApiAnswer(None, f"connection to {exc.host}:{exc.port} refused")
            return ApiAnswer(None, exc.os_error.strerror or str(exc.os_error))
        except aiohttp.ClientError as exc:
            # str() of aiohttp client errors names host and reason, never request headers.
            return ApiAnswer(None, f"{type(exc).__name__}: {exc}")
        devices = None
        if status == 200:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                total = orjson.loads(raw).get("pagination", {}).get("total")
                devices = total if isinstance(total, int) else None
        return ApiAnswer(status, devices=devices, location=location, retry_after=retry_after)
