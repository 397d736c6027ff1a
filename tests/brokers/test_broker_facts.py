"""What each broker of the matrix does, measured with plain MQTT clients: the columns of the
compatibility table in docs/deployment/brokers.md (tests/support/brokers.py ``FACTS``). A broker
that changes its behaviour fails here before it surprises a plant."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.lab.broker import BrokerProcess
from tests.support.brokers import FACTS, broker_params
from tests.support.waiting import until

pytestmark = pytest.mark.parametrize("matrix_broker", broker_params(), indirect=True)


class Client:
    """A paho client on its own thread that records what it receives: (payload, dup)."""

    def __init__(
        self,
        broker: BrokerProcess,
        client_id: str,
        *,
        clean: bool = True,
        manual_ack: bool = False,
        v5: bool = False,
    ) -> None:
        self.got: list[tuple[bytes, bool]] = []
        self.connack = threading.Event()
        self.accepted: bool | None = None
        self.session_present = False
        kwargs: dict[str, object] = {} if v5 else {"clean_session": clean}
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=manual_ack,
            **kwargs,  # type: ignore[arg-type]
        )
        if broker.username is not None:
            self.c.username_pw_set(broker.username, broker.password)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.got.append((bytes(m.payload), bool(m.dup)))
        self._broker = broker
        self._v5 = v5

    def _on_connect(
        self, _c: object, _u: object, flags: object, reason: object, _p: object
    ) -> None:
        self.accepted = not getattr(reason, "is_failure", True)
        self.session_present = bool(getattr(flags, "session_present", False))
        self.connack.set()

    def connect(self) -> Client:
        """Connect (v5: resume, Session Expiry 1 h) and start paho's thread."""
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            self.c.connect("127.0.0.1", self._broker.port, clean_start=False, properties=props)
        else:
            self.c.connect("127.0.0.1", self._broker.port)
        self.c.loop_start()
        return self

    def close(self, *, abruptly: bool = False) -> None:
        """Stop, with DISCONNECT or (``abruptly``) by closing the socket."""
        if abruptly:
            self.c._sock_close()
        else:
            self.c.disconnect()
        self.c.loop_stop()

    def payloads(self) -> set[bytes]:
        """The distinct payloads received."""
        return {p for p, _ in self.got}


def _publish(broker: BrokerProcess, topic: str, payloads: list[bytes]) -> bool:
    """Publish at QoS 1 from a fresh client; True when the broker acknowledged all of them."""
    pub = Client(broker, f"facts-pub-{time.monotonic_ns()}").connect()
    try:
        assert pub.connack.wait(10)
        assert pub.accepted
        infos = [pub.c.publish(topic, p, qos=1) for p in payloads]
        deadline = time.monotonic() + 20
        for info in infos:
            while not info.is_published() and time.monotonic() < deadline and pub.c.is_connected():
                time.sleep(0.01)
        return all(i.is_published() for i in infos)
    finally:
        pub.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Clients a test opened; closed after it."""
    opened: list[Client] = []
    yield opened
    for c in opened:
        c.c.loop_stop()


async def _subscribe(c: Client, topic: str) -> None:
    assert await asyncio.to_thread(c.connack.wait, 10), "no CONNACK"
    subscribed = threading.Event()
    c.c.on_subscribe = lambda *_: subscribed.set()
    c.c.subscribe(topic, 1)
    assert await asyncio.to_thread(subscribed.wait, 10), "no SUBACK"


async def test_mqtt_v5(matrix_broker: BrokerProcess, clients: list[Client]) -> None:
    """A v5 CONNECT is accepted exactly where the table says v5."""
    c = Client(matrix_broker, "facts-v5", v5=True)
    clients.append(c)
    c.connect()
    answered = await asyncio.to_thread(c.connack.wait, 5)
    assert bool(answered and c.accepted) == FACTS[matrix_broker.name].v5


async def test_window_of_unacknowledged_messages(
    matrix_broker: BrokerProcess, clients: list[Client]
) -> None:
    """How many QoS 1 messages the broker sends one client that acknowledges none."""
    n = 300
    sub = Client(matrix_broker, "facts-window", clean=False, manual_ack=True).connect()
    clients.append(sub)
    await _subscribe(sub, "facts/window")
    assert await asyncio.to_thread(
        _publish, matrix_broker, "facts/window", [b"%d" % i for i in range(n)]
    )
    facts = FACTS[matrix_broker.name]
    expected = min(facts.window or n, n)
    if facts.holds_back:  # some wait for the next reconnect (test_every_message_arrives...)
        expected = 2 * n // 3
    await until(lambda: len(sub.got) >= expected, f"{expected} messages", timeout=30)
    await asyncio.sleep(1.0)  # a broker that overshoots does so at once
    assert len(sub.got) == expected or (facts.holds_back and expected <= len(sub.got) <= n)


async def test_every_message_arrives_at_the_latest_after_a_reconnect(
    matrix_broker: BrokerProcess, clients: list[Client]
) -> None:
    """2,000 messages as fast as the broker takes them, to a client that acknowledges each at
    once: all arrive while it stays connected, except on a broker that holds some back
    (aedes with LevelDB), where the next reconnect of the session brings the rest."""
    n = 2000
    payloads = [b"%d" % i for i in range(n)]
    sub = Client(matrix_broker, "facts-burst", clean=False).connect()
    clients.append(sub)
    await _subscribe(sub, "facts/burst")
    assert await asyncio.to_thread(_publish, matrix_broker, "facts/burst", payloads)
    if FACTS[matrix_broker.name].holds_back:
        await asyncio.sleep(2)  # whatever is not held back has arrived by now
        sub.close()
        again = Client(matrix_broker, "facts-burst", clean=False).connect()
        clients.append(again)
        await until(
            lambda: sub.payloads() | again.payloads() == set(payloads), "all after", timeout=30
        )
        return
    await until(lambda: sub.payloads() == set(payloads), f"all {n}", timeout=30)


async def test_redelivery_after_a_reconnect(
    matrix_broker: BrokerProcess, clients: list[Client]
) -> None:
    """What becomes of messages received but never acknowledged when the client reconnects
    with its session: sent again at once, after the broker's ack_wait, or never; with DUP=1
    or without."""
    facts = FACTS[matrix_broker.name]
    payloads = [b"%d" % i for i in range(5)]
    first = Client(matrix_broker, "facts-redeliver", clean=False, manual_ack=True).connect()
    clients.append(first)
    await _subscribe(first, "facts/redeliver")
    assert await asyncio.to_thread(_publish, matrix_broker, "facts/redeliver", payloads)
    if facts.holds_back:
        # Some may wait in the store for the session's next reconnect, which must then bring
        # them with the unacknowledged ones (test_every_message_arrives_at_the_latest_...).
        await until(lambda: len(first.got) >= 1, "a message, unacknowledged", timeout=20)
        await asyncio.sleep(2)  # whatever is not held back has arrived by now
    else:
        await until(lambda: len(first.got) == 5, "5 messages, unacknowledged", timeout=20)
    began = time.monotonic()  # the broker sent them at the latest now
    first.close(abruptly=True)
    again = Client(matrix_broker, "facts-redeliver", clean=False).connect()
    clients.append(again)
    assert await asyncio.to_thread(again.connack.wait, 10)
    assert again.session_present
    if facts.redelivered == "never":
        await asyncio.sleep(8)  # past amqtt's 5 s PUBACK timeout
        assert again.got == []
        return
    await until(lambda: again.payloads() == set(payloads), "the 5 again", timeout=60)
    took = time.monotonic() - began
    assert all(dup == facts.dup_flag for _, dup in again.got)
    if facts.redelivered == "after ack_wait":
        assert took >= 5  # the fixture's ack_wait is 10 s; at once would be well under 1 s


async def test_shared_subscriptions(matrix_broker: BrokerProcess, clients: list[Client]) -> None:
    """``$share/<group>/<filter>``: each message to one member, or (where unsupported) a
    filter that matches nothing while a plain subscriber gets every message."""
    members = [Client(matrix_broker, f"facts-share-{i}").connect() for i in range(2)]
    plain = Client(matrix_broker, "facts-share-plain").connect()
    clients.extend([*members, plain])
    for m in members:
        await _subscribe(m, "$share/g/facts/share")
    await _subscribe(plain, "facts/share")
    payloads = [b"%d" % i for i in range(20)]
    assert await asyncio.to_thread(_publish, matrix_broker, "facts/share", payloads)
    await until(lambda: len(plain.got) == 20, "20 on the plain subscription", timeout=20)
    if FACTS[matrix_broker.name].shared_subscriptions:
        await until(lambda: sum(len(m.got) for m in members) >= 20, "20 shared", timeout=20)
        assert sorted(p for m in members for p, _ in m.got) == sorted(payloads)
    else:
        await asyncio.sleep(0.5)  # sent with the plain subscriber's copies, if at all
        assert [m.got for m in members] == [[], []]


async def test_a_2_mib_payload(matrix_broker: BrokerProcess, clients: list[Client]) -> None:
    """A 2 MiB payload, then a small one from another client: the small one always arrives,
    the large one where the table says so (NATS: max_payload 1 MB, the publisher is cut off)."""
    sub = Client(matrix_broker, "facts-size").connect()
    clients.append(sub)
    await _subscribe(sub, "facts/size")
    await asyncio.to_thread(_publish, matrix_broker, "facts/size", [os.urandom(2 << 20)])
    assert await asyncio.to_thread(_publish, matrix_broker, "facts/size", [b"small"])
    await until(lambda: b"small" in sub.payloads(), "the small one", timeout=30)
    large = any(len(p) == 2 << 20 for p, _ in sub.got)
    assert large == FACTS[matrix_broker.name].max_payload_2mib


async def test_offline_queue_across_a_clean_broker_restart(
    matrix_broker: BrokerProcess, clients: list[Client]
) -> None:
    """Messages queued for an offline persistent session survive a clean restart (SIGTERM) of
    the broker, except where the table says they are lost."""
    first = Client(matrix_broker, "facts-restart", clean=False).connect()
    clients.append(first)
    await _subscribe(first, "facts/restart")
    first.close()
    payloads = [b"%d" % i for i in range(30)]
    assert await asyncio.to_thread(_publish, matrix_broker, "facts/restart", payloads)
    matrix_broker.stop()
    matrix_broker.start()
    again = Client(matrix_broker, "facts-restart", clean=False).connect()
    clients.append(again)
    if FACTS[matrix_broker.name].loses_on_broker_restart:
        await asyncio.sleep(5)
        assert again.payloads() < set(payloads)
        return
    await until(lambda: again.payloads() == set(payloads), "all 30 after the restart", timeout=60)
