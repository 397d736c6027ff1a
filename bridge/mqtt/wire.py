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
  ``send`` per batch of acknowledgements;
- a PINGREQ the source appends with :meth:`WireSocket.queue_pingreq` is a fence: a broker
  handles one connection's packets in order, so its PINGRESP means every PUBACK written before
  it has been read. Written is not read: a PUBACK in a socket buffer when the bridge dies may
  never reach the broker, which then redelivers the message. PINGRESPs answer PINGREQs in
  order, so the wire counts paho's keepalive PINGREQs as they pass and tells each PINGRESP's
  owner apart (:meth:`WireSocket.ping_answered`): paho never sees an answer it did not ask for.

A payload over ``mqtt.max_payload_bytes`` is never buffered: :class:`Framer` reads the
PUBLISH's fixed header, topic, packet id and property length, then streams the rest past,
keeping only the first bytes the spool keeps of a dead letter's payload and a hash of the whole
(:class:`~bridge.models.PayloadExcerpt`). Memory is then bounded by the cap, whatever the
broker sends: a packet paho would have to read whole (anything but a QoS 0/1 PUBLISH) larger
than the cap plus the largest header is a broken stream, and the connection is dropped.

The parsing and buffering here are pure (no event loop); the source drives them.
"""

from __future__ import annotations

import hashlib
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from bridge.models import PayloadExcerpt

PUBLISH = 3
PINGREQ = 12
PINGRESP = 13
_PINGREQ_PACKET = bytes((PINGREQ << 4, 0))
_RECV_CHUNK = 65536
_COMPACT_AT = 1 << 16
# What an oversize payload keeps: the spool keeps this much of a dead letter's payload
# (bridge/spool/writes.py DEAD_LETTER_PAYLOAD_CAP); more would be thrown away there.
EXCERPT_BYTES = 65536
# Properties of a PUBLISH read whole with its payload; a longer list is streamed past with the
# payload, and the message counts as too large.
PROPS_ROOM = 65536
# A PUBLISH's header at its largest (fixed header, 65,535-byte topic, packet id, property
# length) plus PROPS_ROOM: a packet read whole is at most the payload cap plus this.
HEAD_ROOM = 1 + 4 + 2 + 65535 + 2 + 4 + PROPS_ROOM


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


class Publish(NamedTuple):
    """One received PUBLISH. A named tuple, not a frozen dataclass: one is made for every
    message, and a frozen dataclass sets each field through object.__setattr__ (0.48 against
    0.18 us)."""

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
    return Publish(_topic(raw_topic), bytes(buf[i:end]), mid, qos, bool(first & 0x08))


def _topic(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")  # brokers validate UTF-8; be safe anyway


@dataclass(frozen=True, slots=True)
class ForPaho:
    """A whole packet for paho to read (``length`` bytes, fixed header included)."""

    length: int


@dataclass(frozen=True, slots=True)
class _Head:
    """The start of a PUBLISH: what is known once its property length has been read."""

    topic: bytes
    mid: int
    qos: int
    dup: bool
    end: int  # buffer index after the property length (v5) or the packet id
    props: int  # bytes of properties after ``end``
    payload: int  # bytes of payload after the properties


def _publish_head(
    buf: bytearray | bytes, pos: int, body: int, total: int, v5: bool
) -> _Head | None:
    """The head of the PUBLISH at ``pos`` whose body starts at ``body``; None while the buffer
    ends inside it.

    Raises:
        MalformedPacket: QoS 3, or lengths that run past the packet.
    """
    first = buf[pos]
    qos = (first >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    end, have = pos + total, len(buf)
    if body + 2 > end:
        raise MalformedPacket("PUBLISH too short for its topic length")
    if body + 2 > have:
        return None
    topic_end = body + 2 + ((buf[body] << 8) | buf[body + 1])
    i = topic_end + (2 if qos else 0)
    if i > end:
        raise MalformedPacket("PUBLISH topic runs past the packet")
    if i > have:
        return None
    mid = (buf[topic_end] << 8) | buf[topic_end + 1] if qos else 0
    props = 0
    if v5:
        found = _varint(buf, i, min(have, end))
        if found is None:
            if have < end:
                return None
            raise MalformedPacket("PUBLISH properties length runs past the packet")
        props, i = found
    payload = end - i - props
    if payload < 0:
        raise MalformedPacket("PUBLISH properties run past the packet")
    return _Head(bytes(buf[body + 2 : topic_end]), mid, qos, bool(first & 0x08), i, props, payload)


class _Discard:
    """An oversize PUBLISH streaming past: its properties skipped, its payload hashed and only
    its first bytes kept."""

    def __init__(self, head: _Head, keep: int) -> None:
        self.head = head
        self.props_left = head.props
        self.payload_left = head.payload
        self.keep = keep
        self.kept = bytearray()
        self.hash = hashlib.blake2b(digest_size=8)  # as the intake hashes a whole payload

    @property
    def left(self) -> int:
        return self.props_left + self.payload_left

    def feed(self, buf: bytearray | bytes, pos: int) -> int:
        """Consume what the buffer holds of this packet from ``pos``; the index after it."""
        take = min(len(buf) - pos, self.left)
        skip = min(take, self.props_left)
        self.props_left -= skip
        start, stop = pos + skip, pos + take
        if stop > start:
            with memoryview(buf) as view, view[start:stop] as part:
                self.hash.update(part)
                if len(self.kept) < self.keep:
                    self.kept += part[: self.keep - len(self.kept)]
            self.payload_left -= stop - start
        return pos + take

    def publish(self) -> Publish:
        head = self.head
        excerpt = PayloadExcerpt(bytes(self.kept), head.payload, self.hash.digest())
        return Publish(_topic(head.topic), excerpt, head.mid, head.qos, head.dup)


class Framer:
    """Splits the receive buffer into what the driver hands on, one packet at a time: a whole
    PUBLISH (QoS 0/1), an oversize one streamed past (its payload a
    :class:`~bridge.models.PayloadExcerpt`), or a whole packet for paho.

    A PUBLISH whose payload is over ``max_payload`` (or whose properties are over
    :data:`PROPS_ROOM`) is never held whole: once its head is read, each call consumes what
    has arrived of it, and the message is handed on when its last byte has passed, so
    acknowledgements keep their order. One framer per connection (:meth:`reset`).
    """

    def __init__(self, *, v5: bool, max_payload: int, keep: int = EXCERPT_BYTES) -> None:
        self.v5 = v5
        self.max_payload = max_payload
        self.keep = min(keep, max_payload)
        self.whole_limit = max_payload + HEAD_ROOM  # the largest packet read whole
        self._discard: _Discard | None = None

    @property
    def mid_packet(self) -> bool:
        """True while an oversize packet is streaming past (the buffer holds its bytes)."""
        return self._discard is not None

    def reset(self) -> None:
        """A new connection: nothing is part-read."""
        self._discard = None

    def next(
        self, buf: bytearray | bytes, pos: int, publish_ok: bool = True
    ) -> tuple[int, Publish | ForPaho | None]:
        """(index after what was consumed, what to hand on) for the stream at ``pos``; None
        while more bytes are needed (skipped bytes are consumed all the same). A
        :class:`ForPaho` is not consumed: paho reads it. ``publish_ok``: PUBLISH packets are
        parsed here (after CONNACK), not by paho.

        Raises:
            MalformedPacket: broken framing, or a packet paho would have to read whole that is
                larger than :attr:`whole_limit`.
        """
        if self._discard is None:
            found = _varint(buf, pos + 1, len(buf))
            if found is None:
                return pos, None
            length, body = found
            total = body - pos + length
            first = buf[pos]
            if first >> 4 == PUBLISH and publish_ok and total > self.max_payload:
                head = _publish_head(buf, pos, body, total, self.v5)
                if head is None:
                    return pos, None
                too_big = head.payload > self.max_payload or head.props > PROPS_ROOM
                if too_big and head.qos < 2 and head.topic:
                    self._discard = _Discard(head, self.keep)
                    pos = head.end
            if self._discard is None:
                return self._whole(buf, pos, total, publish_ok)
        discard = self._discard
        pos = discard.feed(buf, pos)
        if discard.left:
            return pos, None
        self._discard = None
        return pos, discard.publish()

    def _whole(
        self, buf: bytearray | bytes, pos: int, total: int, publish_ok: bool
    ) -> tuple[int, Publish | ForPaho | None]:
        if total > self.whole_limit:
            raise MalformedPacket(
                f"a packet of type {buf[pos] >> 4} and {total} bytes, more than the bridge "
                f"reads whole ({self.whole_limit})"
            )
        if pos + total > len(buf):
            return pos, None
        if buf[pos] >> 4 == PUBLISH and publish_ok:
            publish = parse_publish(buf, pos, total, self.v5)
            if publish is not None:
                return pos + total, publish
        return pos, ForPaho(total)


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
        # Every PINGREQ in the stream whose PINGRESP is still due, oldest first: True for the
        # source's fences, False for paho's keepalive.
        self._pings: deque[bool] = deque()
        self.fences_due = 0
        self._out_head = bytearray()  # fixed header of paho's packet being written, so far
        self._out_left = 0  # bytes of paho's packet being written still to come

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
        self._note_paho_packets(data)
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

    def queue_pingreq(self) -> None:
        """Add a fence (a PINGREQ) behind everything in the send buffer."""
        self.tx += _PINGREQ_PACKET
        self._pings.append(True)
        self.fences_due += 1

    def ping_answered(self) -> bool:
        """A PINGRESP arrived: True if it answers a fence (the broker has read everything
        written before that fence), False if it is paho's (or unasked for)."""
        if not self._pings:
            return False
        fence = self._pings.popleft()
        if fence:
            self.fences_due -= 1
        return fence

    def _note_paho_packets(self, data: bytes | bytearray | memoryview) -> None:
        """Follow the packet boundaries of what paho writes, to note its PINGREQs in order."""
        i, end = 0, len(data)
        with memoryview(data) as view:
            while i < end:
                if self._out_left:
                    step = min(self._out_left, end - i)
                    self._out_left -= step
                    i += step
                    continue
                self._out_head.append(view[i])
                i += 1
                found = _varint(self._out_head, 1, len(self._out_head))
                if found is None:
                    continue  # paho writes whole packets; a header split is handled anyway
                self._out_left = found[0]
                if self._out_head[0] >> 4 == PINGREQ:
                    self._pings.append(False)
                self._out_head.clear()

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
