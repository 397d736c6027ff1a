"""``metriqo-bridge demo``: broker, API, sensor fleet and bridge on this machine, end to end
(:mod:`bridge.lab.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bridge.cli.command import Subparsers
from bridge.cli.flags import add_old_spelling


def add_parser(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="local broker + API + sensor fleet + bridge, end to end",
        description="Everything on loopback: a private mosquitto, a local API, a simulated fleet "
        "and the bridge, then a check through the API that every published point arrived once. "
        "See docs/guide/getting-started.md.",
        epilog="exit codes: 0 every published point arrived, 1 otherwise, 69 mosquitto is not "
        "installed.",
    )
    demo.add_argument("--devices", type=int, default=36, help="simulated devices")
    demo.add_argument("--seconds", type=float, default=10.0, help="how long the fleet publishes")
    demo.add_argument("--rate", type=float, default=200.0, help="messages per second in total")
    add_old_spelling(demo, "--mappings", "--mapping-file", "mappings", type=Path)
    demo.add_argument(
        "--mapping-file",
        dest="mappings",
        metavar="FILE",
        type=Path,
        default=None,
        help="mapping file (default: ./topic-mappings.yaml, else the example shipped with the "
        "package)",
    )
    demo.add_argument("--timeout", type=float, default=60.0, help="max wait for delivery")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.lab.demo import run_demo

    return run_demo(args)
