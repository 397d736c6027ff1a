"""kill -9 at exact places (failpoints), then a restart without them: nothing is lost, and the
only duplicates are points the API had accepted while the crash kept them in the spool.

The oracle is exact, not a bound: from the API's points and the spool's rows at the moment of
the crash, the final count of every point is predicted (see :func:`_assert_recovered`).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
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
    publish_in_background,
)

Point = tuple[str, str, int, float]  # (device, metric, ts_ms, value), as delivered_points()


class FailpointBridge(BridgeProcess):
    """:class:`BridgeProcess` whose :meth:`start` can arm failpoints for that run only."""

    def start(self, failpoints: str = "") -> None:  # type: ignore[override]
        """Start ``python -m bridge run``; ``failpoints`` goes to METRIQO_BRIDGE_FAILPOINTS."""
        super().start({ENV_VAR: failpoints} if failpoints else None)

    @property
    def spool_path(self) -> Path:
        return Path(self.settings["spool.path"])

    def metric(self, name: str) -> float:
        """One unlabelled sample from the running bridge's /metrics."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


@dataclass(frozen=True, slots=True)
class Crash:
    """What the API held and the spool kept at the moment the bridge died."""

    api: Counter[Point]
    spooled: frozenset[Point]
    requests: int


def _open_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _spooled_points(path: Path) -> frozenset[Point]:
    db = _open_ro(path)
    try:
        rows = db.execute("SELECT device_id, ts_us, metrics FROM records").fetchall()
    finally:
        db.close()
    return frozenset(
        (device, name, ts_us // 1000, float(value))
        for device, ts_us, metrics in rows
        for name, value in orjson.loads(metrics).items()
    )


def _integrity(path: Path) -> str:
    db = _open_ro(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


async def _wait_for_crash(proc: FailpointBridge, api: LocalApi, timeout: float = 30) -> Crash:
    """Wait until the bridge dies by SIGKILL at a failpoint; snapshot the API and the spool."""
    assert proc.proc is not None
    try:
        code = await asyncio.to_thread(proc.proc.wait, timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no failpoint fired within {timeout} s:\n{proc.output()[-3000:]}")
    assert code == -signal.SIGKILL, proc.output()[-3000:]
    assert ": crash (SIGKILL)" in proc.output().splitlines()[-1]
    # A request the bridge finished sending before it died may still be in the server's hands.
    await asyncio.sleep(0.3)
    assert _integrity(proc.spool_path) == "ok"
    return Crash(
        Counter(delivered_points(api.store.points())),
        _spooled_points(proc.spool_path),
        len(api.store.requests),
    )


async def _recover(proc: FailpointBridge, api: LocalApi, want: set[Point]) -> float:
    """Restart without failpoints, wait for every point, stop gracefully; returns the points the
    restarted bridge found already spooled (MQTT redeliveries stored once)."""
    proc.start()
    await asyncio.to_thread(proc.wait_ready)
    async with asyncio.timeout(30):
        while not want <= set(delivered_points(api.store.points())):
            await asyncio.sleep(0.1)
    suppressed = await asyncio.to_thread(
        proc.metric, "metriqo_bridge_duplicate_points_suppressed_total"
    )
    assert await asyncio.to_thread(proc.terminate) == 0, proc.output()[-3000:]
    assert _integrity(proc.spool_path) == "ok"
    return suppressed


def _assert_recovered(api: LocalApi, want: set[Point], crash: Crash) -> set[Point]:
    """No loss, nothing invented, and every point's count exactly as the crash predicts.

    A point spooled at the crash is sent once more after the restart; one the API already had
    gains a copy by that. A point not spooled was either delivered and deleted (the broker's
    redelivery of its message must be suppressed) or never committed (the broker redelivers
    it, delivered once). Hence: final count = max(1, count at crash + spooled at crash).
    Returns the duplicated points.
    """
    got = Counter(delivered_points(api.store.points()))
    missing = want - got.keys()
    extra = got.keys() - want
    assert not missing, f"{len(missing)} points lost, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} points invented, e.g. {sorted(extra)[:5]}"
    wrong = {
        p: (n, predicted)
        for p, n in got.items()
        if n != (predicted := max(1, crash.api[p] + (p in crash.spooled)))
    }
    assert not wrong, f"{len(wrong)} points with unexpected counts, e.g. {list(wrong.items())[:5]}"
    assert all(r.points_written <= 100 for r in api.store.requests)
    return {p for p, n in got.items() if n > 1}


N = 400
RATE = 800.0
# The most hits of each point a run of the random test is sure to reach (see there).
_REACHED = {
    "after_receive_before_commit": 300,
    "after_commit_before_puback": 1,
    "after_2xx_before_delete": 10,
}


async def _crash_once(
    broker: LocalBroker,
    api: LocalApi,
    workdir: Path,
    failpoints: str,
    *,
    rate: float = RATE,
    settings: dict[str, str] | None = None,
) -> tuple[Crash, set[Point], float]:
    """Run N messages (at ``rate`` per second) through a bridge armed with ``failpoints`` until
    it dies, recover, and check the oracle; returns the crash snapshot, the duplicated points
    and the points the restarted bridge found already spooled."""
    start_ms = int(time.time() * 1000) - N
    want = expected_env_points(N, start_ms)
    proc = FailpointBridge(broker.port, api.url, workdir, **(settings or {}))
    try:
        proc.start(failpoints)
        await asyncio.to_thread(proc.wait_ready)
        assert f"failpoints armed from {ENV_VAR}" in proc.output()
        publishing = await publish_in_background(broker.port, env_messages(N, start_ms), rate)
        crash = await _wait_for_crash(proc, api)
        assert f"failpoint {failpoints}: crash (SIGKILL)" in proc.output()
        assert await publishing == N
        suppressed = await _recover(proc, api, want)
    finally:
        proc.close()
    assert "failpoints armed" not in proc.outputs[-1].read_text()
    dups = _assert_recovered(api, want, crash)
    return crash, dups, suppressed


async def test_crash_after_receive_before_commit_loses_nothing(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """kill -9 with a message mapped but not committed: the broker redelivers what was not
    acknowledged; duplicates only where the API had accepted points still spooled."""
    crash, dups, _suppressed = await _crash_once(
        broker, api, tmp_path / "bridge", "after_receive_before_commit:crash@150"
    )
    assert dups == crash.spooled & crash.api.keys()


async def test_crash_after_commit_before_puback_stores_redeliveries_once(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """kill -9 between the spool commit and its PUBACKs: the broker redelivers that batch, the
    spool recognises every record by id, and no redelivered message reaches the API twice."""
    # The failpoint counts group commits, and how many there are depends on how the messages
    # arrive: a busy machine makes fewer, larger ones. So crash in the second commit, with the
    # messages spread over two seconds: only a bridge starved of the CPU for all of that would
    # commit them at once.
    crash, dups, suppressed = await _crash_once(
        broker, api, tmp_path / "bridge", "after_commit_before_puback:crash@2", rate=N / 2.0
    )
    # Redelivered messages of the committed batch met their records: stored once.
    assert suppressed >= 4
    # The only duplicates are batches a concurrent delivery had sent before the crash.
    assert dups == crash.spooled & crash.api.keys()


async def test_crash_after_2xx_before_delete_resends_exactly_that_batch(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """kill -9 after a 2xx, before the spool delete: that batch (and only it) is sent again,
    with the same membership and Idempotency-Key; one request in flight bounds it to 100."""
    crash, dups, _suppressed = await _crash_once(
        broker,
        api,
        tmp_path / "bridge",
        "after_2xx_before_delete:crash@3",
        settings={"api.concurrency": "1"},
    )
    requests = api.store.requests
    accepted = requests[crash.requests - 1]  # the one whose 2xx the crash interrupted
    assert accepted.status == 201
    at_crash = api.store.points()[: crash.api.total()]
    batch = set(delivered_points(at_crash[-accepted.points_written :]))
    assert dups == batch
    assert 0 < len(dups) <= 100
    replays = [
        r for r in requests[crash.requests :] if r.idempotency_key == accepted.idempotency_key
    ]
    assert len(replays) == 1
    assert replays[0].body == accepted.body
    assert replays[0].status == 201


async def test_crashes_at_random_points_and_counts_lose_nothing(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """Three kill -9, each at a seeded random failpoint and count, then a clean run: the exact
    oracle holds after the last crash. FAILPOINT_SEED=<n> replays a failure."""
    seed = int(os.environ.get("FAILPOINT_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    per_cycle, cycles = 300, 3
    total = per_cycle * cycles
    start_ms = int(time.time() * 1000) - total
    messages = env_messages(total, start_ms)
    want = expected_env_points(total, start_ms)
    proc = FailpointBridge(broker.port, api.url, tmp_path / "bridge")
    crash: Crash | None = None
    specs: list[str] = []
    try:
        for cycle in range(cycles):
            # Counts each run surely reaches: it gets 300 new messages (1200 points, so at least
            # 12 batches), committed in one or more group commits.
            name, most = rng.choice(list(_REACHED.items()))
            spec = f"{name}:crash@{rng.randint(1, most)}"
            specs.append(spec)
            proc.start(spec)
            if cycle == 0:  # later runs find the broker session, which queues while they start
                await asyncio.to_thread(proc.wait_ready)
            chunk = messages[cycle * per_cycle : (cycle + 1) * per_cycle]
            publishing = await publish_in_background(broker.port, chunk, RATE)
            crash = await _wait_for_crash(proc, api)
            assert await publishing == per_cycle
        await _recover(proc, api, want)
    except BaseException as exc:
        exc.add_note(f"FAILPOINT_SEED={seed}; armed per run: {specs}")
        raise
    finally:
        proc.close()
    assert crash is not None
    try:
        _assert_recovered(api, want, crash)
    except AssertionError as exc:
        exc.add_note(f"FAILPOINT_SEED={seed}; armed per run: {specs}")
        raise


async def test_crash_after_commit_before_puback_timestampless_payload_stored_once(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """kill -9 before the PUBACKs of a committed batch of plain numbers (no timestamp in the
    payload): each message's point should still reach the API exactly once."""
    messages = [(f"tele/dev{i % 4}/m{i % 3}", str(i).encode()) for i in range(N)]
    proc = FailpointBridge(broker.port, api.url, tmp_path / "bridge")
    try:
        proc.start("after_commit_before_puback:crash@10")
        await asyncio.to_thread(proc.wait_ready)
        publishing = await publish_in_background(broker.port, messages, RATE)
        await _wait_for_crash(proc, api)
        assert await publishing == N
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        async with asyncio.timeout(30):
            while len({p.value for p in api.store.points()}) < N:
                await asyncio.sleep(0.1)
        assert await asyncio.to_thread(proc.terminate) == 0
    finally:
        proc.close()
    got = Counter((p.device_id, p.metric, p.value) for p in api.store.points())
    want = {(f"dev{i % 4}", f"m{i % 3}", float(i)) for i in range(N)}
    assert got.keys() == want
    twice = sorted(p for p, n in got.items() if n > 1)
    assert not twice, f"{len(twice)} messages delivered more than once, e.g. {twice[:5]}"
