"""The MQTT wire under paho: framing, PUBLISH parsing and PUBACK bytes, checked against packets
paho itself builds, and the buffered socket over a real socket pair."""

from __future__ import annotations

import socket

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.mqtt.wire import (
    MalformedPacket,
    WireSocket,
    frame_length,
    parse_publish,
    puback,
)


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


def test_paho_keeps_the_keepalive_clock_the_source_updates() -> None:
    """bridge/mqtt/client.py moves paho 2.2's _last_bytes_received for PUBLISH packets it parses
    itself; if paho renames it, keepalive would break silently, so fail here instead."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    assert isinstance(client._last_bytes_received, float)
