"""Live reload of topic-mappings.yaml: on file change and on SIGHUP, never on a broken file."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import TEST_MAPPINGS, BridgeProcess, env_messages, publish

ENV_ONLY = TEST_MAPPINGS[: TEST_MAPPINGS.index("  - name: plain")]


def _metric(proc: BridgeProcess, sample: str) -> float:
    url = f"http://127.0.0.1:{proc.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as r:  # loopback test server
        for line in r.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _wait_metric(proc: BridgeProcess, sample: str, value: float, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while await asyncio.to_thread(_metric, proc, sample) != value:
            await asyncio.sleep(0.1)


def _rewrite(path: Path, text: str) -> None:
    # Write beside and rename, as editors and ConfigMap updates do: readers never see half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


async def test_mapping_reload_applies_good_files_and_keeps_running_on_bad_ones(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A changed file is picked up (new topics subscribed); a broken one is refused with
    file:line, counted, and the previous rules keep working; the next good file (SIGHUP) wins."""
    proc = BridgeProcess(
        broker.port,
        api.url,
        tmp_path / "bridge",
        mappings=ENV_ONLY,
        **{"mapping.reload_interval_s": "0.2"},
    )
    ok = "metriqo_bridge_config_last_reload_successful"
    good = 'metriqo_bridge_config_reloads_total{result="success"}'
    bad = 'metriqo_bridge_config_reloads_total{result="failure"}'
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        _rewrite(proc.mappings, TEST_MAPPINGS)  # adds the plain-number rule
        await _wait_metric(proc, good, 1)
        await asyncio.to_thread(proc.wait_ready)  # the new subscription is acknowledged
        await publish(broker.port, [("tele/m7/volts", b"230.5")])
        await api.store.wait_for_points(1, 20)
        assert [(p.device_id, p.metric, p.value) for p in api.store.points()] == [
            ("m7", "volts", 230.5)
        ]

        _rewrite(proc.mappings, TEST_MAPPINGS.replace("metrics:", "metircs:"))
        await _wait_metric(proc, bad, 1)
        assert await asyncio.to_thread(_metric, proc, ok) == 0
        await publish(broker.port, env_messages(5, int(time.time() * 1000) - 10))
        await api.store.wait_for_points(1 + 20, 20)  # the previous rules still map

        _rewrite(proc.mappings, ENV_ONLY)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        await _wait_metric(proc, good, 2)
        assert await asyncio.to_thread(_metric, proc, ok) == 1
        assert proc.terminate() == 0
    finally:
        proc.close()
    out = proc.output()
    assert f"reload of {proc.mappings} failed; still running the previous mapping" in out
    assert f"{proc.mappings}:" in out
    assert "rules[0].metircs: unknown key" in out
    assert "unsubscribed ['tele/+/+']" in out
