"""One GET on a loopback HTTP endpoint of the bridge (health, readiness, metrics) for tests."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body) for any HTTP status, error statuses included; None when no answer came
    (refused, reset, timeout). An error status's body is closed here: Python 3.14+ warns when
    an HTTPError is collected with it open, and pytest turns that into a failure of whichever
    test is running then."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310  # loopback URLs
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read()
    except OSError:
        return None
