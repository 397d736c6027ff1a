"""kill -9 between the commit of a dead letter and its PUBACK: the broker redelivers the
message (DUP) to the restarted bridge, which acknowledges it without storing a second dead
letter, for a payload streamed past as too large and for one that fails to parse."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from bridge.failpoints import ENV_VAR
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import (
    BridgeProcess,
    delivered_points,
    env_messages,
    expected_env_points,
    publish,
    run_cli,
)
from tests.support.oracle import assert_exactly, wait_delivered


def _dead_letters(spool: Path) -> list[dict[str, object]]:
    listed = run_cli("dead-letters", "list", "--json", "--spool-path", str(spool))
    assert listed.returncode == 0, listed.stderr
    return [orjson.loads(line) for line in listed.stdout.splitlines()]


@pytest.mark.parametrize("protocol", ["v5", "v311"])
@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b'{"temp": 1, "pad": "' + b"x" * 300_000 + b'"}', "too_large"), (b"{oops", "invalid_json")],
    ids=["too-large", "invalid-json"],
)
async def test_a_dead_letter_redelivered_after_a_crash_is_stored_once(
    broker: LocalBroker,
    api: LocalApi,
    tmp_path: Path,
    *,
    protocol: str,
    payload: bytes,
    reason: str,
) -> None:
    """Crash after the dead letter's commit, before its PUBACK; restart: the redelivered
    message is acknowledged (a reading sent after it arrives) and the spool holds one dead
    letter for it."""
    start_ms = int(time.time() * 1000) - 1000
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge", **{"mqtt.protocol": protocol})
    spool = tmp_path / "bridge" / "spool.db"
    try:
        proc.start({ENV_VAR: "after_commit_before_puback:crash"})
        await asyncio.to_thread(proc.wait_ready)
        await publish(broker.port, [("plant/s0/l0/env", payload)])
        assert proc.proc is not None
        try:
            code = await asyncio.to_thread(proc.proc.wait, 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the failpoint did not fire:\n{proc.output()[-3000:]}")
        assert code == -signal.SIGKILL, proc.output()[-3000:]
        assert [row["reason"] for row in _dead_letters(spool)] == [reason]

        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        # The broker redelivers before anything newer: once this reading is stored, the
        # redelivery has been received, committed and acknowledged.
        await publish(broker.port, env_messages(1, start_ms))
        await wait_delivered(api, expected_env_points(1, start_ms), timeout=60)
        # The redelivery and the reading: the broker did redeliver.
        assert await asyncio.to_thread(proc.metric, "metriqo_bridge_messages_committed_total") == 2
        assert proc.terminate() == 0
    finally:
        proc.close()
    rows = _dead_letters(spool)
    assert [(row["reason"], row["topic"]) for row in rows] == [(reason, "plant/s0/l0/env")]
    assert rows[0]["payload_size"] == len(payload)
    assert_exactly(delivered_points(api.store.points()), expected_env_points(1, start_ms))
