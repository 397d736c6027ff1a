"""The few MQTT packets of ``check --connect``, built and parsed by hand, and what their reason
codes mean to an operator.

Why not paho: the check must tell apart every step of one connection (TCP, then the TLS
handshake, then CONNACK, then one SUBACK per filter) and report the broker's exact reason code
for each, in MQTT v5 and v3.1.1 alike. paho folds the steps into one ``connect`` call, reports
v3.1.1 refusals through v5 reason-code objects and needs a network thread; five packets are
simpler to write than to pry out of it. Pure: bytes in, bytes out, no I/O.

The session is a throwaway one: Clean Start (v3.1.1: Clean Session) and, in v5, no Session
Expiry Interval (0: the session ends with the connection), so the check leaves nothing behind
on the broker.
"""

from __future__ import annotations

from dataclasses import dataclass

CONNACK = 2
PUBLISH = 3
SUBACK = 9
UNSUBACK = 11
DISCONNECT = 14

# Reason codes of CONNACK, as (what the broker said, what to do). v5 (MQTT 5 §3.2.2.2).
CONNACK_V5: dict[int, tuple[str, str]] = {
    0x80: ("unspecified error", "read the broker's log for this client id"),
    0x81: ("malformed packet", "the broker did not understand CONNECT; check mqtt.protocol"),
    0x82: ("protocol error", "check mqtt.protocol (v5 or v311) against the broker"),
    0x83: ("implementation specific error", "read the broker's log for this client id"),
    0x84: ("unsupported protocol version", "set mqtt.protocol: v311 for this broker"),
    0x85: (
        "client id not valid",
        "the broker restricts client ids; allow ids that start with mqtt.client_id",
    ),
    0x86: (
        "bad username or password",
        "check mqtt.username and the password in mqtt.password_file against the broker's "
        "password file",
    ),
    0x87: (
        "not authorized",
        "check mqtt.username, the password in mqtt.password_file (mosquitto answers a wrong "
        "password this way) or the client certificate, and that the broker allows this user",
    ),
    0x88: ("server unavailable", "the broker is up but not serving; read its log"),
    0x89: ("server busy", "try again later; read the broker's log"),
    0x8A: ("banned", "the broker banned this client; ask its administrator"),
    0x8C: ("bad authentication method", "the broker expects another authentication method"),
    0x95: ("packet too large", "the broker's maximum packet size is tiny; raise it"),
    0x97: ("quota exceeded", "the broker limits connections; ask its administrator"),
    0x9C: ("use another server", "the broker redirects clients: set mqtt.host to the other one"),
    0x9D: ("server moved", "set mqtt.host to the broker's new address"),
    0x9F: ("connection rate exceeded", "the broker limits connection attempts; wait, retry"),
}
# v3.1.1 (§3.2.2.3): return codes 1..5.
CONNACK_V311: dict[int, tuple[str, str]] = {
    1: ("unacceptable protocol version", "set mqtt.protocol: v311, or use an MQTT 3.1.1 broker"),
    2: ("identifier rejected", CONNACK_V5[0x85][1]),
    3: ("server unavailable", CONNACK_V5[0x88][1]),
    4: ("bad username or password", CONNACK_V5[0x86][1]),
    5: ("not authorized", CONNACK_V5[0x87][1]),
}
# SUBACK failures (v5 §3.9.3; v3.1.1 has only 0x80, "failure").
SUBACK_REFUSED: dict[int, tuple[str, str]] = {
    0x80: (
        "refused",
        "allow this user to subscribe to the filter in the broker's access control",
    ),
    0x83: ("implementation specific error", "read the broker's log"),
    0x87: (
        "not authorized",
        "allow this user to subscribe to the filter in the broker's access control",
    ),
    0x8F: ("topic filter invalid", "the broker does not accept this filter; change the rule"),
    0x91: ("packet identifier in use", "a broker fault; read its log"),
    0x97: ("quota exceeded", "the broker limits subscriptions; ask its administrator"),
    0x9E: ("shared subscriptions not supported", "unset mqtt.share_group"),
    0xA2: ("wildcard subscriptions not supported", "this broker needs rules without + or #"),
}


class PacketError(ValueError):
    """The broker's bytes are not the packet the check waited for."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One whole packet from the broker: its type (high nibble) and body."""

    kind: int
    body: bytes


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(
    client_id: str, *, v5: bool, keepalive_s: int, username: str | None, password: str | None
) -> bytes:
    """CONNECT with a clean, non-persistent session."""
    flags = 0x02  # Clean Start / Clean Session
    if username is not None:
        flags |= 0x80
        if password is not None:
            flags |= 0x40
    head = _str("MQTT") + bytes((5 if v5 else 4, flags)) + keepalive_s.to_bytes(2, "big")
    if v5:
        head += b"\x00"  # no properties: Session Expiry Interval 0, the session dies with us
    body = _str(client_id)
    if username is not None:
        body += _str(username)
        if password is not None:
            body += _str(password)
    return _packet(0x10, head + body)


def subscribe_packet(packet_id: int, topic_filter: str, *, v5: bool) -> bytes:
    """SUBSCRIBE to one filter at QoS 1; in v5 without retained messages (Retain Handling 2),
    which the check would only throw away."""
    props = b"\x00" if v5 else b""
    options = 0x01 | (0x20 if v5 else 0)
    return _packet(
        0x82, packet_id.to_bytes(2, "big") + props + _str(topic_filter) + bytes((options,))
    )


def unsubscribe_packet(packet_id: int, filters: list[str], *, v5: bool) -> bytes:
    """UNSUBSCRIBE from ``filters``."""
    props = b"\x00" if v5 else b""
    return _packet(0xA2, packet_id.to_bytes(2, "big") + props + b"".join(map(_str, filters)))


def disconnect_packet() -> bytes:
    """DISCONNECT, normal (v5 reason 0 may be left out; so it is for both versions)."""
    return b"\xe0\x00"


def split_packet(buf: bytes) -> tuple[Packet, bytes] | None:
    """The first whole packet in ``buf`` and the bytes after it, or None while it is partial.

    Raises:
        PacketError: a Remaining Length longer than four bytes.
    """
    value, shift, i = 0, 0, 1
    while True:
        if i >= len(buf):
            return None
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise PacketError("a packet length longer than four bytes")
    if len(buf) < i + value:
        return None
    return Packet(buf[0] >> 4, bytes(buf[i : i + value])), bytes(buf[i + value :])


def connack_code(p: Packet) -> int:
    """The reason code (v3.1.1: return code) of a CONNACK; 0 is success in both versions.

    Raises:
        PacketError: not a CONNACK.
    """
    if p.kind != CONNACK or len(p.body) < 2:
        raise PacketError(f"expected CONNACK, got packet type {p.kind}")
    return p.body[1]


def _skip_props(body: bytes, i: int) -> int:
    value, shift = 0, 0
    while True:
        if i >= len(body):
            raise PacketError("properties run past the packet")
        byte = body[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return i + value
        shift += 7
        if shift > 21:
            raise PacketError("a property length longer than four bytes")


def ack_codes(p: Packet, packet_id: int, kind: int, *, v5: bool) -> list[int]:
    """The reason codes of a SUBACK or UNSUBACK (``kind``) for ``packet_id``; a v3.1.1
    UNSUBACK has none.

    Raises:
        PacketError: another packet, or another packet id.
    """
    if p.kind != kind or len(p.body) < 2:
        raise PacketError(f"expected packet type {kind}, got {p.kind}")
    if int.from_bytes(p.body[:2], "big") != packet_id:
        raise PacketError("an acknowledgement for another packet id")
    i = _skip_props(p.body, 2) if v5 else 2
    return list(p.body[i:])


def disconnect_reason(p: Packet) -> int:
    """The reason code of a broker's v5 DISCONNECT (0 when it gave none)."""
    return p.body[0] if p.body else 0


def connack_reason(code: int, *, v5: bool) -> tuple[str, str]:
    """(what a refused CONNACK means, the fix)."""
    table = CONNACK_V5 if v5 else CONNACK_V311
    return table.get(code, (f"refused with reason code 0x{code:02X}", "read the broker's log"))


def suback_reason(code: int) -> tuple[str, str] | None:
    """(why a filter was refused, the fix); None when it was granted at QoS 1 or 2. A grant at
    QoS 0 counts as refused: the bridge needs QoS 1 not to lose messages."""
    if code in (1, 2):
        return None
    if code == 0:
        return (
            "granted at QoS 0 only: messages sent while the bridge reconnects are lost",
            "allow QoS 1 on the broker (mosquitto: max_qos) for this filter",
        )
    return SUBACK_REFUSED.get(
        code, (f"refused with reason code 0x{code:02X}", "read the broker's log")
    )
