"""The one error hierarchy of metriqo-bridge.

::

    BridgeError
    ├── ConfigError          settings or topic-mappings.yaml are invalid (exit code 78)
    ├── PayloadError         one MQTT message cannot be mapped (counted, dead-lettered)
    ├── BrokerError          a side session (discover, tap) cannot reach or use the broker
    ├── DeliveryError        a batch could not be delivered to the API
    │   ├── RetryableDelivery    network errors, timeouts, 5xx, 429: try again later
    │   │   └── UnsendableRequest    nothing sent: the token cannot go into a header
    │   └── PermanentDelivery    the API refused the batch for what it contains (400, 413, 422)
    ├── ApiError             a request to GET /devices, GET /metrics or POST /alerts failed
    │   ├── ApiUnavailable       network error, timeout or 5xx, after the client's retries
    │   ├── ApiRateLimited       still 429 after the client's retries (it waited each time)
    │   ├── ApiUnauthorized      401/403 after pausing and re-reading the token; or unsendable
    │   ├── ApiNotFound          404 (a wrong api.base_url, or no such device) or a redirect
    │   ├── ApiRejected          400/422: the API refused the request (its error code kept)
    │   └── ApiBadResponse       a 2xx whose body is not what the contract documents
    └── SpoolError           the durable spool cannot be opened or written
        ├── SpoolFull            at its cap, or the disk is full: back-pressure, not a failure
        ├── SpoolLocked          another instance holds the spool's lock
        └── SpoolTooNew          a newer version's spool layout (after a downgrade)

Library exceptions are translated once, at the edge of the module that uses the library.

Every exit code of every command is defined here (the sysexits.h numbers where one fits), with
the meaning that ``docs/reference/exit-codes.md`` is generated from.
"""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2  # argparse exits with 2 for a bad option as well
EX_NOINPUT = 66  # sysexits.h: an input file did not exist (here: the spool)
EX_UNAVAILABLE = (
    69  # sysexits.h: a required service (mosquitto; the broker or the API) is unavailable
)
EX_TEMPFAIL = 75  # sysexits.h: try again later (here: another bridge holds the spool)
EX_CONFIG = 78  # sysexits.h: configuration error; systemd units use RestartPreventExitStatus=78
EX_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EX_TERMINATED = 143  # 128 + SIGTERM, as shells report it

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EX_OK, "ok; `run` also exits 0 after a graceful stop (SIGTERM/SIGINT)"),
    (
        EX_FAILURE,
        "runtime failure (e.g. a spool write error: the bridge stops rather than acknowledge "
        "what it could not store); `test`: a test failed or the file has no tests; `explain`: "
        "the message would be dead-lettered or matches no rule; `health`: not healthy/ready; "
        "`dead-letters requeue`: some dead letters still fail; `bench`, `soak`, `demo`: a point "
        "was lost or duplicated (`bench sparkplug`: a message decoded to other numbers than "
        "were encoded); `recipes write`: the file exists (without `--force`) or cannot "
        "be written; `alerts plan`/`apply`: drift that needs action in the Metriqo dashboard "
        "(printed with what to do), or the API refused an alert (400)",
    ),
    (
        EX_USAGE,
        "usage error (a bad option value; `dead-letters`: `--since` not before `--until`; "
        "`dead-letters purge`: no filter and no `--all`; `soak`: an unknown fault name)",
    ),
    (EX_NOINPUT, "no spool at the configured path (`dead-letters`, `backup`)"),
    (
        EX_UNAVAILABLE,
        "`check --connect`: a line of the checklist failed (the broker or the API cannot be "
        "used as configured); `discover`, `tap`: the broker cannot be reached or refuses the "
        "connection or subscription; `alerts apply`: the API is unavailable; `demo`, "
        "`bench` or `soak` without mosquitto installed",
    ),
    (
        EX_TEMPFAIL,
        "the spool is locked by another running bridge; `alerts apply`: still rate limited "
        "(429) after the retries, or another `alerts` command is using the ledger",
    ),
    (
        EX_CONFIG,
        "configuration error (nothing started, no spool touched; `check --connect`: a red "
        "line that `run` would refuse to start with, such as an invalid mapping file or no "
        "token), or a spool written by a newer version (left untouched); `recipes`: no recipe "
        "of that name; `alerts apply`: the API refused the token or api.base_url is wrong",
    ),
    (EX_INTERRUPTED, "interrupted (Ctrl-C) in a command other than `run`"),
    (
        EX_TERMINATED,
        "stopped by SIGTERM in a command other than `run`, after stopping what it started "
        "(`demo`, `bench`, `soak`: the private broker, API and bridge processes)",
    ),
)
"""Each exit code and what it means, for the reference page and ``--help``."""


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A settings or mapping file is invalid; names file, line and key path.

    ``column`` (1-based) and ``excerpt`` (the source line with a caret under the column) are
    set for an error that points at a place in a YAML file; the excerpt follows the
    ``file:line: key: message`` line in the text of the error, and ``headline`` is that line
    alone (for one-line logs).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str = "",
        column: int | None = None,
        excerpt: str = "",
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.column = column
        self.excerpt = excerpt
        self.detail = message
        where = file or "<settings>"
        if line is not None:
            where = f"{where}:{line}"
        self.headline = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        super().__init__(f"{self.headline}\n{excerpt}" if excerpt else self.headline)


class ConfigErrors(ConfigError):
    """Several configuration errors found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class PayloadError(BridgeError):
    """One message (or one metric of it) cannot be mapped; ``reason`` is a bounded label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class BrokerError(BridgeError):
    """A side session (``discover``, ``tap``) cannot connect to the broker, or the broker
    refuses it; the message never holds the password."""


class DeliveryError(BridgeError):
    """A batch was not accepted by the API."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        self.status = status
        self.body = body
        super().__init__(message)


class RetryableDelivery(DeliveryError):
    """Try the same batch again after a backoff (network error, timeout, 5xx, 429, auth)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class UnsendableRequest(RetryableDelivery):
    """The request could not be built, so nothing was sent: the API token holds characters an
    HTTP header cannot carry. Delivery pauses (data kept) until the token changes."""


class PermanentDelivery(DeliveryError):
    """The API rejected the batch for its content; retrying it unchanged cannot succeed."""


class ApiError(BridgeError):
    """A request of :class:`bridge.api.client.ApiClient` failed. ``endpoint`` is the request
    (``GET /devices``), ``status`` the last HTTP status (None: no answer), ``code`` the API's
    machine-readable ``error``. The message never holds the token."""

    def __init__(
        self, message: str, *, endpoint: str, status: int | None = None, code: str = ""
    ) -> None:
        self.endpoint = endpoint
        self.status = status
        self.code = code
        super().__init__(f"{endpoint}: {message}")


class ApiUnavailable(ApiError):
    """No usable answer after the client's retries: network error, timeout, 5xx."""


class ApiRateLimited(ApiError):
    """Still 429 after the client's retries, each after waiting the ``Retry-After`` asked."""


class ApiUnauthorized(ApiError):
    """401/403 after pausing and re-reading the token file, or a token that cannot be sent."""


class ApiNotFound(ApiError):
    """404 or a redirect: ``api.base_url`` is wrong, or the resource does not exist."""


class ApiRejected(ApiError):
    """The API refused the request for its content (400, 422, ...); ``code``/message say why."""


class ApiBadResponse(ApiError):
    """A 2xx whose body is not the documented JSON."""


class SpoolError(BridgeError):
    """The spool cannot be opened, read or written."""


class SpoolFull(SpoolError):
    """The spool reached its size cap or the disk is full: stop acknowledging the broker."""


class SpoolLocked(SpoolError):
    """Another bridge process holds the spool's exclusive lock."""


class SpoolTooNew(SpoolError):
    """The spool was written by a newer bridge whose layout this version does not know; it is
    left untouched (exit 78, like a configuration error: restarting cannot fix it)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM in a command other than ``run`` (which stops gracefully on its own): it unwinds
    like Ctrl-C, so that the code that started a private broker, API or bridge process stops
    it on the way out. Not a :class:`BridgeError`: no ``except Exception`` may swallow it."""
