"""``metriqo-bridge simulate-api``: the local Metriqo-compatible API server, with fault modes
for rehearsing an outage (:mod:`bridge.lab.apiserver`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from datetime import timedelta
from pathlib import Path

from bridge.cli.command import Subparsers
from bridge.errors import EX_OK, ConfigError
from bridge.limits import (
    ALERTS_REQUESTS_PER_MINUTE,
    DEVICES_REQUESTS_PER_MINUTE,
    METRICS_REQUESTS_PER_MINUTE,
    TELEMETRY_REQUESTS_PER_MINUTE,
)


def add_parser(sub: Subparsers) -> None:
    api = sub.add_parser(
        "simulate-api",
        help="run a local Metriqo-compatible API server",
        description="Run the local Metriqo-compatible API server (POST /telemetry, GET /devices, "
        "GET /metrics, POST /alerts with webhook calls), each endpoint under its own rate limit, "
        "with fault modes for rehearsing an outage. See docs/guide/local-api.md.",
    )
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument(
        "--token-file",
        type=Path,
        help="file holding the token clients must send "
        "(default: env METRIQO_BRIDGE_TOKEN_FILE or METRIQO_BRIDGE_TOKEN)",
    )
    api.add_argument(
        "--rate-limit",
        type=int,
        default=TELEMETRY_REQUESTS_PER_MINUTE,
        help="telemetry requests per minute, 0 = none",
    )
    for name, default in (
        ("devices", DEVICES_REQUESTS_PER_MINUTE),
        ("metrics", METRICS_REQUESTS_PER_MINUTE),
        ("alerts", ALERTS_REQUESTS_PER_MINUTE),
    ):
        api.add_argument(
            f"--{name}-rate-limit",
            type=int,
            default=default,
            metavar="N",
            help=f"{'POST' if name == 'alerts' else 'GET'} /{name} requests per minute, 0 = none",
        )
    api.add_argument(
        "--online-within",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a device is online if seen within this long (GET /devices status)",
    )
    api.add_argument(
        "--offline-within",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="a device not online is offline if seen within this long, else inactive",
    )
    faults = api.add_argument_group("fault injection (POST /telemetry; all off by default)")
    faults.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share (0..1) of requests answered 500/502/503, storing nothing",
    )
    faults.add_argument(
        "--record-then-500",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share (0..1) of requests stored and then answered 500",
    )
    faults.add_argument(
        "--429-storm",
        dest="storm_429",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="answer 429 to every request for SECONDS after start",
    )
    faults.add_argument(
        "--retry-after",
        default="seconds",
        choices=["seconds", "http-date", "zero", "garbage", "missing", "huge"],
        help="Retry-After form during the 429 storm (default: seconds)",
    )
    faults.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay before the response headers",
    )
    faults.add_argument(
        "--slow-body",
        type=int,
        default=0,
        metavar="BPS",
        help="stream response bodies at BPS bytes per second",
    )
    faults.add_argument("--hang", action="store_true", help="accept requests, never answer")
    faults.add_argument(
        "--unauthorized-until-token-file",
        type=Path,
        metavar="FILE",
        help="answer 401 until a request carries the token in FILE; then accept only it",
    )
    faults.add_argument(
        "--max-points-413", type=int, metavar="N", help="413 for more than N points per request"
    )
    faults.add_argument(
        "--poison-value",
        type=float,
        metavar="X",
        help="400 (naming the object index) for any point whose value is exactly X",
    )
    api.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.config.secrets import read_secret_file
    from bridge.lab.apiserver.devices import StatusThresholds
    from bridge.lab.apiserver.faults import Faults
    from bridge.lab.apiserver.ratelimits import EndpointLimits
    from bridge.lab.apiserver.server import serve_forever

    token_file, origin = args.token_file, "command-line flag --token-file"
    if token_file is None and os.environ.get("METRIQO_BRIDGE_TOKEN_FILE"):
        token_file = Path(os.environ["METRIQO_BRIDGE_TOKEN_FILE"])
        origin = "environment variable METRIQO_BRIDGE_TOKEN_FILE"
    if token_file is not None:
        token = read_secret_file(token_file, "token", origin=origin, header=True)
    elif os.environ.get("METRIQO_BRIDGE_TOKEN"):
        token = os.environ["METRIQO_BRIDGE_TOKEN"]
    else:
        raise ConfigError(
            "the API server needs a token: --token-file FILE or METRIQO_BRIDGE_TOKEN",
            key="simulate-api",
        )

    def limit(n: int) -> int | None:
        return n if n > 0 else None

    try:
        limits = EndpointLimits(
            telemetry=limit(args.rate_limit),
            devices=limit(args.devices_rate_limit),
            metrics=limit(args.metrics_rate_limit),
            alerts=limit(args.alerts_rate_limit),
        )
        thresholds = StatusThresholds(
            timedelta(seconds=args.online_within), timedelta(seconds=args.offline_within)
        )
    except (ValueError, OverflowError) as exc:
        raise ConfigError(str(exc), key="simulate-api") from None
    rotated = (
        None
        if args.unauthorized_until_token_file is None
        else read_secret_file(
            args.unauthorized_until_token_file,
            "unauthorized-until-token",
            origin="command-line flag --unauthorized-until-token-file",
            header=True,
        )
    )
    try:
        faults = Faults(
            error_rate=args.error_rate,
            record_then_500=args.record_then_500,
            storm_429_s=args.storm_429,
            retry_after=args.retry_after,
            latency_s=args.latency,
            slow_body_bps=args.slow_body,
            hang=args.hang,
            unauthorized_until_token=rotated,
            max_points_413=args.max_points_413,
            poison_value=args.poison_value,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), key="simulate-api") from None

    async def serve() -> None:
        # SIGTERM stops it cleanly: as a container's PID 1 it would otherwise be ignored.
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve_forever(
                args.host,
                args.port,
                token,
                limits.telemetry,
                faults,
                limits=limits,
                thresholds=thresholds,
            )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return EX_OK
