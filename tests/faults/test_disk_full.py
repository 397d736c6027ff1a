"""Rows 12 and 21: the spool's filesystem really fills up, with waiting points or with dead
letters.

The bridge runs as a subprocess in its own mount namespace (``unshare -rm``) with its spool
directory on a private 12 MiB tmpfs, so SQLite gets a real ``SQLITE_FULL`` — for the intake's
inserts, and in WAL mode also for the deletes that would free space. The API is down while a
backlog fills the disk, then comes up. Expected: back-pressure while full (the broker keeps the
rest), no crash, the reserve file given back so the deletes can run, intake resuming by itself,
every point delivered once, and an intact spool. Dead letters filling the disk are pruned,
oldest first, before intake is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from tests.support import REPO, TOKEN
from tests.support.harness import (
    TEST_MAPPINGS,
    Publisher,
    delivered_points,
    env_messages,
    expected_env_points,
)

_INTEGRITY = (
    "import sqlite3, sys; "
    "print('INTEGRITY', sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check')"
    ".fetchone()[0])"
)


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _unshare_works(), reason="needs unshare -rm (user + mount namespaces) for a real tmpfs"
)


def _metric(http_port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _ready_problems(http_port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as r:
            body: bytes = r.read()
            return body.decode()
    except urllib.error.HTTPError as exc:
        with exc:  # a 503 carries a body; Python 3.14+ warns when it is left open
            return str(exc.read().decode())
    except OSError as exc:
        return str(exc)


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # Its own process group, so a failed test can kill the shell and the bridge together.
        return subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _bridge_on_tmpfs(
    settings: dict[str, object], spool_dir: Path, size_mib: int, log: Path
) -> subprocess.Popen[bytes]:
    """The bridge with ``settings``, its spool directory on a private tmpfs of ``size_mib``;
    after it stops, the shell prints the filesystem's use and the spool's integrity check."""
    spool = settings["spool.path"]
    bridge = [sys.executable, "-m", "bridge", "run"]
    for key, value in settings.items():
        bridge += ["--set", f"{key}={value}"]
    script = (
        f'mount -t tmpfs -o size={size_mib}m tmpfs "{spool_dir}" || exit 97; '
        # The shell passes SIGTERM on to the bridge, then checks the spool it leaves behind.
        "\"$@\" & child=$!; trap 'kill -TERM $child' TERM; "
        "wait $child; rc=$?; [ $rc -gt 128 ] && { wait $child; rc=$?; }; "
        f'df -k "{spool_dir}" | tail -1; '
        f'"{sys.executable}" -c "{_INTEGRITY}" "{spool}"; exit $rc'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIQO_BRIDGE_")}
    env["METRIQO_BRIDGE_TOKEN"] = TOKEN
    return _start(["unshare", "-rm", "sh", "-c", script, "sh", *bridge], env, log)


async def _until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)


async def test_a_full_disk_pauses_intake_then_drains_without_loss_or_corruption(
    broker: LocalBroker, tmp_path: Path
) -> None:
    n = 80000  # about 10 MB of spool in 1 KiB pages: more than the 6 MiB left beside the reserve
    start_ms = int(time.time() * 1000) - n
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    spool = spool_dir / "bridge.db"
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(TEST_MAPPINGS, encoding="utf-8")
    api_port, http_port = free_port(), free_port()
    settings = {
        "mqtt.port": broker.port,
        "mqtt.reconnect_max_s": 1,
        "api.base_url": f"http://127.0.0.1:{api_port}/api/v2",
        "api.retry_max_s": 1,
        "api.requests_per_minute": 1_000_000,
        "batch.linger_s": 0.2,
        "spool.path": spool,
        "spool.reserve_bytes": 6 << 20,
        "http.port": http_port,
        "mapping.file": mappings,
    }
    log = tmp_path / "bridge.log"
    proc = _bridge_on_tmpfs(settings, spool_dir, 12, log)
    publisher = Publisher(broker.port)
    try:
        await _until(lambda: _metric(http_port, "metriqo_bridge_mqtt_connected") == 1, 20, "up")
        publishing = asyncio.create_task(
            asyncio.to_thread(publisher.publish_all, env_messages(n, start_ms))
        )
        await _until(
            lambda: _metric(http_port, "metriqo_bridge_spool_full") == 1, 60, "disk never filled"
        )
        committed = _metric(http_port, "metriqo_bridge_messages_committed_total")
        assert committed is not None
        assert committed < n
        assert "spool full" in _ready_problems(http_port)
        await asyncio.sleep(1.0)
        assert proc.poll() is None, log.read_text()
        assert _metric(http_port, "metriqo_bridge_messages_committed_total") == committed
        async with LocalApi(token=TOKEN, port=api_port, rate_limit_per_minute=None) as api:
            await publishing
            await _until(lambda: api.store.point_count() >= 4 * n, 120, "backlog not drained")
            await _until(
                lambda: _metric(http_port, "metriqo_bridge_spool_points") == 0, 30, "spool busy"
            )
            assert proc.poll() is None, log.read_text()
            got = delivered_points(api.store.points())
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        publisher.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    output = log.read_text(errors="replace")
    assert sorted(got) == sorted(expected_env_points(n, start_ms)), "lost or duplicated points"
    assert "INTEGRITY ok" in output, output[-3000:]
    assert "released the" in output  # the reserve was given back for the deletes
    assert "Traceback" not in output, output[-3000:]
    assert TOKEN not in output


async def test_dead_letters_filling_the_disk_are_pruned_before_intake_stops(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Row 21 on a real full disk: one device floods 16 MB of bad messages into a 12 MiB
    filesystem; the oldest dead letters are pruned to make room (counted as disk_full), good
    readings sent after the flood all arrive once, and the spool stays intact."""
    n_bad, n_good = 4000, 500  # 3 KB dead letters: 12 MB, under their budget
    start_ms = int(time.time() * 1000) - n_good
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(TEST_MAPPINGS, encoding="utf-8")
    http_port = free_port()
    settings: dict[str, object] = {
        "mqtt.port": broker.port,
        "mqtt.reconnect_max_s": 1,
        "mqtt.receive_maximum": 200,  # commits of 800 KB at most: they fit beside the reserve
        "api.base_url": api.url,
        "api.retry_max_s": 1,
        "api.requests_per_minute": 1_000_000,
        "batch.linger_s": 0.2,
        "spool.path": spool_dir / "bridge.db",
        "spool.reserve_bytes": 4 << 20,
        "http.port": http_port,
        "mapping.file": mappings,
    }
    log = tmp_path / "bridge.log"
    proc = _bridge_on_tmpfs(settings, spool_dir, 12, log)
    publisher = Publisher(broker.port)
    pruned = 'metriqo_bridge_dead_letters_pruned_total{reason="disk_full"}'
    try:
        await _until(lambda: _metric(http_port, "metriqo_bridge_mqtt_connected") == 1, 20, "up")
        flood = [
            ("plant/broken/l1/env", (b'{"temp": %d, "x": "' % i).ljust(3000, b"z"))
            for i in range(n_bad)
        ]
        await asyncio.to_thread(publisher.publish_all, flood)
        await asyncio.to_thread(publisher.publish_all, env_messages(n_good, start_ms))
        await _until(lambda: api.store.point_count() >= 4 * n_good, 120, "good readings stuck")
        await _until(
            lambda: _metric(http_port, "metriqo_bridge_spool_points") == 0, 60, "not deleted"
        )
        assert (_metric(http_port, pruned) or 0) > 0
        committed = _metric(http_port, "metriqo_bridge_messages_committed_total")
        assert committed == n_bad + n_good
        assert "ready" in _ready_problems(http_port)
        assert proc.poll() is None, log.read_text()
        got = delivered_points(api.store.points())
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        publisher.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    output = log.read_text(errors="replace")
    assert sorted(got) == sorted(expected_env_points(n_good, start_ms)), "lost or duplicated"
    assert "INTEGRITY ok" in output, output[-3000:]
    assert "to make room for readings on a full disk" in output
    assert "stop timeout reached" not in output
    assert "Traceback" not in output, output[-3000:]


def test_delivered_ids_filling_a_small_disk_are_forgotten_rather_than_refuse_intake(
    tmp_path: Path,
) -> None:
    """A long drain into a small disk: the spool is empty but for the ids of delivered
    messages, kept to recognise redeliveries. When they fill the disk, the oldest are forgotten
    and intake goes on; while records wait, they are kept (the deletes make the room)."""
    mount = tmp_path / "spool"
    mount.mkdir()
    script = f'mount -t tmpfs -o size=12m tmpfs "{mount}" || exit 97; exec "$@"'
    scenario = [sys.executable, "-m", "tests.support.ids_fill_disk", str(mount)]
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *scenario],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.splitlines()[-1])
    drained, waiting, after = got["drained"], got["waiting"], got["after"]
    assert drained["refused"] == 0, got  # the old ids never stopped intake
    assert drained["forgot_at"] > 0, got  # ... because some were forgotten
    assert 0 < drained["ids"] < drained["most_ids"], got
    assert waiting["points"] > 0, got
    assert waiting["ids"] == waiting["ids_before"], got  # kept while records wait
    assert after["resumed"], got
    assert got["check"] == "ok", got
