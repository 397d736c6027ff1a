"""The contract between the bridge and paho-mqtt's private members (bridge/mqtt/client.py).

pyproject.toml pins paho-mqtt to the minor version these were verified on; if an upgrade
changes any of them, these tests say which and why it matters, instead of the bridge breaking
at runtime (a keepalive that silently stops, PUBACKs that never leave).
"""

from __future__ import annotations

import inspect
import socket

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bridge.mqtt import client as seam
from bridge.mqtt.wire import WireSocket


def _client() -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id="contract")


def test_every_private_member_the_seam_uses_exists_in_the_installed_paho() -> None:
    """The installed paho-mqtt is the verified minor version and has every private member
    bridge/mqtt/client.py relies on."""
    problems = seam.contract_problems()
    assert not problems, (
        "paho-mqtt no longer matches bridge/mqtt/client.py: "
        + "; ".join(problems)
        + ". Re-verify the seam against the new paho before changing the pin."
    )


def test_the_wire_becomes_the_socket_paho_reads_and_writes() -> None:
    """After install_wire, paho's socket() is the wire, and what paho sends goes through it."""
    client = _client()
    left, right = socket.socketpair()
    try:
        wire = seam.install_wire(client, left)
        assert client.socket() is wire
        assert isinstance(client.socket(), WireSocket)
        client._sock.send(b"\xc0\x00")  # type: ignore[union-attr]  # paho's own write path
        assert right.recv(10) == b"\xc0\x00"
    finally:
        left.close()
        right.close()


def test_dropping_the_link_closes_the_socket_without_a_disconnect() -> None:
    """drop_link closes paho's socket and sends nothing: the broker sees the link end, not a
    DISCONNECT, and keeps the session."""
    client = _client()
    closed: list[object] = []
    client.on_socket_close = lambda _c, _ud, sock: closed.append(sock)
    left, right = socket.socketpair()
    try:
        wire = seam.install_wire(client, left)
        seam.drop_link(client)
        assert client.socket() is None
        assert closed == [wire]
        assert right.recv(10) == b""  # end of stream, no DISCONNECT packet (0xE0) first
    finally:
        right.close()


def test_paho_keepalive_reads_the_clock_the_wire_moves() -> None:
    """paho's keepalive check decides on _last_bytes_received, and note_bytes_received moves
    it: PUBLISH packets parsed by the wire count as traffic from the broker."""
    assert "_last_bytes_received" in inspect.getsource(mqtt.Client._check_keepalive)
    client = _client()
    client._last_bytes_received = 0.0
    seam.note_bytes_received(client)
    assert client._last_bytes_received > 0.0


def test_a_topic_that_is_not_utf8_still_has_a_name() -> None:
    """message_topic falls back to paho's raw topic bytes when they are not valid UTF-8."""
    msg = mqtt.MQTTMessage(topic=b"plant/\xff/temp")
    assert seam.message_topic(msg) == "plant/\ufffd/temp"
    assert seam.message_topic(mqtt.MQTTMessage(topic=b"a/b")) == "a/b"
