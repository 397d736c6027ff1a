"""``metriqo-bridge health``: ask a running bridge whether it is alive (or ready).

For container HEALTHCHECKs and scripts, where curl may not exist: it reads the same settings
as ``run`` (file, environment, flags) and the running bridge's runtime file in the state
directory (:mod:`bridge.cli.locate`), so it asks the port the bridge actually listens on.
"""

from __future__ import annotations

import argparse
import http.client
import sys

from bridge.cli.command import Subparsers
from bridge.cli.flags import LOCATE_BRIDGE, add_settings_flags
from bridge.cli.locate import locate
from bridge.errors import EX_FAILURE, EX_OK
from bridge.settings import Settings

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "health",
        help="ask a running bridge for /healthz (or /readyz); exit 0 or 1",
        description="Ask the running bridge for /healthz, or /readyz with --ready: for "
        "container health checks and scripts, no curl needed. It finds the bridge through its "
        "runtime file in the state directory (the port it actually listens on), else through "
        "the same settings as run. With several bridges in one state directory, pick one with "
        "--mqtt-client-id. See docs/reference/http-endpoints.md.",
        epilog="exit codes: 0 the endpoint answered 200, 1 otherwise (the reason on stderr).",
    )
    add_settings_flags(p, LOCATE_BRIDGE, print_config=False)
    p.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only failures")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the endpoint answers 200, else 1 (with the reason on stderr)."""
    ok, reason = probe(locate(args).settings, ready=args.ready, timeout=args.timeout)
    if not args.quiet or not ok:
        print(reason, file=sys.stdout if ok else sys.stderr)
    return EX_OK if ok else EX_FAILURE


def probe(settings: Settings, *, ready: bool, timeout: float) -> tuple[bool, str]:
    """(healthy, one-line reason) from ``/healthz`` or ``/readyz``."""
    if not settings.http.enabled:
        return False, "http.enabled is false: the bridge serves no health endpoint"
    host = _WILDCARDS.get(settings.http.host, settings.http.host)
    path = "/readyz" if ready else "/healthz"
    conn = http.client.HTTPConnection(host, settings.http.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read(2000).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        return False, f"no answer from http://{host}:{settings.http.port}{path}: {exc}"
    finally:
        conn.close()
    if resp.status == 200:
        return True, f"{path}: {resp.status} {body}"
    return False, f"{path}: {resp.status} {body}"
