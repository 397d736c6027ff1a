"""``metriqo-bridge bench``: measure throughput, latency, CPU and memory on this machine
(:mod:`bridge.lab.bench`). The parser is built here without importing the bench, so other
commands do not pay for its imports."""

from __future__ import annotations

import argparse
from pathlib import Path

from bridge.cli.command import Subparsers


def add_parser(sub: Subparsers) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure throughput, latency, CPU and memory locally",
        description="Measure the bridge on this machine: a live rate, a queued backlog (beside "
        "a bare paho client and mosquitto_sub), memory with millions of points waiting, a long "
        "mapping file, a backlog drained by several bridges, `check` on long mapping files, or "
        "decoding Sparkplug B messages, what deadbands save on a simulated fleet, or the bytes "
        "the spool writes per point. "
        "See docs/design/performance.md.",
        epilog="exit codes: 0 nothing lost, 1 a point was lost or duplicated (sparkplug: a "
        "message decoded to other numbers than were encoded; a missed performance target does "
        "not change it), 69 mosquitto is not installed.",
    )
    bench.add_argument(
        "mode",
        choices=[
            "rate",
            "backlog",
            "spool",
            "rules",
            "replicas",
            "check",
            "sparkplug",
            "deadband",
            "edge",
            "disk",
        ],
        help="live rate, queued backlog, memory with a full spool, many mapping rules, a "
        "backlog drained by several bridges in one share group, `check` on long mapping files, "
        "the cost of decoding a Sparkplug B DDATA message, or what deadbands save on a "
        "simulated fleet (points/s against the API budget), or an edge gateway: pinned to one "
        "core and capped in memory, a backlog drained while a live flow goes on, or the bytes the "
        "spool writes per point in a live flow and the pages of each transaction by table",
    )
    bench.add_argument(
        "--rate",
        type=float,
        default=None,
        help="rate mode: messages/s (default 1000); edge mode: the live flow (default 500)",
    )
    bench.add_argument(
        "--seconds", type=float, default=10.0, help="rate mode: how long; edge mode: live flow"
    )
    bench.add_argument(
        "--memory-mb", type=int, default=256, help="edge mode: the bridge's memory cap"
    )
    bench.add_argument(
        "--messages",
        type=int,
        default=20000,
        help="backlog, rules, replicas, edge: backlog size; disk: messages in the flow",
    )
    bench.add_argument(
        "--replicas", default="1,2,3", help="replicas mode: group sizes to compare (default 1,2,3)"
    )
    bench.add_argument(
        "--no-baselines",
        action="store_true",
        help="backlog mode: skip the bare paho-mqtt and mosquitto_sub drains",
    )
    bench.add_argument(
        "--points", type=int, default=5_000_000, help="spool mode: points written into the spool"
    )
    bench.add_argument(
        "--idle-seconds", type=float, default=5.0, help="spool mode: API down, no traffic"
    )
    bench.add_argument(
        "--live-rate", type=float, default=1000.0, help="spool mode: messages/s while API down"
    )
    bench.add_argument(
        "--live-seconds", type=float, default=10.0, help="spool mode: how long, API down"
    )
    bench.add_argument(
        "--drain-seconds",
        type=float,
        default=60.0,
        help="spool mode: API up, drain until empty or this long",
    )
    bench.add_argument(
        "--rules",
        default=None,
        help="rules mode: the rule counts to compare (default 10,1000); check mode: the file "
        "sizes to check (default 2000,5000,20000)",
    )
    bench.add_argument(
        "--iterations",
        type=int,
        default=20000,
        help="rules mode: messages mapped per round; sparkplug mode: messages decoded per round",
    )
    bench.add_argument(
        "--rounds", type=int, default=5, help="rules, sparkplug modes: rounds (best is kept)"
    )
    bench.add_argument(
        "--metrics", type=int, default=20, help="sparkplug mode: metrics per DDATA message"
    )
    bench.add_argument(
        "--api-limit", type=int, default=None, help="API requests/min limit (default: none)"
    )
    bench.add_argument(
        "--requests-per-minute", type=float, default=None, help="bridge pacing (api.*)"
    )
    bench.add_argument(
        "--sensors", type=int, default=2000, help="deadband, disk modes: sensors in the fleet"
    )
    bench.add_argument(
        "--fleet-seconds",
        type=int,
        default=3600,
        help="deadband mode: measurement time simulated (default 3600)",
    )
    bench.add_argument("--seed", type=int, default=1, help="deadband mode: random seed")
    bench.add_argument(
        "--span-seconds",
        type=float,
        default=3000.0,
        help="disk mode: seconds of point timestamps the flow spans (the audit grows with it)",
    )
    bench.add_argument("--protocol", choices=["v5", "v311"], default="v5")
    bench.add_argument("--timeout", type=float, default=900.0, help="max wait for delivery")
    bench.add_argument("--json", dest="json_out", type=Path, help="also write the report here")
    bench.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra bridge setting"
    )
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.lab.bench.runner import run_bench

    return run_bench(args)
