"""What an operator touches: JSON logs, the `health` command a container HEALTHCHECK runs, and
`simulate-sensors`, the fleet the compose stack publishes — each against a real bridge process,
a real mosquitto and the local API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from tests.support import REPO, TOKEN
from tests.support.harness import BridgeProcess, publish, run_cli


def _json_lines(text: str) -> list[dict[str, object]]:
    """Every non-empty line parsed as one JSON object (fails on any line that is not)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            assert isinstance(record, dict), line
            out.append(record)
    return out


async def test_json_logs_are_one_object_per_line_even_for_hostile_payloads(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """LOG_FORMAT=json: every line the bridge writes is a JSON object with ts, level, logger
    and msg — including a dead letter whose payload holds a newline and an ESC."""
    proc = BridgeProcess(broker.port, api.url, tmp_path / "b")
    try:
        proc.start({"LOG_FORMAT": "json"})
        await asyncio.to_thread(proc.wait_ready)
        await publish(
            broker.port,
            [
                ("plant/a/l1/env", b'{"temp": 1, "ts": "2026-11-26T10:00:00Z"'),  # unclosed
                ("plant/a/l1/env", b'{"temp": "x\n\x1b[31mFAKE ERROR", "ts": 1795000000000}'),
            ],
        )
        deadline = time.monotonic() + 15
        while "dead-lettered" not in proc.output() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert proc.terminate() == 0
    finally:
        proc.close()
    records = _json_lines(proc.output())
    assert len(records) >= 4
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= record.keys(), record
        assert str(record["ts"]).endswith("+00:00")
        assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    dead = [r for r in records if "dead-lettered" in str(r["msg"])]
    assert dead, records
    assert dead[0]["level"] == "WARNING"
    assert TOKEN not in proc.output()


def test_a_configuration_error_is_a_json_line_naming_the_key() -> None:
    """With LOG_FORMAT=json, the reason a container exits 78 reaches the log collector as
    structured fields."""
    result = run_cli(
        "run", "--set", "mqtt.port=0", "--set", "batch.max_points=500", env={"LOG_FORMAT": "json"}
    )
    assert result.returncode == 78, result.stderr
    records = _json_lines(result.stderr)
    keys = {r["key"] for r in records}
    assert keys == {"mqtt.port", "batch.max_points"}, records
    for record in records:
        assert record["level"] == "ERROR"
        assert record["file"] == f"command-line setting {record['key']}"
        assert "configuration error" in str(record["msg"])
    # Without it, the same error is plain text for a terminal.
    plain = run_cli("run", "--set", "mqtt.port=0")
    assert plain.returncode == 78
    assert plain.stderr.startswith("metriqo-bridge: configuration error:")


async def test_health_command_follows_the_bridge(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """`health` exits 0 while /healthz answers, `health --ready` follows /readyz (the broker
    going away makes it 1, naming the problem), and both are 1 once the bridge is gone."""
    proc = BridgeProcess(broker.port, api.url, tmp_path / "b")
    port = ["--http-port", str(proc.http_port)]
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        alive = await asyncio.to_thread(run_cli, "health", *port)
        assert alive.returncode == 0, alive.stderr
        ready = await asyncio.to_thread(run_cli, "health", "--ready", *port)
        assert ready.returncode == 0, ready.stderr
        # The same port given the way a container gives it: through the environment.
        by_env = await asyncio.to_thread(
            run_cli, "health", "--quiet", env={"METRIQO_BRIDGE_HTTP__PORT": str(proc.http_port)}
        )
        assert (by_env.returncode, by_env.stdout) == (0, "")
        broker.stop()
        deadline = time.monotonic() + 30
        while True:
            not_ready = await asyncio.to_thread(run_cli, "health", "--ready", *port)
            if not_ready.returncode == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert not_ready.returncode == 1
        assert "503" in not_ready.stderr
        assert "mqtt" in not_ready.stderr.lower()
        still_alive = await asyncio.to_thread(run_cli, "health", *port)
        assert still_alive.returncode == 0
        assert proc.terminate() == 0
    finally:
        proc.close()
    gone = run_cli("health", *port)
    assert gone.returncode == 1
    assert "no answer" in gone.stderr
    off = run_cli("health", "--set", "http.enabled=false")
    assert off.returncode == 1
    assert "http.enabled is false" in off.stderr


async def test_simulate_sensors_feeds_the_shipped_mapping_end_to_end(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """The simulated fleet publishes every simulable rule of topic-mappings.yaml to a broker it
    was told about; a bridge with the same mapping delivers its points. Without a subscriber
    it gives up after --wait-subscriber with a clear message."""
    lonely = await asyncio.to_thread(
        run_cli, "simulate-sensors", "--port", str(broker.port), "--seconds", "1",
        "--wait-subscriber", "1",
    )  # fmt: skip
    assert lonely.returncode == 1
    assert "no client subscribed" in lonely.stderr

    mappings = (REPO / "topic-mappings.yaml").read_text(encoding="utf-8")
    proc = BridgeProcess(broker.port, api.url, tmp_path / "b", mappings=mappings)
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        run = await asyncio.to_thread(
            run_cli, "simulate-sensors", "--port", str(broker.port), "--devices", "12",
            "--rate", "40", "--seconds", "3",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "12 devices" in run.stdout
        summary = run.stdout.strip().splitlines()[-1]
        acknowledged = int(summary.split("; ")[1].split()[0])
        assert acknowledged >= 100, summary
        assert "0 reached no subscriber, 0 refused, 0 unconfirmed" in summary
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len({p.device_id for p in api.store.points()}) < 12:
            await asyncio.sleep(0.2)
        assert len({p.device_id for p in api.store.points()}) == 12
        assert proc.terminate() == 0
    finally:
        proc.close()
