"""The bench's throwaway set-up: the settings of the bridge under test."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.lab.localrun import BridgeProcess

DEVICES = 20
BENCH_TOPIC = "bench/+/env"  # the bridge's subscription for BENCH_MAPPINGS


def bridge_settings(
    args: argparse.Namespace, broker: LocalBroker, workdir: Path, api_port: int, client_id: str
) -> dict[str, str]:
    """The bridge's ``--set`` settings for a bench run (``--set`` items of the bench win)."""
    settings = {
        "mqtt.port": str(broker.port),
        "mqtt.client_id": client_id,
        "mqtt.protocol": args.protocol,
        "api.base_url": f"http://127.0.0.1:{api_port}/api/v2",
        "api.requests_per_minute": str(args.requests_per_minute or args.api_limit or 1_000_000),
        "spool.path": str(workdir / "spool.db"),
        "mapping.file": str(workdir / "bench-mappings.yaml"),
        "mapping.reload_interval_s": "0",
        "log_level": "WARNING",
    }
    for item in args.set:
        key, _, value = str(item).partition("=")
        settings[key] = value
    return settings


async def await_delivery(
    api: LocalApi, bridge: BridgeProcess, points: int, within_s: float
) -> bool:
    """Whether ``points`` reached the API within ``within_s``; then waits (up to 30 s) for the
    bridge's spool to be empty too, since the deletes follow the 201s."""
    try:
        await api.store.wait_for_points(points, within_s)
    except TimeoutError:
        return False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if await asyncio.to_thread(bridge.spool_points) == 0:
                return True
        await asyncio.sleep(0.2)
    return True
