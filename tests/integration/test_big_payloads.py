"""Payloads far over the size cap stream past the bridge: its memory stays bounded, each one is
dead-lettered once as ``too_large``, and the readings around them all arrive."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import (
    BridgeProcess,
    Publisher,
    delivered_points,
    env_messages,
    expected_env_points,
    run_cli,
)
from tests.support.oracle import assert_exactly, wait_delivered

MIB = 1 << 20
BIG = 10_000_000  # bytes per oversize payload, as in the report that found the problem
BIG_COUNT = 40
NORMAL = 2000
# The README's promise for the whole process.
RSS_LIMIT = 100 * MIB
# Peak resident set gained while the big payloads pass, over the peak with normal traffic
# alone. Buffering even one 10 MB packet costs twice that (the packet, then its payload
# copied out of it); streaming it past costs a 64 KiB excerpt and a read buffer. The margin is
# for the allocator and the spool's page cache, not for timing: no interleaving of the
# publisher and the bridge can make a streamed packet cost 10 MB.
GROWTH_LIMIT = 16 * MIB


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """The project's mosquitto, here taking packets up to the MQTT maximum: since 2.1 it refuses
    packets over 2,000,000 bytes by default (``max_packet_size``), disconnecting the publisher,
    so the 10 MB payloads would never reach the bridge (2.0 had no limit)."""
    with LocalBroker(workdir=tmp_path / "broker", extra_config="max_packet_size 268435455") as b:
        yield b


def _big_payload(i: int) -> bytes:
    head = b'{"temp": 21.5, "ts": %d, "firmware_dump": "' % i
    return head + b"A" * (BIG - len(head) - 2) + b'"}'


def _interleaved(normal: list[tuple[str, bytes]], every: int) -> Iterator[tuple[str, bytes]]:
    """The normal messages with one oversize payload after each ``every`` of them; the big
    payloads are made as they are published, so the publisher holds few at a time."""
    for i, message in enumerate(normal):
        yield message
        if i % every == every - 1:
            yield "plant/s0/l0/env", _big_payload(i)


def _labelled(proc: BridgeProcess, name: str, labels: str) -> float:
    """One labelled sample of the bridge's /metrics (0 when absent)."""
    url = f"http://127.0.0.1:{proc.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _until_dead_letters(proc: BridgeProcess, n: int) -> None:
    async with asyncio.timeout(120):
        while (
            await asyncio.to_thread(
                _labelled, proc, "metriqo_bridge_dead_letters_total", 'reason="too_large"'
            )
            < n
        ):
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("protocol", ["v5", "v311"])
async def test_big_payloads_stream_past_in_bounded_memory(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, protocol: str
) -> None:
    """40 payloads of 10 MB among 2,000 normal messages: the bridge's peak RSS (VmHWM) stays
    under 100 MB and grows by less than one such payload, each big one is one `too_large`
    dead letter, and every normal point arrives exactly once."""
    start_ms = int(time.time() * 1000) - 10 * NORMAL
    messages = env_messages(2 * NORMAL, start_ms)
    warm, normal = messages[:NORMAL], messages[NORMAL:]
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge", **{"mqtt.protocol": protocol})
    pub = Publisher(broker.port, client_id="big-publisher")
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        # Normal traffic first, so the peak below is the bridge at work, not at rest.
        await asyncio.to_thread(pub.publish_all, warm)
        await wait_delivered(api, expected_env_points(NORMAL, start_ms), timeout=120)
        _, warm_peak = proc.cpu_and_rss()

        sent = await asyncio.to_thread(pub.publish_all, _interleaved(normal, NORMAL // BIG_COUNT))
        assert sent == NORMAL + BIG_COUNT
        await _until_dead_letters(proc, BIG_COUNT)
        await wait_delivered(api, expected_env_points(2 * NORMAL, start_ms), timeout=120)
        _, peak = proc.cpu_and_rss()
        dead = _labelled(proc, "metriqo_bridge_dead_letters_total", 'reason="too_large"')
        assert proc.terminate() == 0
    finally:
        await asyncio.to_thread(pub.close)
        proc.close()
    print(
        f"{protocol}: peak RSS {peak / MIB:.1f} MiB, with normal traffic only {warm_peak / MIB:.1f}"
    )
    assert dead == BIG_COUNT
    listed = run_cli(
        "dead-letters",
        "list",
        "--json",
        "--limit",
        "1000",
        "--spool-path",
        str(tmp_path / "bridge" / "spool.db"),
    )
    assert listed.returncode == 0, listed.stderr
    rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == BIG_COUNT
    for row in rows:
        kept = base64.b64decode(row["payload_base64"])
        assert (row["reason"], row["topic"], row["payload_size"]) == (
            "too_large",
            "plant/s0/l0/env",
            BIG,
        )
        assert row["truncated"]
        assert len(kept) == 65536
        assert kept.startswith(b'{"temp": 21.5')
    assert_exactly(delivered_points(api.store.points()), expected_env_points(2 * NORMAL, start_ms))
    assert peak - warm_peak <= GROWTH_LIMIT, (
        f"peak RSS grew by {(peak - warm_peak) / MIB:.1f} MiB while the big payloads passed "
        f"(to {peak / MIB:.1f} MiB)"
    )
    assert peak <= RSS_LIMIT, f"peak RSS {peak / MIB:.1f} MiB > {RSS_LIMIT / MIB:.0f} MiB"
