"""kill -9 at exact places (failpoints, or PUBACKs held back by the fault proxy), then a restart
without them: nothing is lost, and the only duplicates are points the API had accepted while
the crash kept them in the spool.

The oracle is exact, not a bound: from the API's points and the spool's rows at the moment of
the crash, the final count of every point is predicted (see :func:`_assert_recovered`). A
message without a timestamp in its payload must also stay one reading: every copy of it carries
the same (receive) time (see :func:`_assert_timestampless_once`).
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
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from bridge.failpoints import ENV_VAR
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.lab.faultproxy import HOLD_UP, PASS, REFUSE, FaultProxy
from tests.support.harness import (
    BridgeProcess,
    delivered_points,
    env_messages,
    expected_env_points,
    publish,
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(ts_us: int) -> int:
    """A spooled timestamp in milliseconds exactly as :func:`delivered_points` rounds the one
    the API stored (a receive time has microseconds: flooring would miss half of them)."""
    return round((_EPOCH + timedelta(microseconds=ts_us)).timestamp() * 1000)


def _spooled_points(path: Path) -> frozenset[Point]:
    db = _open_ro(path)
    try:
        # Settled records wait for their sweep: delivered, not spooled.
        rows = db.execute(
            "SELECT device_id, ts_us, metrics FROM records "
            "WHERE seq NOT IN (SELECT seq FROM settled)"
        ).fetchall()
    finally:
        db.close()
    return frozenset(
        (device, name, _ms(ts_us), float(value))
        for device, ts_us, metrics in rows
        for name, value in orjson.loads(metrics).items()
    )


def _integrity(path: Path) -> str:
    db = _open_ro(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


async def _wait_for_crash(
    proc: FailpointBridge, api: LocalApi, timeout: float = 30, *, failpoint: bool = True
) -> Crash:
    """Wait until the bridge dies by SIGKILL (at a failpoint, unless ``failpoint`` is False:
    the test killed it); snapshot the API and the spool."""
    assert proc.proc is not None
    try:
        code = await asyncio.to_thread(proc.proc.wait, timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no failpoint fired within {timeout} s:\n{proc.output()[-3000:]}")
    assert code == -signal.SIGKILL, proc.output()[-3000:]
    if failpoint:
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


Reading = tuple[str, str, float]  # (device, metric, value) of a message without a timestamp


def _plain_messages(first: int, count: int) -> list[tuple[str, bytes]]:
    """Messages whose payload is a bare number: their points carry the receive time."""
    return [(f"tele/dev{i % 4}/m{i % 3}", str(i).encode()) for i in range(first, first + count)]


def _plain_readings(first: int, count: int) -> set[Reading]:
    return {(f"dev{i % 4}", f"m{i % 3}", float(i)) for i in range(first, first + count)}


def _readings_delivered(api: LocalApi) -> set[Reading]:
    return {(p.device_id, p.metric, p.value) for p in api.store.points()}


def _assert_timestampless_once(api: LocalApi, want: set[Reading], crash: Crash) -> None:
    """Every message delivered as one reading: all its copies carry one receive time, so a
    broker redelivery was recognised, not stored as a second reading. Copies of that one point
    are then counted exactly as for any other point (:func:`_assert_recovered`)."""
    times: defaultdict[Reading, set[int]] = defaultdict(set)
    for device, name, ts_ms, value in delivered_points(api.store.points()):
        times[(device, name, value)].add(ts_ms)
    assert times.keys() == want, (
        f"lost {sorted(want - times.keys())[:5]}, invented {sorted(times.keys() - want)[:5]}"
    )
    twice = {r: sorted(ts) for r, ts in times.items() if len(ts) > 1}
    assert not twice, (
        f"{len(twice)} messages stored as two readings (a redelivery got a new receive time), "
        f"e.g. {sorted(twice.items())[:5]}"
    )
    _assert_recovered(api, {(d, n, min(times[(d, n, v)]), v) for d, n, v in want}, crash)


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


def _committed(proc: FailpointBridge) -> float:
    return proc.metric("metriqo_bridge_messages_committed_total")


def _fences(proc: FailpointBridge) -> float:
    return proc.metric("metriqo_bridge_mqtt_puback_fences_total")


async def _recover_readings(
    proc: FailpointBridge, api: LocalApi, want: set[Reading], redelivered: int = 0
) -> float:
    """Restart without failpoints, wait for every reading (and for ``redelivered`` messages
    committed), stop gracefully; returns the points the restarted bridge recognised as already
    stored or delivered (redeliveries)."""
    proc.start()
    await asyncio.to_thread(proc.wait_ready)
    async with asyncio.timeout(30):
        while not want <= _readings_delivered(api):
            await asyncio.sleep(0.1)
        while await asyncio.to_thread(_committed, proc) < redelivered:
            await asyncio.sleep(0.1)
    suppressed = await asyncio.to_thread(
        proc.metric, "metriqo_bridge_duplicate_points_suppressed_total"
    )
    assert await asyncio.to_thread(proc.terminate) == 0, proc.output()[-3000:]
    assert _integrity(proc.spool_path) == "ok"
    return suppressed


async def test_crash_after_commit_before_puback_timestampless_payload_stored_once(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """kill -9 before the PUBACKs of a committed batch of plain numbers (no timestamp in the
    payload), with the PUBACKs of earlier batches just written: every message stays one
    reading, and its copies are only those the crash explains."""
    # Crash in the third group commit, with the messages spread over two seconds, as in
    # test_crash_after_commit_before_puback_stores_redeliveries_once: how many commits there
    # are depends on how busy the machine is, and a count it may never reach is a hang.
    want = _plain_readings(0, N)
    proc = FailpointBridge(broker.port, api.url, tmp_path / "bridge")
    try:
        proc.start("after_commit_before_puback:crash@3")
        await asyncio.to_thread(proc.wait_ready)
        messages = _plain_messages(0, N)
        publishing = await publish_in_background(broker.port, messages, N / 2.0)
        crash = await _wait_for_crash(proc, api)
        assert await publishing == N
        await _recover_readings(proc, api, want)
    finally:
        proc.close()
    _assert_timestampless_once(api, want, crash)


async def _commit_all(proc: FailpointBridge, port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish ``messages`` and wait until the bridge has committed (and acknowledged) them."""
    before = await asyncio.to_thread(_committed, proc)
    assert await publish(port, messages) == len(messages)
    async with asyncio.timeout(30):
        while await asyncio.to_thread(_committed, proc) < before + len(messages):
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("protocol", ["v5", "v311"])
async def test_crash_before_the_broker_read_earlier_pubacks_stores_timestampless_once(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, protocol: str
) -> None:
    """kill -9 while the PUBACKs of committed plain numbers are written but not yet read by the
    broker (the fault proxy holds them, as a busy broker or a full socket would): the broker
    redelivers those messages, and each one is still stored, and delivered, as one reading."""
    before, held, later = _plain_messages(0, 60), _plain_messages(60, 60), _plain_messages(120, 60)
    want = _plain_readings(0, 180)
    async with FaultProxy(broker.host, broker.port) as proxy:
        proc = FailpointBridge(
            proxy.port, api.url, tmp_path / "bridge", **{"mqtt.protocol": protocol}
        )
        try:
            proc.start()
            await asyncio.to_thread(proc.wait_ready)
            await _commit_all(proc, broker.port, before)
            async with asyncio.timeout(10):  # the broker answered a fence after those PUBACKs
                while await asyncio.to_thread(_fences, proc) == 0:
                    await asyncio.sleep(0.05)
            await proxy.set_mode(HOLD_UP)  # from here on, no PUBACK reaches the broker
            fences = await asyncio.to_thread(_fences, proc)
            # Two rounds: the commits of the second are the ones that would forget the receive
            # times of the first if a written PUBACK counted as read.
            await _commit_all(proc, broker.port, held)
            await _commit_all(proc, broker.port, later)
            async with asyncio.timeout(30):  # delivered with their receive times
                while not _plain_readings(0, 180) <= _readings_delivered(api):
                    await asyncio.sleep(0.05)
            # No fence passed since (one answer may have been on its way back at the switch).
            assert await asyncio.to_thread(_fences, proc) <= fences + 1
            assert proc.proc is not None
            proc.proc.kill()
            crash = await _wait_for_crash(proc, api, failpoint=False)
            await proxy.set_mode(REFUSE)  # closes the link: the held PUBACKs never arrive
            await proxy.set_mode(PASS)
            # The broker redelivers every message whose PUBACK it never read.
            suppressed = await _recover_readings(proc, api, want, len(held) + len(later))
        finally:
            proc.close()
    _assert_timestampless_once(api, want, crash)
    assert suppressed >= len(held) + len(later)  # each redelivery recognised
