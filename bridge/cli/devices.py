"""``metriqo-bridge devices``: the Metriqo device registry (``GET /devices``, every page at
``per_page=100`` within the devices budget) against the devices this bridge delivered for
(the spool's table); the findings: :mod:`bridge.reconcile.registry`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

import orjson

from bridge.api.client import ApiClient
from bridge.api.models import Device
from bridge.cli.api_tools import (
    add_location,
    api_client,
    api_failed,
    duration_s,
    read_spool,
    settings_and_notes,
)
from bridge.cli.command import Subparsers
from bridge.errors import EX_OK, ApiError
from bridge.reconcile.registry import FINDINGS, RegistryReport, reconcile
from bridge.spool.audit import DeliveredDevice
from bridge.spool.store import Spool

_TITLES = {
    "unknown": "delivered by this bridge, unknown to the registry",
    "silent": "registered, not seen by the registry for longer than --silent-for",
    "offline_delivering": "offline or inactive in the registry, yet this bridge delivers",
    "online_not_delivered": "online in the registry, not delivered by this bridge lately "
    "(another writer?)",
}


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "devices",
        help="compare the Metriqo device registry with the devices this bridge delivers for",
        description="Page through GET /devices (per_page=100, within its 300/min budget) and "
        "compare it with the spool's table of devices delivered for: delivered but unknown to "
        "the registry, registered but silent, offline or inactive while still delivered, and "
        "online while this bridge did not deliver for it. Safe beside a running bridge. See "
        "docs/guide/devices.md.",
        epilog="exit codes: 0 report made (whatever it found), 66 no spool, 69 the API "
        "failed, 78 invalid settings.",
    )
    add_location(p)
    p.add_argument(
        "--silent-for",
        type=duration_s,
        default=3600.0,
        metavar="AGE",
        help="what counts as silent, and as delivering lately (30m, 1h, 2d; default 1h)",
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object (counts and device ids) instead"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_and_notes(args)

    def read(spool: Spool) -> tuple[list[DeliveredDevice], int]:
        return spool.audit.devices(), spool.audit.evicted()

    delivered, evicted = read_spool(settings, read)
    try:
        registry = asyncio.run(fetch_registry(api_client(settings)))
    except ApiError as exc:
        return api_failed(exc)
    report = reconcile(registry, delivered, datetime.now(UTC), args.silent_for, evicted)
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
    else:
        _print(report)
    return EX_OK


async def fetch_registry(client: ApiClient) -> list[Device]:
    async with client as api:
        return [d async for d in api.devices()]


def _print(report: RegistryReport) -> None:
    print(
        f"devices: {report.registered} in the registry, {report.delivered} delivered for by "
        "this bridge" + (f" ({report.evicted} evicted from its table)" if report.evicted else "")
    )
    for name in FINDINGS:
        found = report.findings.get(name, [])
        print(f"\n{name} ({len(found)}): {_TITLES[name]}")
        for device_id in found:
            label = report.labels.get(device_id, "")
            print(f"  {device_id}" + (f"  {label}" if label and label != device_id else ""))
