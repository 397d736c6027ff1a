"""The admin commands find a real running bridge through its state directory's runtime file:
its actual HTTP port and spool, from another working directory, with none of its flags."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config.loader import load_settings
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.lab.broker.process import free_port
from bridge.spool.store import Spool
from tests.support import REPO, TOKEN
from tests.support.harness import TEST_MAPPINGS, publish
from tests.support.http_get import http_get


def _env() -> dict[str, str]:
    """The caller's environment without bridge settings (XDG_STATE_HOME stays: the test's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIQO_BRIDGE_")}
    env.pop("LOG_FORMAT", None)
    env["PYTHONPATH"] = str(REPO)
    return env


@contextlib.contextmanager
def bridge_process(args: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``metriqo-bridge run ARGS`` in ``cwd``, the token from the environment; SIGTERM at the
    end (SIGKILL if it does not stop)."""
    env = {**_env(), "METRIQO_BRIDGE_TOKEN": TOKEN}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        assert TOKEN not in log.read_text(errors="replace")


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, path: str = "/readyz") -> None:
    """Wait (generously: the machine is busy) until the bridge answers ``path`` with 200."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bridge exited {proc.returncode}:\n{log.read_text()}")
        got = http_get(f"http://127.0.0.1:{port}{path}")
        if got is not None and got[0] == 200:
            return
        time.sleep(0.1)
    pytest.fail(f"bridge not ready:\n{log.read_text()[-3000:]}")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``metriqo-bridge ARGS`` from ``cwd`` with no bridge settings in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _bridge_args(broker: LocalBroker, api: LocalApi, mappings: Path, *more: str) -> list[str]:
    return ["--mapping-file", str(mappings), "--mqtt-port", str(broker.port),
            "--api-base-url", api.url, "--set", "api.retry_max_s=1", *more]  # fmt: skip


async def test_health_backup_and_dead_letters_find_a_bridge_started_with_other_flags(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, private_state_home: Path
) -> None:
    """``run --spool-path /x/bridge.db --http-port P`` in one directory; then ``health``,
    ``dead-letters list`` and ``backup`` with no flags from another directory reach that
    bridge (its port, its spool) through the runtime file; a graceful stop removes the file."""
    start_dir, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start_dir.mkdir()
    elsewhere.mkdir()
    mappings = start_dir / "m.yaml"
    mappings.write_text(TEST_MAPPINGS, encoding="utf-8")
    spool = tmp_path / "x" / "bridge.db"
    port = free_port()
    log = tmp_path / "bridge.log"
    args = _bridge_args(broker, api, mappings, "--spool-path", str(spool), "--http-port", str(port))
    with bridge_process(args, start_dir, log) as proc:
        await asyncio.to_thread(wait_ready, proc, port, log)
        runtime = private_state_home / "run" / "metriqo-bridge.json"
        assert runtime.is_file()
        assert f"spool {spool}, state directory {private_state_home}" in log.read_text()

        health = await asyncio.to_thread(cli, "health", "--ready", cwd=elsewhere)
        assert health.returncode == 0, health.stderr
        assert health.stdout.startswith("/readyz: 200")

        await publish(broker.port, [("plant/a/l1/env", b'{"temp": 1,')])  # not JSON
        deadline = time.monotonic() + 60
        while True:
            listed = await asyncio.to_thread(cli, "dead-letters", "list", cwd=elsewhere)
            assert listed.returncode == 0, listed.stderr
            if "invalid_json" in listed.stdout or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert "invalid_json" in listed.stdout, listed.stdout + listed.stderr

        # requeue maps with the bridge's mapping file (none in this directory): the broken
        # JSON still fails (exit 1), where a missing mapping file would be exit 78.
        requeue = await asyncio.to_thread(
            cli, "dead-letters", "requeue", "--dry-run", cwd=elsewhere
        )
        assert requeue.returncode == 1, requeue.stderr
        assert "invalid_json" in requeue.stdout + requeue.stderr

        copy = tmp_path / "copy.db"
        backed = await asyncio.to_thread(cli, "backup", str(copy), cwd=elsewhere)
        assert backed.returncode == 0, backed.stderr
        assert f"backed up {spool} to {copy}" in backed.stdout

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    assert not runtime.exists()


async def test_bridges_sharing_a_state_dir_are_picked_by_client_id(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Scale-out: two bridges, one state directory. ``health`` without a client id names both
    and exits 78; with ``--mqtt-client-id`` it asks that bridge's own port."""
    mappings = tmp_path / "m.yaml"
    mappings.write_text(TEST_MAPPINGS, encoding="utf-8")
    ports = {"gw-a": free_port(), "gw-b": free_port()}
    with contextlib.ExitStack() as stack:
        for client_id, port in ports.items():
            log = tmp_path / f"{client_id}.log"
            args = _bridge_args(broker, api, mappings, "--mqtt-client-id", client_id,
                                "--spool-path", str(tmp_path / client_id / "spool.db"),
                                "--http-port", str(port))  # fmt: skip
            proc = stack.enter_context(bridge_process(args, tmp_path, log))
            await asyncio.to_thread(wait_ready, proc, port, log, "/healthz")
        either = await asyncio.to_thread(cli, "health", cwd=tmp_path)
        assert either.returncode == 78
        assert "gw-a, gw-b" in either.stderr
        for client_id in ports:
            one = await asyncio.to_thread(
                cli, "health", "--mqtt-client-id", client_id, cwd=tmp_path
            )
            assert one.returncode == 0, one.stderr


async def test_an_old_relative_spool_is_kept_in_use_with_a_warning(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, private_state_home: Path
) -> None:
    """Upgraded in place: ./spool/metriqo-bridge.db exists, spool.path is unset and the new
    default does not exist. The bridge keeps the old spool (its readings are not left behind),
    logs a WARNING naming both paths, and admin commands elsewhere find it."""
    old = tmp_path / "spool" / "metriqo-bridge.db"
    settings = load_settings(environ={}, overrides={"spool.path": str(old)})
    spool = Spool(settings.spool)
    spool.open()
    spool.close()
    mappings = tmp_path / "m.yaml"
    mappings.write_text(TEST_MAPPINGS, encoding="utf-8")
    port = free_port()
    log = tmp_path / "bridge.log"
    with bridge_process(
        _bridge_args(broker, api, mappings, "--http-port", str(port)), tmp_path, log
    ) as proc:
        await asyncio.to_thread(wait_ready, proc, port, log)
        text = log.read_text()
        assert "WARNING" in text
        assert f"old default location {old}" in text
        assert f"new default {private_state_home / 'spool.db'}" in text
        assert not (private_state_home / "spool.db").exists()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        backed = await asyncio.to_thread(cli, "backup", str(tmp_path / "c.db"), cwd=elsewhere)
        assert backed.returncode == 0, backed.stderr
        assert f"backed up {old}" in backed.stdout
