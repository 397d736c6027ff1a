"""``metriqo-bridge simulate-sensors``: publish a simulated plant fleet to a broker.

The same fleet the demo uses (one device kind per rule of the mapping file), running until
stopped, for the compose stack and for trying a mapping against a test broker. It never
publishes anywhere the user did not name with ``--host``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from bridge.cli.command import Subparsers
from bridge.cli.flags import add_old_spelling
from bridge.errors import EX_FAILURE, EX_OK, EX_USAGE


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "simulate-sensors",
        help="publish a simulated sensor fleet (from the mapping file) until stopped",
        description="Publish a simulated fleet, one device kind per rule of the mapping file, "
        "to the broker named with --host/--port, until stopped: what the compose stack's "
        "sensors service runs. See docs/deployment/compose.md.",
        epilog="exit codes: 0 stopped, 1 the broker refused or no subscriber appeared, 2 bad "
        "options, 78 the mapping file is invalid.",
    )
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    p.add_argument("--rate", type=float, default=10.0, help="messages/s in all (default 10)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    add_old_spelling(p, "--mappings", "--mapping-file", "mappings", type=Path)
    p.add_argument(
        "--mapping-file",
        dest="mappings",
        metavar="FILE",
        type=Path,
        default=_env_path("METRIQO_BRIDGE_MAPPING__FILE"),
        help="mapping file (default: METRIQO_BRIDGE_MAPPING__FILE, else ./topic-mappings.yaml, "
        "else the example shipped with the package)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated values")
    p.add_argument(
        "--wait-subscriber",
        type=float,
        default=300.0,
        metavar="S",
        help="wait this long for the bridge to subscribe before giving up (default 300)",
    )
    p.add_argument(
        "--mixed-plant",
        action="store_true",
        help="publish the mixed plant instead (about 420 topics: every recipe's convention and "
        "custom shapes; QoS 0, no mapping file needed): something for discover and tap to find "
        "their way through",
    )
    p.set_defaults(handler=run)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def run(args: argparse.Namespace) -> int:
    from bridge.lab.examples import choose_mapping
    from bridge.lab.fleet import FleetError, SensorFleet

    if args.mixed_plant:
        return _mixed_plant(args)
    from bridge.mapping.loader import load_mappings

    args.mappings, where = choose_mapping(args.mappings)
    print(f"simulate-sensors: {where}", flush=True)
    rules = load_mappings(args.mappings)
    try:
        fleet = SensorFleet(
            args.host,
            args.port,
            args.devices,
            args.rate,
            args.seed,
            rules=rules,
            any_host=True,
            keep_expected=False,
        )
    except ValueError as exc:
        print(f"metriqo-bridge simulate-sensors: {exc}", file=sys.stderr)
        return EX_USAGE
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: fleet.stop())
    kinds = len({d.rule.name for d in fleet.devices})
    print(
        f"simulate-sensors: {len(fleet.devices)} devices of {kinds} kinds, {args.rate:g} msg/s "
        f"to {args.host}:{args.port}",
        flush=True,
    )
    seconds = args.seconds if args.seconds > 0 else 10.0 * 365 * 86400
    try:
        fleet.publish_for(seconds, subscriber_timeout=args.wait_subscriber)
    except FleetError as exc:
        print(f"metriqo-bridge simulate-sensors: {exc}", file=sys.stderr)
        return EX_FAILURE
    print(
        f"simulate-sensors: stopped; {fleet.published} acknowledged, {fleet.unrouted} reached "
        f"no subscriber, {fleet.rejected} refused, {fleet.unconfirmed} unconfirmed",
        flush=True,
    )
    return EX_OK


def _mixed_plant(args: argparse.Namespace) -> int:
    from bridge.lab.mixedplant import MixedPlant

    try:
        plant = MixedPlant(args.host, args.port, rate=args.rate, seed=args.seed)
    except ValueError as exc:
        print(f"metriqo-bridge simulate-sensors: {exc}", file=sys.stderr)
        return EX_USAGE
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: plant.stop())
    print(
        f"simulate-sensors: mixed plant, {len(plant.topics)} topics, {args.rate:g} msg/s to "
        f"{args.host}:{args.port}",
        flush=True,
    )
    seconds = args.seconds if args.seconds > 0 else 10.0 * 365 * 86400
    try:
        published = plant.publish_for(seconds)
    except OSError as exc:
        print(f"metriqo-bridge simulate-sensors: {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EX_FAILURE
    print(f"simulate-sensors: stopped; {published} published", flush=True)
    return EX_OK
