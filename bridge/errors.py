"""The one error hierarchy of metriqo-bridge.

::

    BridgeError
    ├── ConfigError          settings or topic-mappings.yaml are invalid (exit code 78)
    ├── PayloadError         one MQTT message cannot be mapped (counted, dead-lettered)
    ├── DeliveryError        a batch could not be delivered to the API
    │   ├── RetryableDelivery    network errors, timeouts, 5xx, 429: try again later
    │   └── PermanentDelivery    the API refused the batch for what it contains (400, 413, 422)
    └── SpoolError           the durable spool cannot be opened or written
        ├── SpoolLocked          another instance holds the spool's lock
        └── SpoolTooNew          a newer version's spool layout (after a downgrade)

Library exceptions are translated once, at the edge of the module that uses the library.
"""

from __future__ import annotations

EX_CONFIG = 78  # sysexits.h: configuration error; systemd units use RestartPreventExitStatus=78


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A settings or mapping file is invalid; names file, line and key path."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, key: str = ""
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.detail = message
        where = file or "<settings>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


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


class PermanentDelivery(DeliveryError):
    """The API rejected the batch for its content; retrying it unchanged cannot succeed."""


class SpoolError(BridgeError):
    """The spool cannot be opened, read or written."""


class SpoolLocked(SpoolError):
    """Another bridge process holds the spool's exclusive lock."""


class SpoolTooNew(SpoolError):
    """The spool was written by a newer bridge whose layout this version does not know; it is
    left untouched (exit 78, like a configuration error: restarting cannot fix it)."""
