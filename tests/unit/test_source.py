"""MqttSource against a scripted broker: a small asyncio TCP peer that speaks just enough MQTT
(v5 and v3.1.1) to answer CONNECT/SUBSCRIBE/UNSUBSCRIBE, send PUBLISH packets and record every
PUBACK, so each test states exactly what the broker did and checks what the source sent back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bridge.models import PayloadExcerpt
from bridge.mqtt.source import MqttSource
from bridge.settings import MqttSettings
from tests.support.waiting import until

DEADLINE_S = 10.0
FILTERS = ["plant/#", "tele/+/+"]


def varint(n: int) -> bytes:
    """MQTT Variable Byte Integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    """Fixed header (type byte, Remaining Length) and body."""
    return bytes((first,)) + varint(len(body)) + body


def publish(topic: str, payload: bytes, mid: int, *, v5: bool, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH (v5: with an empty property list)."""
    name = topic.encode()
    var = len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big") + (b"\0" if v5 else b"")
    return packet(0x32 | (0x08 if dup else 0), var + payload)


@dataclass
class Connect:
    """What the peer read from one CONNECT."""

    level: int  # 5 or 4 (v3.1.1)
    clean: bool  # Clean Start (v5) / Clean Session (v3.1.1)
    props: dict[int, int]  # v5 integer properties by identifier (0x11 expiry, 0x21 receive max,
    # 0x27 maximum packet size)


@dataclass
class Peer:
    """A scripted broker, one client at a time. ``session_present`` answers each CONNECT in
    turn (False once used up); ``refuse`` makes CONNACK carry that failure code."""

    v5: bool = True
    session_present: list[bool] = field(default_factory=list)
    refuse: int | None = None
    connects: list[Connect] = field(default_factory=list)
    subscribes: list[list[tuple[str, int]]] = field(default_factory=list)
    unsubscribes: list[list[str]] = field(default_factory=list)
    pubacks: list[int] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # PUBACK <mid> / PINGREQ, in arrival order
    hold_pings: bool = False  # leave PINGREQs unanswered until release_ping()
    held_pings: int = 0
    accepted: int = 0  # connections opened
    closed: int = 0  # connections that ended
    writer: asyncio.StreamWriter | None = None
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.accepted += 1
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                reply = self.answer(first, await reader.readexactly(length))
                if reply:
                    writer.write(reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    def answer(self, first: int, body: bytes) -> bytes:
        kind = first >> 4
        if kind == 1:  # CONNECT
            i = 2 + int.from_bytes(body[:2], "big")  # skip the protocol name
            level, flags = body[i], body[i + 1]
            props: dict[int, int] = {}
            if level == 5:
                end, i = self._props_end(body, i + 4)
                while i < end:  # the source sets only four-byte and two-byte properties
                    size = 4 if body[i] in (0x11, 0x27) else 2
                    props[body[i]] = int.from_bytes(body[i + 1 : i + 1 + size], "big")
                    i += 1 + size
            self.connects.append(Connect(level, bool(flags & 0x02), props))
            present = self.session_present.pop(0) if self.session_present else False
            code = self.refuse or 0
            return packet(0x20, bytes((int(present and not code), code)) + self._noprops())
        if kind in (8, 10):  # SUBSCRIBE, UNSUBSCRIBE
            _end, i = self._props_end(body, 2) if self.v5 else (0, 2)
            filters: list[tuple[str, int]] = []
            while i < len(body):
                n = int.from_bytes(body[i : i + 2], "big")
                name = body[i + 2 : i + 2 + n].decode()
                i += 2 + n
                if kind == 8:
                    filters.append((name, body[i]))
                    i += 1
                else:
                    filters.append((name, 0))
            if kind == 8:
                self.subscribes.append(filters)
                return packet(0x90, body[:2] + self._noprops() + b"\x01" * len(filters))
            self.unsubscribes.append([name for name, _ in filters])
            return packet(0xB0, body[:2] + (self._noprops() + b"\0" * len(filters)))
        if kind == 4:  # PUBACK
            self.pubacks.append(int.from_bytes(body[:2], "big"))
            self.log.append(f"PUBACK {self.pubacks[-1]}")
        elif kind == 5:  # PUBREC (QoS 2): release the message
            return packet(0x62, body[:2])
        elif kind == 7:  # PUBCOMP
            self.log.append(f"PUBCOMP {int.from_bytes(body[:2], 'big')}")
        elif kind == 12:  # PINGREQ
            self.log.append("PINGREQ")
            if self.hold_pings:
                self.held_pings += 1
                return b""
            return b"\xd0\x00"
        return b""

    def release_ping(self) -> None:
        """Answer the oldest PINGREQ held back."""
        assert self.held_pings > 0
        self.held_pings -= 1
        self.send(b"\xd0\x00")

    def _noprops(self) -> bytes:
        return b"\0" if self.v5 else b""

    @staticmethod
    def _props_end(body: bytes, i: int) -> tuple[int, int]:
        """(end of the property list, its first byte) for a list whose length is at ``i``."""
        length, shift = 0, 0
        while True:
            byte = body[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return i + length, i

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    def drop(self) -> None:
        """Close the current connection abruptly, as a broker restart would."""
        assert self.writer is not None
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def scripted(peer: Peer) -> AsyncIterator[Peer]:
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    try:
        yield peer
    finally:
        server.close()
        if peer.writer is not None:
            peer.writer.transport.abort()
        await until(lambda: peer.closed == peer.accepted, "the peer's handlers ended")
        await server.wait_closed()


Message = tuple[str, bytes, int, int, bool, int]


@contextlib.asynccontextmanager
async def running(
    peer: Peer, sink: list[Message] | None = None, **kw: object
) -> AsyncIterator[MqttSource]:
    """A source connected to ``peer`` (settings from ``kw``), stopped and awaited on exit."""
    names = ("session_filters", "on_filters", "on_disconnected", "on_acks_read")
    extra = {k: kw.pop(k) for k in names if k in kw}
    settings = MqttSettings(
        host="127.0.0.1",
        port=peer.port,
        protocol="v5" if peer.v5 else "v311",
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        connect_timeout_s=5.0,
        **kw,  # type: ignore[arg-type]
    )
    got = [] if sink is None else sink
    source = MqttSource(
        settings,
        FILTERS,
        lambda *m: got.append(m),
        rng=lambda: 1.0,
        **extra,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(source.run())
    try:
        yield source
    finally:
        await source.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(DEADLINE_S):
                await task


async def barrier(peer: Peer, source: MqttSource, n: int) -> None:
    """Everything the source wrote before now has reached the peer: the SUBSCRIBE to a new
    filter ``sync/<n>``, sent after it on the same ordered stream, has arrived."""
    seen = len(peer.subscribes)
    name = f"sync/{n}"
    source.update_subscriptions([*FILTERS, *(f"sync/{i}" for i in range(1, n + 1))])
    await until(lambda: len(peer.subscribes) > seen, "the barrier SUBSCRIBE")
    assert peer.subscribes[-1] == [(name, 0x11 if peer.v5 else 1)]


@pytest.mark.parametrize("v5", [True, False])
async def test_pubacks_are_sent_only_by_ack_in_order_for_the_right_ids(v5: bool) -> None:
    """No PUBACK leaves before ack(); each ack() sends exactly its packet id, in call order."""
    got: list[Message] = []
    async with scripted(Peer(v5=v5)) as peer, running(peer, got) as source:
        await until(lambda: source.state.subscribed, "subscribed")
        for mid, value in ((7, b"1"), (300, b"2"), (65535, b"3")):
            peer.send(publish("tele/d1/temp", value, mid, v5=v5))
        await until(lambda: len(got) == 3, "three messages in the sink")
        assert [(m[0], m[1], m[2], m[3]) for m in got] == [
            ("tele/d1/temp", b"1", 7, 1),
            ("tele/d1/temp", b"2", 300, 1),
            ("tele/d1/temp", b"3", 65535, 1),
        ]
        await barrier(peer, source, 1)
        assert peer.pubacks == []
        source.ack(7, 1)
        source.ack(300, 1)
        await barrier(peer, source, 2)
        assert peer.pubacks == [7, 300]
        source.ack(65535, 1)
        await barrier(peer, source, 3)
        assert peer.pubacks == [7, 300, 65535]


async def test_receive_window_stops_the_sink_at_receive_maximum_until_acks() -> None:
    """With receive_maximum=3 and 6 messages sent at once, the sink gets 3; one ack lets
    exactly one more in; acking the rest lets all of them in."""
    got: list[Message] = []
    async with scripted(Peer()) as peer, running(peer, got, receive_maximum=3) as source:
        await until(lambda: source.state.subscribed, "subscribed")
        peer.send(b"".join(publish("plant/a", b"%d" % i, 10 + i, v5=True) for i in range(6)))
        await until(lambda: len(got) >= 3, "the first window")
        await asyncio.sleep(0.2)  # a broken window would have handed on the rest by now
        assert [m[2] for m in got] == [10, 11, 12]
        source.ack(10, 1)
        await until(lambda: len(got) >= 4, "one more after one ack")
        await asyncio.sleep(0.2)
        assert [m[2] for m in got] == [10, 11, 12, 13]
        for mid in (11, 12, 13):
            source.ack(mid, 1)
        await until(lambda: len(got) == 6, "the rest after acking")
        assert [m[2] for m in got] == [10, 11, 12, 13, 14, 15]
        await barrier(peer, source, 1)
        assert peer.pubacks == [10, 11, 12, 13]


@pytest.mark.parametrize("v5", [True, False])
async def test_an_oversize_payload_streams_past_in_order_and_is_acknowledged_after_it(
    v5: bool,
) -> None:
    """With a 64-byte cap, a 5,000-byte PUBLISH sent in two parts between two small ones: the
    sink gets the small one, then (only once the last byte has come) the big one as an excerpt
    with its whole size, then the next; PUBACKs go out in that order when acked."""
    got: list[Message] = []
    big = bytes(range(250)) * 20
    async with (
        scripted(Peer(v5=v5)) as peer,
        running(peer, got, max_payload_bytes=64) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
        packet = publish("plant/big", big, 2, v5=v5)
        peer.send(publish("plant/a", b"1", 1, v5=v5) + packet[:1000])
        await until(lambda: len(got) == 1, "the first small message")
        peer.send(packet[1000:] + publish("plant/a", b"3", 3, v5=v5))
        await until(lambda: len(got) == 3, "the big one and the one after it")
        topic, payload, mid, qos, dup, _ = got[1]
        assert (topic, mid, qos, dup) == ("plant/big", 2, 1, False)
        assert isinstance(payload, PayloadExcerpt)
        assert (payload, payload.size) == (big[:64], len(big))
        assert got[2][1:3] == (b"3", 3)
        for mid in (1, 2, 3):
            source.ack(mid, 1)
        await barrier(peer, source, 1)
        assert peer.pubacks == [1, 2, 3]


async def test_a_link_lost_inside_an_oversize_payload_hands_on_nothing_of_it() -> None:
    """The broker goes away halfway through a big PUBLISH: nothing of it reaches the sink,
    paho never reads its tail as a packet, and its redelivery on the next connection arrives
    whole, once."""
    got: list[Message] = []
    big = b"B" * 5000
    async with (
        scripted(Peer(session_present=[False, True])) as peer,
        running(peer, got, max_payload_bytes=64) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
        peer.send(
            publish("plant/a", b"1", 1, v5=True) + publish("plant/big", big, 2, v5=True)[:3000]
        )
        await until(lambda: len(got) == 1, "the small message")
        peer.drop()
        await until(lambda: len(peer.connects) == 2 and source.state.subscribed, "reconnected")
        peer.send(publish("plant/big", big, 2, v5=True, dup=True))
        await until(lambda: len(got) == 2, "the redelivered big message")
        topic, payload, mid, _, dup, generation = got[1]
        assert (topic, mid, dup, generation) == ("plant/big", 2, True, 2)
        assert isinstance(payload, PayloadExcerpt)
        assert payload.size == len(big)
        assert "malformed" not in source.state.last_error


async def test_reconnect_after_a_dropped_connection_resubscribes_with_a_new_generation() -> None:
    """The peer drops the link: the source reconnects, subscribes again, and messages of the
    new connection carry generation 2."""
    got: list[Message] = []
    downs: list[int] = []
    async with (
        scripted(Peer(session_present=[False, True])) as peer,
        running(peer, got, on_disconnected=lambda: downs.append(1)) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
        assert (source.state.generation, source.state.session_present) == (1, False)
        peer.send(publish("plant/a", b"x", 1, v5=True))
        await until(lambda: len(got) == 1, "message of connection 1")
        peer.drop()
        await until(lambda: len(peer.connects) == 2 and source.state.subscribed, "reconnected")
        assert downs == [1]
        assert (source.state.generation, source.state.session_present) == (2, True)
        wanted = [("plant/#", 0x11), ("tele/+/+", 0x11)]
        assert peer.subscribes == [wanted, wanted]
        peer.send(publish("plant/a", b"x", 1, v5=True, dup=True))
        await until(lambda: len(got) == 2, "message of connection 2")
        assert [(m[4], m[5]) for m in got] == [(False, 1), (True, 2)]


@pytest.mark.parametrize("v5", [True, False])
async def test_connect_keeps_the_session(v5: bool) -> None:
    """CONNECT asks to resume the session: v5 Clean Start 0 with the configured Session Expiry,
    Receive Maximum and Maximum Packet Size; v3.1.1 Clean Session 0."""
    async with (
        scripted(Peer(v5=v5)) as peer,
        running(
            peer, session_expiry_s=3600, receive_maximum=77, max_packet_size=5_000_000
        ) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
    assert len(peer.connects) == 1
    connect = peer.connects[0]
    assert connect.clean is False
    if v5:
        assert (connect.level, connect.props) == (5, {0x11: 3600, 0x21: 77, 0x27: 5_000_000})
    else:
        assert (connect.level, connect.props) == (4, {})


@pytest.mark.parametrize(("v5", "code"), [(True, 0x87), (False, 5)])
async def test_connack_refusal_sets_last_error_and_keeps_retrying(v5: bool, code: int) -> None:
    """A refused CONNACK leaves the source disconnected with the reason in last_error, no
    generation counted, and it tries again."""
    async with scripted(Peer(v5=v5, refuse=code)) as peer, running(peer) as source:
        await until(lambda: len(peer.connects) >= 2, "a second attempt")
        assert "refused" in source.state.last_error
        assert "authori" in source.state.last_error.lower()
        assert (source.state.connected, source.state.generation) == (False, 0)
        assert peer.subscribes == []


@pytest.mark.parametrize(
    "bad",
    [
        b"\x30\xff\xff\xff\xff\x01",
        bytes((0x32, 4, 0, 50, ord("a"), ord("b"))),
        packet(0x36, b"\x00\x01a\x00\x07x"),
    ],
    ids=["remaining-length-too-long", "topic-past-the-packet", "qos-3"],
)
async def test_malformed_packet_drops_the_connection_without_crashing(bad: bytes) -> None:
    """A good PUBLISH then broken framing: the good one reaches the sink, the connection is
    dropped with a reason, and the source reconnects (its task did not crash)."""
    got: list[Message] = []
    async with scripted(Peer()) as peer, running(peer, got) as source:
        await until(lambda: source.state.subscribed, "subscribed")
        peer.send(publish("plant/a", b"ok", 5, v5=True) + bad)
        await until(lambda: peer.closed >= 1, "the source closed the connection")
        await until(lambda: source.state.generation == 2, "reconnected")
        assert [m[1] for m in got] == [b"ok"]
        assert "disconnected" in source.state.last_error


async def test_stale_session_filters_are_unsubscribed_when_the_session_is_present() -> None:
    """Filters the broker session kept from an earlier configuration are unsubscribed on a
    resumed session; the persisted filter list becomes the wanted set."""
    saved: list[list[str]] = []
    async with (
        scripted(Peer(session_present=[True])) as peer,
        running(peer, session_filters=["old/#", "plant/#"], on_filters=saved.append) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
    assert peer.unsubscribes == [["old/#"]]
    assert peer.subscribes == [[("plant/#", 0x11), ("tele/+/+", 0x11)]]
    assert saved == [["plant/#", "tele/+/+"]]


async def test_no_unsubscribe_without_a_session() -> None:
    """A new session holds nothing, so nothing is unsubscribed (the SUBSCRIBE after it proves
    no UNSUBSCRIBE came first)."""
    async with (
        scripted(Peer(session_present=[False])) as peer,
        running(peer, session_filters=["old/#"]) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
    assert peer.unsubscribes == []
    assert len(peer.subscribes) == 1


@pytest.mark.parametrize("v5", [True, False])
async def test_acks_are_settled_only_when_the_broker_answers_the_fence_after_them(
    v5: bool,
) -> None:
    """After a batch of PUBACKs the source writes a PINGREQ; only its PINGRESP hands the
    (mid, key) pairs to on_acks_read. One fence at a time: acks written while it is out wait
    for the next, which follows its answer."""
    read: list[list[tuple[int, int]]] = []
    got: list[Message] = []
    async with (
        scripted(Peer(v5=v5, hold_pings=True)) as peer,
        running(peer, got, on_acks_read=read.append) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
        for mid in (7, 300, 9):
            peer.send(publish("tele/d1/temp", b"1", mid, v5=v5))
        await until(lambda: len(got) == 3, "three messages in the sink")
        source.ack(7, 1, 70)
        source.ack(300, 1, 3000)
        await until(lambda: peer.held_pings == 1, "a fence after the PUBACKs")
        assert peer.log == ["PUBACK 7", "PUBACK 300", "PINGREQ"]
        source.ack(9, 1, 90)
        await barrier(peer, source, 1)
        assert peer.log == ["PUBACK 7", "PUBACK 300", "PINGREQ", "PUBACK 9"]  # no second fence
        assert read == []
        peer.release_ping()
        await until(lambda: peer.held_pings == 1, "the next fence, for PUBACK 9")
        assert read == [[(7, 70), (300, 3000)]]
        peer.release_ping()
        await until(lambda: len(read) == 2, "the second fence passed")
        assert read[1] == [(9, 90)]
        assert source.fences_passed == 2


async def test_while_a_fence_is_out_a_reused_packet_id_keeps_only_its_newest_ack() -> None:
    """A broker may reuse a packet id only once it has read our PUBACK for it, so a newer ack
    of the same id supersedes the older: while a fence is unanswered (mosquitto 2.0.11 queues
    its PINGRESP behind a whole flooded backlog), what waits for the next fence is one entry
    per packet id, not one per message; the next fence settles the newest key, in ack order."""
    read: list[list[tuple[int, int]]] = []
    got: list[Message] = []
    async with (
        scripted(Peer(v5=True, hold_pings=True)) as peer,
        running(peer, got, on_acks_read=read.append) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
        peer.send(publish("tele/d1/temp", b"0", 1, v5=True))
        await until(lambda: len(got) == 1, "the first message")
        source.ack(1, 1, 10)
        await until(lambda: peer.held_pings == 1, "a fence after PUBACK 1")
        for k in range(1, 201):  # 200 messages over packet ids 2 and 3 while the fence is out
            mid = 2 + k % 2
            peer.send(publish("tele/d1/temp", b"%d" % k, mid, v5=True))

            def arrived(n: int = k + 1) -> bool:
                return len(got) == n

            await until(arrived, f"message {k}")
            source.ack(mid, 1, 100 + k)
        assert len(source._driver._unfenced) == 2  # the bound under test: one entry per id
        peer.release_ping()
        await until(lambda: peer.held_pings == 1, "the next fence")
        peer.release_ping()
        await until(lambda: len(read) == 2, "both fences passed")
    assert read == [[(1, 10)], [(3, 299), (2, 300)]]


async def test_paho_keepalive_pings_keep_their_own_answers() -> None:
    """paho's keepalive PINGREQ, ahead of a fence in the stream, gets the first PINGRESP (paho
    stops waiting); the fence passes only with the second one."""
    read: list[list[tuple[int, int]]] = []
    got: list[Message] = []
    async with (
        scripted(Peer(hold_pings=True)) as peer,
        running(peer, got, on_acks_read=read.append) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
        peer.send(publish("tele/d1/temp", b"1", 5, v5=True))
        await until(lambda: len(got) == 1, "a message in the sink")
        client = source._client
        client._send_pingreq()  # what paho's keepalive does
        assert client._ping_t > 0
        source.ack(5, 1, 50)
        await until(lambda: peer.held_pings == 2, "both PINGREQs")
        # paho writes from the loop's writer callback, so its PINGREQ leaves with the next
        # flush: behind the PUBACK, ahead of the fence.
        assert peer.log == ["PUBACK 5", "PINGREQ", "PINGREQ"]
        peer.release_ping()
        await until(lambda: client._ping_t == 0, "paho saw its answer")
        await asyncio.sleep(0.1)
        assert read == []
        peer.release_ping()
        await until(lambda: read == [[(5, 50)]], "the fence passed")
        assert client._ping_t == 0


async def test_a_fence_covers_the_acks_paho_writes_too() -> None:
    """A QoS 2 message is completed by paho (PUBCOMP), which it writes later from the loop's
    writer callback: the fence still goes behind it."""
    read: list[list[tuple[int, int]]] = []
    got: list[Message] = []
    async with (
        scripted(Peer(hold_pings=True)) as peer,
        running(peer, got, on_acks_read=read.append) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
        name = b"tele/d1/temp"
        body = len(name).to_bytes(2, "big") + name + (11).to_bytes(2, "big") + b"\0" + b"2"
        peer.send(packet(0x34, body))  # QoS 2
        await until(lambda: len(got) == 1, "the QoS 2 message in the sink")
        source.ack(11, 2, 110)
        await until(lambda: peer.held_pings == 1, "the fence")
        assert peer.log == ["PUBCOMP 11", "PINGREQ"]
        peer.release_ping()
        await until(lambda: read == [[(11, 110)]], "the fence passed")


async def test_fences_outstanding_when_the_link_drops_are_void() -> None:
    """A fence unanswered when the connection ends settles nothing, ever: whether the broker
    read those PUBACKs is unknown (it redelivers what it did not)."""
    read: list[list[tuple[int, int]]] = []
    got: list[Message] = []
    async with (
        scripted(Peer(session_present=[False, True], hold_pings=True)) as peer,
        running(peer, got, on_acks_read=read.append) as source,
    ):
        await until(lambda: source.state.subscribed, "subscribed")
        peer.send(publish("tele/d1/temp", b"1", 5, v5=True))
        await until(lambda: len(got) == 1, "a message in the sink")
        source.ack(5, 1, 50)
        await until(lambda: peer.held_pings == 1, "the fence")
        peer.drop()
        await until(lambda: source.state.generation == 2 and source.state.subscribed, "back")
        peer.hold_pings = False
        peer.send(publish("tele/d1/temp", b"1", 5, v5=True, dup=True))
        await until(lambda: len(got) == 2, "the redelivery")
        source.ack(5, 1, 50)
        await until(lambda: len(read) == 1, "the new connection's fence passed")
        assert read == [[(5, 50)]]
        assert source.fences_passed == 1
