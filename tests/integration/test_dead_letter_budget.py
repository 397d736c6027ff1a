"""Dead letters beside a running bridge: a flood of bad messages from one device never stops
the good readings of the others, the budget prunes and counts, ``dead-letters purge`` works
while the bridge runs, and payloads reach the log only when a setting allows it."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from bridge.app import Bridge
from bridge.cli.main import main
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support.harness import (
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)
from tests.support.waiting import until

MIB = 1 << 20
SECRET = b"serial=SN-7731-secret"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read settings only from their flags, not from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("METRIQO_BRIDGE_"):
            monkeypatch.delenv(name)


def flood(n: int, size: int = 2000) -> list[tuple[str, bytes]]:
    """``n`` messages of one broken device: cut-off JSON of ``size`` bytes."""
    return [
        ("plant/broken/l1/env", (b'{"temp": %d, "ts": 1795000000000, "x": "' % i).ljust(size, b"z"))
        for i in range(n)
    ]


def readyz(bridge: Bridge) -> tuple[int, dict[str, object]]:
    """Status and body of the bridge's /readyz."""
    assert bridge.status is not None
    url = f"http://127.0.0.1:{bridge.status.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status), orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:  # a 503 carries a body; Python 3.14+ warns when it is left open
            return int(exc.code), orjson.loads(exc.read())


def stored(bridge: Bridge) -> float:
    """Dead letters the bridge says it keeps."""
    return metric(bridge, "metriqo_bridge_dead_letters_stored")


async def test_a_flood_of_bad_messages_never_withholds_acks_for_good_readings(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """spool.max_bytes 1 MiB, 1,000 bad 2 KB messages from one device (2 MB of dead letters),
    then good readings from twelve others: every good point arrives, /readyz stays ready and
    the spool never reports itself full."""
    n_good = 300
    start_ms = int(time.time() * 1000) - n_good
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"spool.max_bytes": str(MIB)}
    )
    async with running_bridge(settings) as bridge:
        await publish(broker.port, flood(1000), client_id="broken-device")
        await publish(broker.port, env_messages(n_good, start_ms), client_id="good-devices")
        await api.store.wait_for_points(4 * n_good, 60)
        assert metric(bridge, "metriqo_bridge_dead_letters_total", reason="invalid_json") == 1000
        assert bridge.spool.file.used_bytes > 2 * MIB  # the dead letters are all there
        assert metric(bridge, "metriqo_bridge_spool_full") == 0
        assert metric(bridge, "metriqo_bridge_intake_paused_seconds_total") == 0
        await until(lambda: stored(bridge) == 1000, "the gauge counts them", timeout=10)
        status, body = await asyncio.to_thread(readyz, bridge)
        assert (status, body) == (200, {"ready": True, "problems": []})
    assert sorted(delivered_points(api.store.points())) == sorted(
        expected_env_points(n_good, start_ms)
    )


async def test_the_budget_prunes_the_oldest_counts_them_and_says_so(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """dead_letters.max_count 100 and 300 bad messages: at most 100 are kept, and the rest
    are counted as pruned by max_count and named in one log line."""
    caplog.set_level(logging.INFO, logger="bridge.dead_letter_log")
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"dead_letters.max_count": "100"}
    )
    async with running_bridge(settings) as bridge:
        await publish(broker.port, flood(300, 200))

        def pruned() -> float:
            return metric(bridge, "metriqo_bridge_dead_letters_pruned_total", reason="max_count")

        # The gauge reads the spool's count live, so it can show a commit's letters just
        # before the same spool call prunes them: wait for the state after the prune.
        await until(
            lambda: stored(bridge) <= 100 and stored(bridge) + pruned() == 300,
            "at most 100 of 300 dead letters kept, the rest counted as pruned",
            timeout=30,
        )
        assert pruned() >= 200
        await until(
            lambda: any("pruned" in r.getMessage() for r in caplog.records), "a summary line"
        )
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pruned")]
    assert "beyond dead_letters.max_count (100)" in line
    assert "their reasons: invalid_json" in line


async def test_purge_beside_the_running_bridge(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """purge --reason deletes while the bridge runs; the bridge's counters follow and it keeps
    delivering."""
    spool = tmp_path / "spool.db"
    start_ms = int(time.time() * 1000) - 100
    settings = make_settings(broker.port, api.url, spool)
    async with running_bridge(settings) as bridge:
        not_numeric = [(f"tele/dev{i}/temp", b"hot") for i in range(20)]
        await publish(broker.port, [*flood(30, 100), *not_numeric])
        await until(lambda: stored(bridge) == 50, "50 dead letters", timeout=30)
        args = ["dead-letters", "purge", "--spool-path", str(spool), "--reason", "invalid_json"]
        assert await asyncio.to_thread(main, [*args, "--yes"]) == 0
        assert capsys.readouterr().out == "deleted 30 dead letter(s)\n  invalid_json      30\n"
        await until(lambda: stored(bridge) == 20, "the bridge sees the purge", timeout=10)
        await publish(broker.port, env_messages(100, start_ms), client_id="pub-2")
        await api.store.wait_for_points(400, 30)
    assert sorted(delivered_points(api.store.points())) == sorted(
        expected_env_points(100, start_ms)
    )


@pytest.mark.parametrize("excerpt_bytes", [0, 24])
async def test_payloads_reach_the_log_only_when_allowed(
    broker: LocalBroker,
    api: LocalApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    excerpt_bytes: int,
) -> None:
    """The dead-letter line names reason and topic; the payload shows only with
    dead_letters.log_payload_bytes, escaped and cut to that length."""
    caplog.set_level(logging.WARNING)
    extra = {"dead_letters.log_payload_bytes": str(excerpt_bytes)} if excerpt_bytes else {}
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db", **extra)
    payload = b'{"temp": "x\n\x1b[2J", "' + SECRET + b'": 1'
    async with running_bridge(settings) as bridge:
        await publish(broker.port, [("plant/s1/l2/env", payload)])
        await until(
            lambda: metric(bridge, "metriqo_bridge_dead_letters_total", reason="invalid_json") == 1,
            "one dead letter",
        )
    [line] = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert line.startswith(
        "message on topic 'plant/s1/l2/env' dead-lettered (reason invalid_json, rule 'env'): "
    )
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    if excerpt_bytes:
        assert line.endswith("""; payload '{"temp": "x\\n\\x1b[2J", "seri'… (45 bytes)""")
        assert SECRET not in text.encode()
    else:
        assert "payload" not in line
        assert b"serial" not in text.encode()
        assert "temp" not in line
