"""The bridge as a subprocess: SIGKILL mid-stream, SIGTERM under load, config errors, locks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support import REPO, TOKEN
from tests.support.harness import (
    BridgeProcess,
    delivered_points,
    env_messages,
    expected_env_points,
    publish,
    publish_in_background,
)


async def _wait_all_delivered(api: LocalApi, n: int, start_ms: int, timeout: float) -> None:
    """Wait until every expected point has arrived (a count would be fooled by duplicates)."""
    want = expected_env_points(n, start_ms)
    async with asyncio.timeout(timeout):
        while not want <= set(delivered_points(api.store.points())):
            await asyncio.sleep(0.1)


def _assert_no_loss(api: LocalApi, n: int, start_ms: int) -> None:
    got = delivered_points(api.store.points())
    missing = expected_env_points(n, start_ms) - set(got)
    extra = set(got) - expected_env_points(n, start_ms)
    assert not missing, f"{len(missing)} points lost, e.g. {sorted(missing)[:8]}"
    assert not extra, f"{len(extra)} points invented, e.g. {sorted(extra)[:8]}"
    # Duplicates are allowed only as exact repeats (same point id and timestamp).
    for point, count in Counter(got).items():
        assert count <= 2, (point, count)
    assert all(r.points_written <= 100 for r in api.store.requests)


@pytest.mark.parametrize("kills", [1, 3])
async def test_sigkill_mid_stream_loses_nothing(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, kills: int
) -> None:
    """kill -9 of the bridge while messages flow, then restart: every point arrives."""
    n = 4000
    start_ms = int(time.time() * 1000) - n
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge")
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        publishing = await publish_in_background(broker.port, env_messages(n, start_ms), 1500)
        for k in range(kills):
            # Kill once some (but not all) of the stream has been delivered.
            target = (k + 1) * 4 * n // (kills + 2)
            async with asyncio.timeout(60):
                while api.store.point_count() < target:
                    await asyncio.sleep(0.01)
            proc.kill()
            await asyncio.sleep(0.3)
            proc.start()
            await asyncio.to_thread(proc.wait_ready)
        assert await publishing == n
        await _wait_all_delivered(api, n, start_ms, 90)
        assert proc.terminate() == 0
    finally:
        proc.close()
    _assert_no_loss(api, n, start_ms)
    assert TOKEN not in proc.output()


async def test_sigkill_while_api_down_then_restart_delivers_spool(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """Points spooled while the API is down survive kill -9 and are delivered after restart."""
    n = 500
    start_ms = int(time.time() * 1000) - n
    from bridge.lab.broker import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v2"
    proc = BridgeProcess(broker.port, url, tmp_path / "bridge")
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        await publish(broker.port, env_messages(n, start_ms))
        await asyncio.sleep(1.0)  # committed and acknowledged, but undeliverable
        proc.kill()
        async with LocalApi(token=TOKEN, port=port, rate_limit_per_minute=None) as api:
            proc.start()
            await _wait_all_delivered(api, n, start_ms, 60)
            assert proc.terminate() == 0
            _assert_no_loss(api, n, start_ms)
    finally:
        proc.close()


async def test_sigterm_under_load_drains_and_exits_zero(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """SIGTERM while messages flow: exit 0 within the stop timeout; a restart finds the rest."""
    n = 3000
    start_ms = int(time.time() * 1000) - n
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge")
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        publishing = await publish_in_background(broker.port, env_messages(n, start_ms), 2000)
        async with asyncio.timeout(30):
            while api.store.point_count() < 2000:
                await asyncio.sleep(0.01)
        began = time.monotonic()
        code = await asyncio.to_thread(proc.terminate)
        took = time.monotonic() - began
        assert code == 0
        assert took < 10.0
        await publishing
        proc.start()  # messages left unacknowledged at stop are still in the broker session
        await _wait_all_delivered(api, n, start_ms, 60)
        assert proc.terminate() == 0
    finally:
        proc.close()
    _assert_no_loss(api, n, start_ms)


def _run_cli(
    args: list[str], tmp_path: Path, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIQO_BRIDGE_")}
    env["METRIQO_BRIDGE_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_broken_mapping_exits_78_naming_file_line_key_and_touches_no_spool(tmp_path: Path) -> None:
    """A mapping typo stops startup with exit 78 and file:line: key; no spool is created."""
    mappings = tmp_path / "bad.yaml"
    mappings.write_text(
        "version: 1\nrules:\n  - name: env\n    topic: plant/{site}/env\n"
        "    device_id: '{site}'\n    metircs: {temp: t}\n",
        encoding="utf-8",
    )
    spool = tmp_path / "spool" / "bridge.db"
    result = _run_cli(
        ["run", "--mapping-file", str(mappings), "--spool-path", str(spool), "--mqtt-port", "1"],
        tmp_path,
    )
    assert result.returncode == 78
    assert f"{mappings}:6: rules[0].metircs: unknown key" in result.stderr
    assert not spool.parent.exists()
    assert "Traceback" not in result.stderr


def test_bad_setting_exits_78_without_echoing_secrets(tmp_path: Path) -> None:
    """A wrong setting names its source; the token never appears in the output."""
    result = _run_cli(
        ["run", "--set", "api.base_url=http://example.com/api/v2", "--set", f"mqtt.port={TOKEN}"],
        tmp_path,
    )
    assert result.returncode == 78
    assert "command-line setting mqtt.port: mqtt.port" in result.stderr
    assert "command-line setting api.base_url" not in result.stderr or "plain http" in result.stderr
    assert TOKEN not in result.stderr + result.stdout


def test_check_command_reports_ok_and_errors(tmp_path: Path) -> None:
    """`check` passes the shipped mapping file and fails a broken one with 78."""
    ok = _run_cli(["check", str(REPO / "topic-mappings.yaml")], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nrules:\n  - name: x\n    topic: a/#/b\n    device_id: d\n"
        "    payload: number\n    metric: m\n",
        encoding="utf-8",
    )
    result = _run_cli(["check", str(bad)], tmp_path)
    assert result.returncode == 78
    assert f"{bad}:4: rules[0].topic: '#' is only allowed as the last level" in result.stderr


async def test_second_instance_on_same_spool_is_refused(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Two bridges cannot share one spool: the second exits 75 naming the holder."""
    first = BridgeProcess(broker.port, api.url, tmp_path / "bridge")
    second = BridgeProcess(broker.port, api.url, tmp_path / "bridge", **{"mqtt.client_id": "other"})
    try:
        first.start()
        await asyncio.to_thread(first.wait_ready)
        second.start()
        assert second.proc is not None
        code = await asyncio.to_thread(second.proc.wait, 30)
        assert code == 75
        assert "in use by another metriqo-bridge" in second.output()
        assert first.proc is not None
        assert first.proc.poll() is None
    finally:
        first.close()
        second.close()
