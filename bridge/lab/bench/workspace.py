"""The bench's throwaway set-up: the settings of the bridge under test."""

from __future__ import annotations

import argparse
from pathlib import Path

from bridge.lab.broker import LocalBroker

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
