"""End to end: collect naming (separator, prefix template) through a real mosquitto and the
local API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import make_settings, publish, running_bridge

MAPPINGS = """version: 1
rules:
  - name: telegraf
    topic: "telegraf/{host}/{measurement}"
    device_id: "{host}"
    collect: {path: fields, prefix: "{measurement}_", separator: "_"}
"""


async def test_collect_names_use_the_separator_and_the_prefix_template(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    cpu = {"fields": {"usage_idle": 97.5, "usage": {"user": 1.5}}}
    disk = {"fields": {"free": 12, "io": {"read": 3}}}
    async with running_bridge(settings, MAPPINGS):
        await publish(
            broker.port,
            [("telegraf/h1/cpu", orjson.dumps(cpu)), ("telegraf/h1/disk", orjson.dumps(disk))],
        )
        async with asyncio.timeout(60):
            await api.store.wait_for_points(4, 60)
    got = {(p.device_id, p.metric): p.value for p in api.store.points()}
    assert got == {
        ("h1", "cpu_usage_idle"): 97.5,
        ("h1", "cpu_usage_user"): 1.5,
        ("h1", "disk_free"): 12,
        ("h1", "disk_io_read"): 3,
    }
