"""What the integration, fault and deployment tests share: settings, an in-process bridge, the
bridge as a subprocess, a QoS 1 publisher, the env messages and the points they must give.

The subprocess and the publisher are :mod:`bridge.lab.localrun`'s (the ones ``bench`` and
``soak`` use), with the tests' defaults: the test mappings, fast retries, and the test token,
which must never appear in the bridge's output."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from bridge.app import Bridge
from bridge.config.loader import load_settings
from bridge.lab import localrun
from bridge.lab.localrun import Publisher
from bridge.mapping.loader import load_mappings_text
from bridge.settings import Settings
from tests.support import REPO, TOKEN

__all__ = [
    "TEST_MAPPINGS",
    "BridgeProcess",
    "Publisher",
    "delivered_points",
    "env_messages",
    "expected_env_points",
    "make_settings",
    "metric",
    "publish",
    "publish_in_background",
    "run_bridge",
    "run_cli",
    "run_in_thread",
    "running_bridge",
]

TEST_MAPPINGS = """
version: 1
rules:
  - name: env
    topic: "plant/{site}/{line}/env"
    device_id: "{site}-{line}"
    metrics: {temp: temp, rh: rh, kw: power.kw, hz: power.hz}
    timestamp: {field: ts, format: auto}
  - name: plain
    topic: "tele/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
"""


def make_settings(port: int, api_url: str, spool: Path, **extra: str) -> Settings:
    """Settings for a bridge on the test broker and API."""
    overrides = {
        "mqtt.port": str(port),
        "mqtt.client_id": "bridge-under-test",
        "mqtt.reconnect_max_s": "1",
        "api.base_url": api_url,
        "api.token": TOKEN,
        "api.requests_per_minute": "1000000",
        "api.retry_max_s": "1",
        "spool.path": str(spool),
        "http.port": "0",
        "batch.linger_s": "0.2",
    }
    overrides.update(extra)
    return load_settings(environ={}, overrides=overrides)


@contextlib.asynccontextmanager
async def running_bridge(
    settings: Settings,
    mappings: str = TEST_MAPPINGS,
    connected: bool = True,
    password: str | None = None,
    start_timeout: float = 10,
) -> AsyncIterator[Bridge]:
    """Run a bridge in this event loop; stop it gracefully on exit."""
    bridge = Bridge(
        settings,
        load_mappings_text(mappings, "test-mappings.yaml"),
        lambda: TOKEN,
        mqtt_password=password,
    )
    async with run_bridge(bridge, connected=connected, start_timeout=start_timeout):
        yield bridge


@contextlib.asynccontextmanager
async def run_bridge(
    bridge: Bridge,
    *,
    connected: bool = True,
    start_timeout: float = 10,
    must_keep_running: bool = False,
) -> AsyncIterator[Bridge]:
    """Run an already built bridge in this event loop until it is subscribed (or just started,
    with ``connected=False``); stop it gracefully on exit. ``must_keep_running``: fail if it
    stopped on its own meanwhile."""
    task = asyncio.create_task(bridge.run(), name="test.bridge")
    try:
        async with asyncio.timeout(start_timeout):
            await bridge.started()
            while connected and not (bridge.source and bridge.source.state.subscribed):
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield bridge
        assert not (must_keep_running and task.done()), "the bridge stopped on its own"
    finally:
        bridge.stop()
        async with asyncio.timeout(30):
            await task


def metric(bridge: Bridge, name: str, **labels: str) -> float:
    """Current value of one sample of the bridge's registry (0 if absent)."""
    value = bridge.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def publish(
    port: int,
    messages: list[tuple[str, bytes]],
    client_id: str = "test-publisher",
    username: str | None = None,
    password: str | None = None,
    *,
    protocol: str = "v5",
) -> int:
    """Publish ``messages`` at QoS 1 from a fresh client and wait for every PUBACK."""
    pub = Publisher(
        port, client_id=client_id, username=username, password=password, protocol=protocol
    )
    try:
        return await asyncio.to_thread(pub.publish_all, messages)
    finally:
        await asyncio.to_thread(pub.close)  # off the loop: an in-process bridge keeps running


async def publish_in_background(
    port: int,
    messages: list[tuple[str, bytes]],
    rate: float,
    *,
    username: str | None = None,
    protocol: str = "v5",
) -> asyncio.Task[int]:
    """Start publishing ``messages`` at ``rate`` per second from a fresh client, off the loop;
    the task's result is how many the broker acknowledged."""
    pub = Publisher(
        port, client_id=f"pub-{time.monotonic_ns()}", username=username, protocol=protocol
    )

    def run() -> int:
        try:
            return pub.publish_all(messages, rate=rate)
        finally:
            pub.close()

    return asyncio.create_task(asyncio.to_thread(run))


def env_messages(
    count: int, start_ms: int, sites: int = 3, lines: int = 4
) -> list[tuple[str, bytes]]:
    """JSON env messages with unique timestamps; values derived from the index."""
    out = []
    for i in range(count):
        site, line = f"s{i % sites}", f"l{(i // sites) % lines}"
        payload = b'{"temp": %d.25, "rh": %d, "power": {"kw": %d.5, "hz": 50}, "ts": %d}' % (
            i,
            i % 100,
            i % 7,
            start_ms + i,
        )
        out.append((f"plant/{site}/{line}/env", payload))
    return out


def expected_env_points(
    count: int, start_ms: int, sites: int = 3, lines: int = 4
) -> set[tuple[str, str, int, float]]:
    """The (device, metric, ts_ms, value) points :func:`env_messages` should produce."""
    out = set()
    for i in range(count):
        device = f"s{i % sites}-l{(i // sites) % lines}"
        ts = start_ms + i
        out |= {
            (device, "temp", ts, i + 0.25),
            (device, "rh", ts, float(i % 100)),
            (device, "kw", ts, i % 7 + 0.5),
            (device, "hz", ts, 50.0),
        }
    return out


def delivered_points(points: Iterable[object]) -> list[tuple[str, str, int, float]]:
    """Stored API points as (device, metric, ts_ms, value) tuples."""
    out = []
    for p in points:
        ts_ms = round(p.timestamp.timestamp() * 1000)  # type: ignore[attr-defined]
        out.append((p.device_id, p.metric, ts_ms, p.value))  # type: ignore[attr-defined]
    return out


class BridgeProcess(localrun.BridgeProcess):
    """The bridge as a subprocess (``python -m bridge run``), so it can be SIGKILLed: the lab's
    :class:`~bridge.lab.localrun.BridgeProcess` on the test broker and API, with the test
    mappings (``mappings``), the test token, and ``extra`` settings over the defaults."""

    mappings: Path  # always written: the tests rewrite it to test reloads

    def __init__(
        self, port: int, api_url: str, workdir: Path, mappings: str = TEST_MAPPINGS, **extra: str
    ) -> None:
        settings = {
            "mqtt.port": str(port),
            "mqtt.client_id": "bridge-proc",
            "mqtt.reconnect_max_s": "1",
            "api.base_url": api_url,
            "api.requests_per_minute": "1000000",
            "api.retry_max_s": "1",
            "spool.path": str(workdir / "spool.db"),
            "batch.linger_s": "0.2",
            **extra,
        }
        super().__init__(workdir, settings, TOKEN, mappings=mappings, cwd=REPO)

    def output(self) -> str:
        """Everything the process wrote, over all its starts."""
        return self.log()

    def close(self) -> None:
        """Kill it if it still runs; fail if the token appeared in its output (which goes to
        files, out of pytest's capture and of the check in ``tests/conftest.py``)."""
        super().close()
        if TOKEN in self.output():
            raise AssertionError(f"the API token appeared in the bridge's output ({self.workdir})")


def run_in_thread(fn: object, *args: object) -> threading.Thread:
    """Start ``fn(*args)`` in a daemon thread."""
    t = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
    t.start()
    return t


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m bridge ARGS`` from the repository, with none of the caller's bridge settings
    in its environment (only ``env``); stdout and stderr captured as text."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("METRIQO_BRIDGE_")}
    base.pop("LOG_FORMAT", None)
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
