"""``metriqo-bridge soak``: a seeded random fault schedule, then the no-loss oracle
(:mod:`bridge.lab.soak`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bridge.cli.command import Subparsers
from bridge.lab.soak_schedule import FAULTS


def add_parser(sub: Subparsers) -> None:
    soak = sub.add_parser(
        "soak",
        help="run with a seeded random fault schedule, then check nothing was lost",
        description="Hours of plant life in minutes: a private broker, the local API and the "
        "bridge with a seeded random schedule of faults, then the no-loss oracle. The seed "
        "replays the schedule. See docs/design/fault-injection.md.",
        epilog="exit codes: 0 the oracle held, 1 otherwise, 2 an unknown fault name, 69 "
        "mosquitto is not installed.",
    )
    soak.add_argument("--minutes", type=float, default=5.0, help="how long to publish")
    soak.add_argument("--seed", type=int, default=None, help="replay a schedule (default: new)")
    soak.add_argument("--rate", type=float, default=100.0, help="messages per second")
    soak.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated subset of: {', '.join(FAULTS)}",
    )
    soak.add_argument("--json", dest="json_out", type=Path, help="also write the report here")
    soak.add_argument("--keep", type=Path, help="keep the work directory (logs, spool) here")
    soak.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.lab.soak import run_soak

    return run_soak(args)
