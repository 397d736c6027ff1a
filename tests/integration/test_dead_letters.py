"""``dead-letters`` beside a running bridge: requeued messages and records reach the API once."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from bridge.app import Bridge
from bridge.cli.main import main
from bridge.lab.apiserver.faults import Faults
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support import TOKEN
from tests.support.harness import (
    TEST_MAPPINGS,
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)

# The meter rule reads a field the devices do not send: every meter message is dead-lettered.
BROKEN = (
    TEST_MAPPINGS
    + """  - name: meter
    topic: "meter/{device}/reading"
    device_id: "{device}"
    metrics: {kw: kw}
    timestamp: {field: ts}
"""
)
FIXED = BROKEN.replace("metrics: {kw: kw}", "metrics: {kw: power_kw}")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read settings only from their flags, not from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("METRIQO_BRIDGE_"):
            monkeypatch.delenv(name)


async def wait_dead_letters(bridge: Bridge, reason: str, n: int) -> None:
    """Wait until the bridge has committed ``n`` dead letters with ``reason``."""
    async with asyncio.timeout(30):
        while metric(bridge, "metriqo_bridge_dead_letters_total", reason=reason) < n:
            await asyncio.sleep(0.05)


async def wait_drained(bridge: Bridge) -> None:
    """Wait until nothing waits in the spool for delivery."""
    async with asyncio.timeout(30):
        while bridge.spool.file.depth_points:
            await asyncio.sleep(0.05)


async def run_cli(*args: str) -> int:
    """``metriqo-bridge ARGS`` on a worker thread, so the bridge's event loop keeps running."""
    return await asyncio.to_thread(main, list(args))


async def test_requeue_with_a_fixed_mapping_delivers_each_message_once_while_running(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dead letters of a broken rule are requeued beside the running bridge, arrive once, and
    leave only the messages no mapping can fix."""
    n_env, n_meter = 30, 12
    start_ms = int(time.time() * 1000) - 10_000
    spool = tmp_path / "spool.db"
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(FIXED, encoding="utf-8")
    meters = [
        (f"meter/m-{i}/reading", b'{"power_kw": %d.5, "ts": %d}' % (i, start_ms + i))
        for i in range(n_meter)
    ]
    garbage = [(f"plant/s9/l{i}/env", b'{"temp": 1,') for i in range(3)]
    settings = make_settings(broker.port, api.url, spool)
    async with running_bridge(settings, mappings=BROKEN) as bridge:
        await publish(broker.port, [*env_messages(n_env, start_ms), *meters, *garbage])
        await api.store.wait_for_points(4 * n_env, 30)
        await wait_dead_letters(bridge, "missing_field", n_meter)
        await wait_dead_letters(bridge, "invalid_json", 3)

        assert await run_cli("dead-letters", "list", "--spool-path", str(spool)) == 0
        listed = capsys.readouterr().out
        assert listed.endswith(
            f"{n_meter + 3} dead letter(s) match: invalid_json 3, missing_field {n_meter}\n"
        )

        args = ("dead-letters", "requeue", "--spool-path", str(spool), "--mapping-file", str(fixed))
        assert await run_cli(*args, "--dry-run") == 1
        assert capsys.readouterr().out.startswith(
            f"dry run: would requeue {n_meter} dead letter(s) → {n_meter} record(s) / "
            f"{n_meter} point(s); nothing was written\n"
        )
        assert await run_cli(*args) == 1  # the invalid JSON still fails: scripts notice
        report = capsys.readouterr().out.splitlines()
        assert (
            report[0]
            == f"requeued {n_meter} dead letter(s) → {n_meter} record(s) / {n_meter} point(s)"
        )
        assert report[1] == "still failing: 3 dead letter(s), kept"

        await api.store.wait_for_points(4 * n_env + n_meter, 30)
        await wait_drained(bridge)

        assert await run_cli("dead-letters", "list", "--spool-path", str(spool), "--json") == 0
        left = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert sorted(o["topic"] for o in left) == [f"plant/s9/l{i}/env" for i in range(3)]
        assert {o["reason"] for o in left} == {"invalid_json"}

    got = delivered_points(api.store.points())
    assert Counter(got).most_common(1)[0][1] == 1, "a point was delivered twice"
    meter_points = {(f"m-{i}", "kw", start_ms + i, i + 0.5) for i in range(n_meter)}
    assert set(got) == expected_env_points(n_env, start_ms) | meter_points


async def test_rejected_records_are_delivered_after_the_api_is_fixed(
    broker: LocalBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A point the API refused is requeued unchanged (same device, metric, time and value) once
    the API accepts it, and arrives exactly once."""
    poison = 13.0
    spool = tmp_path / "spool.db"
    broken_api = LocalApi(TOKEN, rate_limit_per_minute=None, faults=Faults(poison_value=poison))
    await broken_api.__aenter__()
    closed = False
    try:
        port = broken_api.port
        settings = make_settings(broker.port, broken_api.url, spool)
        async with running_bridge(settings) as bridge:
            await publish(broker.port, [("tele/pump-1/bar", b"13"), ("tele/pump-2/bar", b"2.5")])
            await broken_api.store.wait_for_points(1, 30)
            await wait_dead_letters(bridge, "api_rejected", 1)
            assert [(p.device_id, p.value) for p in broken_api.store.points()] == [("pump-2", 2.5)]

            export = (
                "dead-letters",
                "export",
                "--spool-path",
                str(spool),
                "--reason",
                "api_rejected",
            )
            assert await run_cli(*export) == 0
            (line,) = capsys.readouterr().out.splitlines()
            rejected = orjson.loads(orjson.loads(line)["payload"])
            assert rejected["device_id"] == "pump-1"
            assert rejected["metrics"] == {"bar": poison}

            # "The API is fixed": the same address now answers without the fault.
            await broken_api.__aexit__(None, None, None)
            closed = True
            async with LocalApi(TOKEN, port=port, rate_limit_per_minute=None) as fixed_api:
                requeue = ("dead-letters", "requeue", "--spool-path", str(spool), "--mapping-file")
                mappings = tmp_path / "mappings.yaml"
                mappings.write_text(TEST_MAPPINGS, encoding="utf-8")
                assert await run_cli(*requeue, str(mappings), "--reason", "api_rejected") == 0
                assert capsys.readouterr().out == (
                    "requeued 1 dead letter(s) → 1 record(s) / 1 point(s)\n"
                )
                await fixed_api.store.wait_for_points(1, 30)
                await wait_drained(bridge)
                await asyncio.sleep(0.5)  # a second delivery would show up by now
                (point,) = fixed_api.store.points()
                assert (point.device_id, point.metric, point.value) == ("pump-1", "bar", poison)
                assert round(point.timestamp.timestamp() * 1_000_000) == rejected["ts_us"]
                assert await run_cli("dead-letters", "list", "--spool-path", str(spool)) == 0
                assert capsys.readouterr().out == "no dead letters match\n"
    finally:
        if not closed:
            await broken_api.__aexit__(None, None, None)
