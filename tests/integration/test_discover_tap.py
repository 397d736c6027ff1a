"""discover and tap on a real mosquitto: the mixed plant's ~420 topics of every recipe's
convention drafted into a file that passes check --strict and test and names every recipe, a
bridge running that draft delivering what each recipe maps, side sessions that leave nothing
behind, --against gaps, and a tap whose points equal what the bridge delivers while it posts
nothing and opens no spool."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.lab.broker.process import free_port
from bridge.lab.mixedplant import MixedPlant
from bridge.mapping.loader import load_mappings, load_mappings_text
from bridge.mapping.mapper import Mapper
from bridge.recipes import names as recipe_names
from bridge.recipes import recipe
from tests.support import REPO, TOKEN
from tests.support.harness import (
    TEST_MAPPINGS,
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    run_cli,
    running_bridge,
)
from tests.support.tls import (
    BRIDGE_USER,
    GATEWAY_USER,
    Pki,
    SecureBroker,
    TlsClient,
    assert_no_secrets,
    client_context,
    mtls_settings,
    password_file,
)

BRIDGE_ID = "bridge-under-test"

PARTIAL = """
version: 1
rules:
  - name: lab
    topic: "lab/{room}/climate"
    device_id: "{room}"
    metrics: {temperature: temp, humidity: humidity}
  - name: sensors
    topic: "sensors/{device}"
    device_id: "{device}"
    payload: number
    metric: value
"""


@pytest.fixture
def plant(broker: LocalBroker) -> Iterator[MixedPlant]:
    """The mixed plant publishing to the test broker until the test ends."""
    publisher = MixedPlant(broker.host, broker.port, rate=1500.0)
    thread = threading.Thread(target=publisher.publish_for, args=(600.0,), daemon=True)
    thread.start()
    try:
        yield publisher
    finally:
        publisher.stop()
        thread.join(30)


def _session_present(port: int, client_id: str) -> bool:
    """Connect under ``client_id`` asking to resume (Clean Start 0) and say whether the broker
    still held a session for it."""
    answer: list[bool] = []
    got = threading.Event()

    def on_connect(
        _c: object, _u: object, flags: mqtt.ConnectFlags, _r: object, _p: object
    ) -> None:
        answer.append(flags.session_present)
        got.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0  # this probe leaves nothing behind either
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    try:
        assert got.wait(30), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return answer[0]


def test_discover_drafts_a_passing_file_and_finds_the_gaps(
    broker: LocalBroker, plant: MixedPlant, tmp_path: Path
) -> None:
    """discover on ~420 mixed topics: every recipe recognises its convention's topics, the
    draft names every recipe, passes check --strict and test and maps Tasmota unedited;
    --against names what a partial file misses or dead-letters; the side session never uses
    the bridge's client id and leaves no session."""
    draft = tmp_path / "draft.yaml"
    partial = tmp_path / "partial.yaml"
    partial.write_text(PARTIAL, encoding="utf-8")
    n_topics = len(plant.topics)
    result = run_cli(
        "discover",
        "--mqtt-port", str(broker.port),
        "--set", f"mqtt.client_id={BRIDGE_ID}",
        "--seconds", "120",
        "--messages", str(4 * n_topics),
        "--write", str(draft),
        "--against", str(partial),
        "--json",
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["messages"] == 4 * n_topics
    assert report["topics_kept"] == n_topics
    assert report["overflow"] == 0
    assert report["draft"]["problems"] == []
    assert report["draft"]["recipes"] == list(recipe_names())
    recognised = {t["topic"]: t["recipe"] for t in report["topics"]}
    for t in plant.topics:
        assert recognised[t.topic] == (t.convention if t.convention in recipe_names() else None)
    lwt = [t for t in report["topics"] if t["topic"].endswith("/LWT")]
    assert lwt
    assert all(t["retained"] >= 1 for t in lwt), "retained messages are marked"

    for command in (("check", "--strict", str(draft)), ("test", str(draft))):
        checked = run_cli(*command)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    mapper = Mapper(load_mappings(draft))
    sensor = b'{"Time": "2026-12-03T10:00:00", "ENERGY": {"Power": 12, "Voltage": 230}}'
    mapped = mapper.map("tele/plug-07/SENSOR", sensor, 1_795_000_000_000_000)
    assert mapped.rule == "tasmota-sensor"
    assert mapped.records[0].metrics == {"ENERGY.Power": 12, "ENERGY.Voltage": 230}
    filters = {p["filter"]: p["kind"] for p in report["patterns"]}
    assert filters["plant/{site}/{device}/temp"] == "number"
    assert filters["plant/{site}/{device}/mode"] == "text"
    assert filters["cam/{device}/snapshot"] == "binary"

    gaps = {g["pattern"]: g for g in report["against"]["patterns"]}
    assert gaps["plant/{site}/{device}/mode"]["missed"] > 0
    assert gaps["recipe tasmota"]["missed"] > 0
    climate = gaps["lab/{device}/climate"]
    assert climate["dead_lettered"] > 0
    assert "no field 'humidity'" in climate["details"]["dead_letter:missing_field"]
    assert gaps["sensors/{device}"]["missed"] == gaps["sensors/{device}"]["dead_lettered"] == 0

    side_id = report["client_id"]
    assert side_id.startswith("mqb-discover-")
    log = broker.log_tail(200_000)
    assert side_id in log
    assert BRIDGE_ID not in log
    assert not _session_present(broker.port, side_id), "discover left a session behind"


def _clear_retained(port: int, topics: list[str]) -> None:
    """Remove the retained messages of ``topics`` (an empty retained message clears one)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retained-cleaner")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic in topics:
            client.publish(topic, b"", qos=1, retain=True).wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def _us(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


async def test_a_bridge_running_the_draft_delivers_what_each_recipe_maps(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """The draft discover writes from the whole mixed plant, run unedited by a bridge, delivers
    for one round of every recognised convention's messages exactly the points each recipe's
    own mapping file makes of them (their payload times included), dead-letters what the
    recipes dead-letter, and leaves none of them unmatched."""
    plant = MixedPlant(broker.host, broker.port, rate=1500.0)
    thread = threading.Thread(target=plant.publish_for, args=(600.0,), daemon=True)
    thread.start()
    draft = tmp_path / "draft.yaml"
    try:
        result = await asyncio.to_thread(
            run_cli,
            "discover", "--mqtt-port", str(broker.port), "--seconds", "120",
            "--messages", str(3 * len(plant.topics)), "--write", str(draft),
            timeout=180,
        )  # fmt: skip
    finally:
        plant.stop()
        await asyncio.to_thread(thread.join, 30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passes check --strict and test" in result.stdout
    # The bridge should see only the round below: the plant's retained messages go.
    await asyncio.to_thread(_clear_retained, broker.port, [t.topic for t in plant.topics])

    alone = {n: Mapper(load_mappings_text(recipe(n).text, n)) for n in recipe_names()}
    combined = Mapper(load_mappings(draft))
    now_us = time.time_ns() // 1000
    messages: list[tuple[str, bytes]] = []
    points: set[tuple[str, str, float]] = set()
    timed: set[tuple[str, str, float, int]] = set()  # points stamped with a payload time
    failures: Counter[str] = Counter()
    for n, t in enumerate(plant.topics):
        if t.convention not in alone:
            continue
        topic, payload, _ = plant.message(n)
        messages.append((topic, payload))
        want = alone[t.convention].map(topic, payload, now_us)
        got = combined.map(topic, payload, now_us)
        assert (got.rule, got.records) == (want.rule, want.records), topic
        for r in want.records:
            for name, value in r.metrics.items():
                points.add((r.device_id, name, value))
                if r.ts_us != now_us:
                    timed.add((r.device_id, name, value, r.ts_us))
        if want.failures:
            failures[want.failures[0].reason] += 1
    assert len(messages) > 100
    assert timed
    assert failures

    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    draft_text = draft.read_text(encoding="utf-8")
    async with running_bridge(settings, mappings=draft_text) as bridge:
        await publish(broker.port, messages)
        await api.store.wait_for_points(len(points), 120)
    stored = api.store.points()
    assert {(p.device_id, p.metric, p.value) for p in stored} == points
    assert len(stored) == len(points)
    assert timed <= {(p.device_id, p.metric, p.value, _us(p.timestamp)) for p in stored}
    assert metric(bridge, "metriqo_bridge_messages_unmatched_total") == 0
    dead = {
        reason: metric(bridge, "metriqo_bridge_dead_letters_total", reason=reason)
        for reason in failures
    }
    assert dead == {reason: float(n) for reason, n in failures.items()}


def _read_until(proc: subprocess.Popen[str], lines: list[dict[str, object]], want: int) -> None:
    """Read tap's JSON lines until ``want`` of them are env messages."""
    assert proc.stdout is not None
    seen = 0
    while seen < want:
        line = proc.stdout.readline()
        assert line, "tap ended early"
        obj = orjson.loads(line)
        lines.append(obj)
        message = obj.get("message")
        if isinstance(message, dict) and str(message["topic"]).endswith("/env"):
            seen += 1


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
async def test_tap_prints_what_the_bridge_delivers_and_sends_nothing(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, stop: signal.Signals
) -> None:
    """tap's points equal the points the running bridge delivers for the same messages, its
    requests hold at most 100 points, its own API sees no request, no spool file appears, and
    unmatched and dead-lettered messages are printed with their reason. Ctrl-C or SIGTERM ends
    it the same way: what it holds is flushed and it exits 0."""
    n = 150
    start_ms = int(time.time() * 1000) - n
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(TEST_MAPPINGS, encoding="utf-8")
    tap_spool = tmp_path / "tap-spool.db"
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with LocalApi(token=TOKEN) as idle_api, running_bridge(settings):
        proc = subprocess.Popen(  # noqa: ASYNC220  # starts it and returns: no waiting here
            [
                sys.executable, "-m", "bridge", "tap",
                "--mqtt-port", str(broker.port),
                "--mapping-file", str(mappings),
                "--set", f"mqtt.client_id={BRIDGE_ID}",
                "--spool-path", str(tap_spool),
                "--api-base-url", idle_api.url,
                "--filter", "#",
                "--messages", "0",
                "--seconds", "600",
                "--json",
            ],
            cwd=REPO,
            # Without PYTHONUNBUFFERED, whatever the environment running the tests has: tap's
            # stdout is then a block-buffered pipe, as under '| jq', and each line must still
            # come as its message does.
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        lines: list[dict[str, object]] = []
        try:
            assert proc.stdout is not None
            first = asyncio.create_task(asyncio.to_thread(proc.stdout.readline))
            async with asyncio.timeout(60):
                while not first.done():  # until tap is subscribed and prints the probe
                    await publish(broker.port, [("probe/tap", b"ready?")], client_id="probe")
                    await asyncio.wait({first}, timeout=0.5)
            lines.append(orjson.loads(first.result()))
            bad = ("plant/s0/l0/env", b"{not json")
            await publish(broker.port, [*env_messages(n, start_ms), bad])
            async with asyncio.timeout(120):
                await asyncio.to_thread(_read_until, proc, lines, n + 1)
                await api.store.wait_for_points(4 * n, 120)
            proc.send_signal(stop)  # ends the tap: it flushes what it holds
            out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):  # a failure here must not leak them
                if pipe is not None:
                    pipe.close()
        assert proc.returncode == 0, err
        lines += [orjson.loads(x) for x in out.splitlines()]
        assert idle_api.store.requests == [], "tap sent a request"
    assert not tap_spool.exists(), "tap created a spool"

    messages = [x["message"] for x in lines if "message" in x]
    verdicts = {(m["topic"], m["verdict"]) for m in messages}  # type: ignore[index]
    assert ("probe/tap", "unmatched") in verdicts
    failures = [m["failures"] for m in messages if m["verdict"] == "dead_letter"]  # type: ignore[index]
    assert failures
    assert failures[0][0]["reason"] == "invalid_json"
    printed = {
        (p["device_id"], p["metric"], _ms(p["timestamp"]), p["value"])
        for m in messages
        for p in m["points"]  # type: ignore[index]
    }
    tapped = set()
    requests = [x["request"]["body"] for x in lines if "request" in x]  # type: ignore[index]
    assert requests
    assert all(sum(len(o["metrics"]) for o in b) <= 100 for b in requests)
    for body in requests:
        for obj in body:
            ts = obj["timestamp"]
            for name, value in obj["metrics"].items():
                tapped.add((obj["device_id"], name, ts, value))
    delivered = {
        (p.device_id, p.metric, p.timestamp.isoformat(timespec="milliseconds"), p.value)
        for p in api.store.points()
    }
    tapped_ms = {(d, m, _ms(ts), v) for d, m, ts, v in tapped}
    assert {(d, m, _ms(ts), v) for d, m, ts, v in delivered} == tapped_ms == printed
    assert set(delivered_points(api.store.points())) == expected_env_points(n, start_ms)


def _ms(iso: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_discover_uses_the_bridges_tls_and_credentials_and_never_prints_them(
    pki: Pki, tmp_path: Path
) -> None:
    """Over mTLS with the bridge's certificate discover reads what the gateway retained; on the
    password listener it logs in with mqtt.password_file, a wrong password exits 69 with the
    broker's reason, and no password appears in any output."""
    secret = "gateway-pw-7"
    passwords = password_file(tmp_path / "passwd", {GATEWAY_USER: secret})
    with SecureBroker(tmp_path / "broker", pki, passwords) as broker:
        retained = [(f"plant/berlin/m{i}/temp", b"%d.5" % i) for i in range(5)]
        ctx = client_context(pki.ca)
        pub = TlsClient(broker.password_port, ctx, "gateway", GATEWAY_USER, secret)
        try:
            pub.client.publish(retained[0][0], retained[0][1], qos=1, retain=True).wait_for_publish(
                30
            )
            for topic, payload in retained[1:]:
                pub.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(30)
        finally:
            pub.close()
        tls = [f"--set={k}={v}" for k, v in mtls_settings(pki).items()]
        seen = run_cli(
            "discover", "--mqtt-port", str(broker.cert_port), *tls,
            "--messages", "5", "--seconds", "60", "--json",
        )  # fmt: skip
        assert seen.returncode == 0, seen.stderr
        report = orjson.loads(seen.stdout)
        assert sorted(t["topic"] for t in report["topics"]) == sorted(t for t, _ in retained)
        assert report["retained"] == 5
        assert report["client_id"] != BRIDGE_USER

        outputs = [seen.stdout, seen.stderr]
        codes = []
        for password in (secret, "not-the-password-3"):
            secret_file = tmp_path / "secret"
            secret_file.write_text(password, encoding="utf-8")
            secret_file.chmod(0o600)
            login = run_cli(
                "discover", "--mqtt-port", str(broker.password_port),
                "--set", "mqtt.tls.enabled=true", "--set", f"mqtt.tls.ca_file={pki.ca}",
                "--set", f"mqtt.username={GATEWAY_USER}",
                "--set", f"mqtt.password_file={secret_file}",
                "--seconds", "1",
            )  # fmt: skip
            codes.append(login.returncode)
            outputs += [login.stdout, login.stderr]
    assert codes == [0, 69], outputs
    assert "refused the connection" in outputs[-1]
    assert_no_secrets(outputs, secret, "not-the-password-3")


def test_discover_over_v311_leaves_no_session(broker: LocalBroker) -> None:
    """With mqtt.protocol v311 discover connects with Clean Session 1: a resume under its
    client id finds no session."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retainer")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for i in range(3):
            client.publish(f"sensors/s{i}", b"1.5", qos=1, retain=True).wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()
    side_id = "mqb-discover-v311"
    result = run_cli(
        "discover", "--mqtt-port", str(broker.port), "--set", "mqtt.protocol=v311",
        "--side-client-id", side_id, "--messages", "3", "--seconds", "60",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 message(s) (3 retained) on 3 topic(s)" in result.stdout
    assert not _session_present(broker.port, side_id)
    # The probe does see a session a client left behind: the check above can fail.
    keeper = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="keeper", clean_session=False)
    keeper.connect("127.0.0.1", broker.port)
    keeper.loop_start()
    keeper.disconnect()
    keeper.loop_stop()
    assert _session_present(broker.port, "keeper")


def test_discover_without_a_broker_exits_69() -> None:
    """No broker at the address: exit 69 and a message naming it, no traceback."""
    port = free_port()
    result = run_cli("discover", "--mqtt-port", str(port), "--seconds", "5")
    assert result.returncode == 69
    assert f"cannot connect to the broker at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
