"""The MQTT byte stream under paho: buffered reads, PUBLISH parsed in place, batched PUBACKs.

paho reads every packet with at least three ``recv`` calls (type byte, each length byte, body)
and builds a message object, a properties object and a callback round per PUBLISH; it sends
each PUBACK with its own ``send``. At tens of thousands of messages per second that was half of
the bridge's CPU. :class:`WireSocket` stands where paho expects its socket:

- the source fills its receive buffer with large ``recv`` calls and hands it one whole packet
  at a time: PUBLISH packets of QoS 0 and 1 are parsed here (:func:`parse_publish`), every
  other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, QoS 2) is read by paho as before;
- everything written — paho's packets and the PUBACKs the source appends with
  :meth:`WireSocket.queue_puback` — goes through one send buffer, in order, flushed in one
  ``send`` per batch of acknowledgements.

The parsing and buffering here are pure (no event loop); the source drives them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

PUBLISH = 3
_RECV_CHUNK = 65536
_COMPACT_AT = 1 << 16


class MalformedPacket(ValueError):
    """The stream breaks the MQTT framing; the connection must be dropped."""


def frame_length(buf: bytearray | bytes, pos: int) -> int | None:
    """Length of the whole packet starting at ``pos`` (fixed header included), or None while
    the buffer does not hold all of it yet.

    Raises:
        MalformedPacket: a Remaining Length longer than four bytes.
    """
    end = len(buf)
    found = _varint(buf, pos + 1, end)
    if found is None:
        return None
    value, i = found
    total = i - pos + value
    return total if pos + total <= end else None


def _varint(buf: bytearray | bytes, i: int, end: int) -> tuple[int, int] | None:
    """MQTT's Variable Byte Integer at ``i``: (value, index after it), or None when the
    buffer ends inside it.

    Raises:
        MalformedPacket: longer than four bytes.
    """
    value = 0
    shift = 0
    while True:
        if i >= end:
            return None
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 21:
            raise MalformedPacket("variable byte integer longer than four bytes")


@dataclass(frozen=True, slots=True)
class Publish:
    """One received PUBLISH."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool


def parse_publish(buf: bytearray | bytes, pos: int, length: int, v5: bool) -> Publish | None:
    """The PUBLISH of ``length`` bytes at ``pos``; None when it must go to paho instead
    (QoS 2, which needs paho's PUBREC/PUBREL state, or a Topic Alias without a topic name).

    Raises:
        MalformedPacket: lengths that run past the packet.
    """
    first = buf[pos]
    qos = (first >> 1) & 3
    if qos == 2:
        return None
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    end = pos + length
    i = pos + 1
    while buf[i] & 0x80:  # skip the Remaining Length, already checked by frame_length
        i += 1
    i += 1
    if i + 2 > end:
        raise MalformedPacket("PUBLISH too short for its topic length")
    topic_len = (buf[i] << 8) | buf[i + 1]
    i += 2
    if i + topic_len > end:
        raise MalformedPacket("PUBLISH topic runs past the packet")
    raw_topic = bytes(buf[i : i + topic_len])
    i += topic_len
    mid = 0
    if qos:
        if i + 2 > end:
            raise MalformedPacket("PUBLISH too short for its packet id")
        mid = (buf[i] << 8) | buf[i + 1]
        i += 2
    if v5:
        props = _varint(buf, i, end)
        if props is None:
            raise MalformedPacket("PUBLISH properties length runs past the packet")
        i = props[1] + props[0]
        if i > end:
            raise MalformedPacket("PUBLISH properties run past the packet")
    if not raw_topic:
        return None  # a Topic Alias; the bridge never allows aliases, paho will complain
    try:
        topic = raw_topic.decode("utf-8")
    except UnicodeDecodeError:
        topic = raw_topic.decode("utf-8", "replace")  # brokers validate UTF-8; be safe anyway
    return Publish(topic, bytes(buf[i:end]), mid, qos, bool(first & 0x08))


def puback(mid: int) -> bytes:
    """A PUBACK for ``mid`` meaning success: v3.1.1, and v5 with the Reason Code and Property
    Length left out, which MQTT 5 allows for Success with no properties (Remaining Length 2)."""
    return bytes((0x40, 2, mid >> 8, mid & 0xFF))


class WireSocket:
    """What paho holds as its socket: reads come from :attr:`rx`, filled by :meth:`fill`;
    writes go to one send buffer. Anything paho asks for that is not overridden here (its
    TLS calls, options) goes to the real socket."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.fd: int = sock.fileno()
        self.rx = bytearray()
        self.pos = 0  # start of the first unread byte in rx
        self.limit: int | None = None  # paho may read up to here (one packet at a time)
        self.tx = bytearray()
        self.eof = False
        self.error: OSError | None = None

    # -- paho's side -------------------------------------------------------------------------

    def recv(self, bufsize: int) -> bytes:
        end = len(self.rx) if self.limit is None else self.limit
        available = end - self.pos
        if available <= 0:
            if self.limit is None or self.limit >= len(self.rx):
                if self.error is not None:
                    raise self.error
                if self.eof:
                    return b""  # paho's "connection closed by the broker"
            raise BlockingIOError
        take = min(bufsize, available)
        out = bytes(self.rx[self.pos : self.pos + take])
        self.pos += take
        return out

    def send(self, data: bytes | bytearray | memoryview) -> int:
        # Everything is taken: what the kernel does not accept now stays in tx, in order, and
        # the source flushes it when the socket is writable.
        self.tx += data
        self.flush()
        if self.error is not None:
            raise self.error
        return len(data)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.tx and self.error is None:
            self.flush()  # best effort: a PUBACK lost here is redelivered and deduplicated
        self.sock.close()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def pending(self) -> int:
        return len(self.rx) - self.pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    # -- the source's side -------------------------------------------------------------------

    def fill(self) -> int:
        """Read what the socket has (one ``recv``); bytes read, 0 when nothing was ready.
        End of stream and errors are remembered for paho to see on its next read."""
        if self.eof or self.error is not None:
            return 0
        if self.pos >= _COMPACT_AT:
            del self.rx[: self.pos]
            if self.limit is not None:
                self.limit -= self.pos
            self.pos = 0
        try:
            data = self.sock.recv(_RECV_CHUNK)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0
        except OSError as exc:
            self.error = exc
            return 0
        if not data:
            self.eof = True
            return 0
        self.rx += data
        return len(data)

    def queue_puback(self, mid: int) -> None:
        """Add a PUBACK to the send buffer (sent by the next :meth:`flush`)."""
        self.tx += puback(mid)

    def flush(self) -> bool:
        """Send what the buffer holds; True when it is empty afterwards."""
        while self.tx and self.error is None:
            try:
                sent = self.sock.send(self.tx)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return False
            except OSError as exc:
                self.error = exc
                return False
            del self.tx[:sent]
        return not self.tx
