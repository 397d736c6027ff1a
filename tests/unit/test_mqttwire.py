"""The MQTT wire under paho: framing, PUBLISH parsing and PUBACK bytes, checked against packets
paho itself builds; oversize payloads streamed past whatever the read boundaries; and the
buffered socket over a real socket pair."""

from __future__ import annotations

import hashlib
import itertools
import socket

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.models import PayloadExcerpt
from bridge.mqtt.wire import (
    EXCERPT_BYTES,
    PROPS_ROOM,
    ForPaho,
    Framer,
    MalformedPacket,
    Publish,
    WireSocket,
    frame_length,
    parse_publish,
    puback,
)
from bridge.spool.writes import DEAD_LETTER_PAYLOAD_CAP


def _publish_packet(
    topic: str, payload: bytes, qos: int, mid: int, *, v5: bool, dup: bool = False
) -> bytes:
    """A PUBLISH exactly as paho's client encodes one (its own sender, not ours)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    sent: list[bytes] = []

    def capture(
        command: int, packet: bytes | bytearray, mid: int, qos: int, info: object = None
    ) -> MQTTErrorCode:
        sent.append(bytes(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._packet_queue = capture  # type: ignore[method-assign]
    client._sock = socket.socket()  # paho encodes only when it believes it is connected
    props = None
    if v5:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = ("site", "hall-3")
        props.MessageExpiryInterval = 3600
    client._send_publish(mid, topic.encode(), payload, qos, False, dup, properties=props)
    client._sock.close()
    client._sock = None
    assert len(sent) == 1
    return sent[0]


@pytest.mark.parametrize("v5", [True, False])
@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("size", [0, 5, 127, 128, 16_383, 16_384, 70_000])
def test_parse_publish_reads_what_paho_writes(v5: bool, qos: int, size: int) -> None:
    """Every Remaining Length width (1-3 bytes), both protocol versions, QoS 0 and 1, and v5
    properties the bridge skips."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    mid = 0 if qos == 0 else 513
    packet = _publish_packet("plant/hall-3/line-1/env", payload, qos, mid, v5=v5, dup=qos == 1)
    buf = bytearray(b"\x00junk") + packet + b"\xd0\x00"  # a PINGRESP after it
    assert frame_length(buf, 5) == len(packet)
    for cut in range(5, 5 + len(packet), max(1, len(packet) // 7)):
        assert frame_length(buf[:cut], 5) is None  # incomplete until the last byte
    got = parse_publish(buf, 5, len(packet), v5)
    assert got is not None
    assert got.topic == "plant/hall-3/line-1/env"
    assert got.payload == payload
    assert (got.mid, got.qos, got.dup) == (mid, qos, qos == 1)


def test_qos2_and_topic_aliases_go_to_paho() -> None:
    packet = _publish_packet("a/b", b"x", 2, 7, v5=True)
    assert parse_publish(packet, 0, len(packet), True) is None
    alias = bytes((0x32, 7, 0, 0, 0, 9, 3, 0x23, 0, 1)) + b"x"  # empty topic, Topic Alias 1
    alias = bytes((0x32, len(alias) - 2)) + alias[2:]
    assert parse_publish(alias, 0, len(alias), True) is None


def test_broken_framing_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedPacket):
        frame_length(b"\x30\xff\xff\xff\xff\x01", 0)
    # A topic length that runs past the packet.
    bad = bytes((0x32, 4, 0, 50, ord("a"), ord("b")))
    with pytest.raises(MalformedPacket):
        parse_publish(bad, 0, len(bad), False)
    # Properties length past the end (v5).
    bad5 = bytes((0x32, 7, 0, 1, ord("t"), 0, 1, 40, 0))
    with pytest.raises(MalformedPacket):
        parse_publish(bad5, 0, len(bad5), True)
    with pytest.raises(MalformedPacket):
        parse_publish(bytes((0x36, 2, 0, 0)), 0, 4, False)  # QoS 3


def test_invalid_utf8_topic_is_replaced_not_raised() -> None:
    raw = bytes((0x30, 6, 0, 3, ord("a"), 0xFF, ord("b"))) + b"1"
    raw = bytes((0x30, len(raw) - 2)) + raw[2:]
    got = parse_publish(raw, 0, len(raw), False)
    assert got is not None
    assert got.topic == "a\ufffdb"


def test_puback_is_what_paho_sends_for_success() -> None:
    """The short form: Remaining Length 2, valid for v3.1.1 and for v5 Success."""
    for mid in (1, 255, 256, 65535):
        assert puback(mid) == bytes((0x40, 2, mid >> 8, mid & 0xFF))


def test_wire_socket_buffers_reads_and_writes_over_a_real_socket() -> None:
    """fill() takes what the peer sent in large reads; recv() serves paho from the buffer,
    never past ``limit``; send() and queued PUBACKs leave in order; EOF and errors reach
    paho's next read."""
    left, right = socket.socketpair()
    left.setblocking(False)
    wire = WireSocket(left)
    try:
        with pytest.raises(BlockingIOError):
            wire.recv(1)
        assert wire.fill() == 0  # nothing yet
        right.sendall(b"\x20\x03\x00\x00\x00" + b"\xd0\x00")  # CONNACK, PINGRESP
        assert wire.fill() == 7
        wire.limit = 5
        assert wire.recv(1) == b"\x20"
        assert wire.recv(100) == b"\x03\x00\x00\x00"
        with pytest.raises(BlockingIOError):
            wire.recv(1)  # the next packet is not paho's yet
        wire.limit = None
        assert wire.recv(100) == b"\xd0\x00"

        assert wire.send(b"\xc0\x00") == 2  # PINGREQ from paho
        wire.queue_puback(7)
        wire.queue_puback(8)
        assert wire.flush()
        assert right.recv(100) == b"\xc0\x00" + puback(7) + puback(8)

        right.close()
        assert wire.fill() == 0
        assert wire.eof
        assert wire.recv(10) == b""  # paho's "connection closed"
    finally:
        wire.close()
        right.close()


def test_each_pingresp_is_matched_to_its_pingreq_fence_or_paho_keepalive() -> None:
    """PINGRESPs answer PINGREQs in order: the wire notes paho's keepalive PINGREQs among
    everything paho writes (by packet boundaries, not by a byte that looks like one) and its
    own fences, and says for each PINGRESP whose it is."""
    left, right = socket.socketpair()
    left.setblocking(False)
    wire = WireSocket(left)
    try:
        # A PUBLISH whose body holds the bytes of a PINGREQ, written in two pieces: no ping.
        wire.send(b"\x30\x05\x00\x01t")
        wire.send(b"\xc0\x00")
        wire.send(b"\xc0\x00")  # paho's keepalive PINGREQ
        wire.queue_puback(7)
        wire.queue_pingreq()  # a fence behind PUBACK 7
        assert wire.fences_due == 1
        assert wire.flush()
        assert (
            right.recv(100) == b"\x30\x05\x00\x01t\xc0\x00" + b"\xc0\x00" + puback(7) + b"\xc0\x00"
        )
        assert wire.ping_answered() is False  # the first answer is paho's
        assert wire.fences_due == 1
        assert wire.ping_answered() is True
        assert wire.fences_due == 0
        assert wire.ping_answered() is False  # an answer nobody asked for goes to paho
    finally:
        wire.close()
        right.close()


def test_paho_keeps_the_keepalive_clock_the_source_updates() -> None:
    """bridge/mqtt/client.py moves paho 2.2's _last_bytes_received for PUBLISH packets it parses
    itself; if paho renames it, keepalive would break silently, so fail here instead."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    assert isinstance(client._last_bytes_received, float)


# -- streaming past oversize payloads (Framer) ------------------------------------------------

CAP = 100  # a small payload cap, so every split of a packet can be tried


def _run(framer: Framer, chunks: list[bytes], *, compact_at: int = 64) -> tuple[list[object], int]:
    """Feed ``chunks`` to ``framer`` as the driver does: append each read to one buffer, take
    every event it yields, let "paho" consume a :class:`ForPaho` packet, drop consumed bytes
    from the front now and then. Returns the events and the most bytes the buffer ever held."""
    buf = bytearray()
    pos = 0
    events: list[object] = []
    most = 0
    for chunk in chunks:
        if pos >= compact_at:
            del buf[:pos]
            pos = 0
        buf += chunk
        most = max(most, len(buf) - pos)
        while True:
            pos, event = framer.next(buf, pos)
            if event is None:
                break
            if isinstance(event, ForPaho):
                events.append(("paho", bytes(buf[pos : pos + event.length])))
                pos += event.length
            else:
                events.append(event)
    assert pos == len(buf), "bytes left over"
    assert not framer.mid_packet
    return events, most


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _big(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def _check_excerpt(got: object, topic: str, payload: bytes, mid: int, keep: int) -> None:
    assert isinstance(got, Publish)
    assert isinstance(got.payload, PayloadExcerpt)
    assert got.topic == topic
    assert (got.mid, got.qos) == (mid, 1 if mid else 0)
    assert got.payload == payload[:keep]
    assert got.payload.size == len(payload)
    assert got.payload.digest == hashlib.blake2b(payload, digest_size=8).digest()


@pytest.mark.parametrize("v5", [True, False])
def test_an_oversize_publish_split_anywhere_streams_past_as_one_excerpt(v5: bool) -> None:
    """A PUBLISH over the cap cut into two reads at every byte (inside the Remaining Length,
    the topic, the packet id, the properties and the payload), and fed one byte at a time:
    always one message, its first bytes, whole size and whole-payload hash."""
    payload = _big(300)  # 300 + header: a two-byte Remaining Length
    packet = _publish_packet("plant/hall-3/line-1/env", payload, 1, 4242, v5=v5, dup=True)
    for cut in range(1, len(packet)):
        events, _ = _run(Framer(v5=v5, max_payload=CAP, keep=40), _split(packet, [cut]))
        assert len(events) == 1, cut
        _check_excerpt(events[0], "plant/hall-3/line-1/env", payload, 4242, 40)
        assert events[0].dup  # type: ignore[attr-defined]
    events, _ = _run(
        Framer(v5=v5, max_payload=CAP, keep=40), [packet[i : i + 1] for i in range(len(packet))]
    )
    assert len(events) == 1
    _check_excerpt(events[0], "plant/hall-3/line-1/env", payload, 4242, 40)


@pytest.mark.parametrize("v5", [True, False])
def test_packets_before_and_after_an_oversize_one_in_the_same_read(v5: bool) -> None:
    """Small PUBLISH, oversize PUBLISH (QoS 1 and QoS 0), small PUBLISH and a PINGRESP in one
    read, then the same stream cut at every pair of places: the same events in stream order."""
    small1 = _publish_packet("a/1", b"21.5", 1, 1, v5=v5)
    big1 = _publish_packet("a/big", _big(500, 1), 1, 2, v5=v5)
    big0 = _publish_packet("a/big0", _big(101, 2), 0, 0, v5=v5)
    small2 = _publish_packet("a/2", b"x" * CAP, 1, 3, v5=v5)  # exactly the cap: kept whole
    ping = b"\xd0\x00"
    stream = small1 + big1 + big0 + small2 + ping

    def check(events: list[object]) -> None:
        assert len(events) == 5
        first, second, third, fourth, fifth = events
        assert first == Publish("a/1", b"21.5", 1, 1, False)
        _check_excerpt(second, "a/big", _big(500, 1), 2, CAP)
        _check_excerpt(third, "a/big0", _big(101, 2), 0, CAP)
        assert fourth == Publish("a/2", b"x" * CAP, 3, 1, False)
        assert isinstance(fourth, Publish)
        assert not isinstance(fourth.payload, PayloadExcerpt)
        assert fifth == ("paho", ping)

    check(_run(Framer(v5=v5, max_payload=CAP), [stream])[0])
    step = 7
    for a in range(1, len(stream), step):
        for b in range(a, len(stream), step):
            check(_run(Framer(v5=v5, max_payload=CAP), _split(stream, [a, b]))[0])


def test_a_huge_payload_never_takes_more_than_a_read_of_memory() -> None:
    """10 MB streamed past in 64 KiB reads: the buffer never holds more than one read plus
    what was left of the one before; the excerpt is the first 64 KiB."""
    payload = b"A" * 10_000_000
    packet = _publish_packet("plant/s0/l0/env", payload, 1, 9, v5=True)
    after = _publish_packet("plant/s0/l0/env", b"{}", 1, 10, v5=True)
    stream = packet + after
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    events, most = _run(Framer(v5=True, max_payload=65536), chunks, compact_at=65536)
    assert len(events) == 2
    _check_excerpt(events[0], "plant/s0/l0/env", payload, 9, 65536)
    assert events[1] == Publish("plant/s0/l0/env", b"{}", 10, 1, False)
    assert most <= 2 * 65536


def test_oversize_properties_are_streamed_past_too() -> None:
    """A v5 PUBLISH with a small payload but properties over PROPS_ROOM is not read whole:
    it counts as too large, and the excerpt is of its payload, not of its properties."""
    user_property = b"\x26\x00\x01k" + (40_000).to_bytes(2, "big") + b"v" * 40_000
    big_props = user_property * 2  # two User Properties: more than PROPS_ROOM in all
    assert len(big_props) > PROPS_ROOM
    var = b"\x00\x03a/b" + b"\x00\x05" + bytes(_varint_bytes(len(big_props))) + big_props
    body = var + b"12.5"
    packet = bytes((0x32,)) + bytes(_varint_bytes(len(body))) + body
    events, _ = _run(Framer(v5=True, max_payload=CAP), [packet[:100], packet[100:]])
    assert len(events) == 1
    _check_excerpt(events[0], "a/b", b"12.5", 5, CAP)


def _varint_bytes(n: int) -> list[int]:
    out = []
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return out


def test_packets_paho_must_read_whole_are_bounded() -> None:
    """Anything but a QoS 0/1 PUBLISH goes to paho whole, so one larger than the cap plus the
    largest header is a broken stream (the connection is dropped), not a buffer to grow: a
    huge SUBACK, a QoS 2 PUBLISH over it, and any PUBLISH before CONNACK."""
    framer = Framer(v5=True, max_payload=CAP)
    suback = bytes((0x90,)) + bytes(_varint_bytes(framer.whole_limit + 1)) + b"\x00\x01"
    with pytest.raises(MalformedPacket, match="more than the bridge reads whole"):
        framer.next(suback, 0)
    qos2 = _publish_packet("a/b", b"z" * (framer.whole_limit + 1), 2, 7, v5=True)
    with pytest.raises(MalformedPacket, match="more than the bridge reads whole"):
        framer.next(qos2[:50], 0)
    early = _publish_packet("a/b", b"z" * (framer.whole_limit + 1), 1, 7, v5=True)
    with pytest.raises(MalformedPacket):
        framer.next(early[:50], 0, publish_ok=False)
    # Under the bound, a QoS 2 PUBLISH over the cap still goes to paho (and is then
    # dead-lettered as too_large like any other).
    qos2_small = _publish_packet("a/b", b"z" * (CAP + 1), 2, 7, v5=True)
    assert framer.next(qos2_small, 0) == (0, ForPaho(len(qos2_small)))


def test_oversize_packet_with_broken_lengths_is_malformed() -> None:
    """A topic or property length that runs past an oversize packet breaks the framing."""
    framer = Framer(v5=True, max_payload=16)
    topic_past = bytes((0x32, 20, 0, 60)) + b"t" * 18
    with pytest.raises(MalformedPacket):
        framer.next(topic_past, 0)
    props_past = bytes((0x32, 20, 0, 1, ord("t"), 0, 1, 40)) + b"p" * 14
    with pytest.raises(MalformedPacket):
        Framer(v5=True, max_payload=16).next(props_past, 0)
    qos3 = bytes((0x36, 20, 0, 1, ord("t"))) + b"p" * 17
    with pytest.raises(MalformedPacket):
        Framer(v5=False, max_payload=16).next(qos3, 0)


def test_the_excerpt_is_what_the_spool_keeps_of_a_dead_letter() -> None:
    """Keeping more of a payload streamed past would only be cut off by the spool; keeping
    less would lose what it keeps of every other dead letter. Never more than the cap."""
    assert EXCERPT_BYTES == DEAD_LETTER_PAYLOAD_CAP
    assert Framer(v5=True, max_payload=1000).keep == 1000
    assert Framer(v5=True, max_payload=1 << 20).keep == EXCERPT_BYTES
