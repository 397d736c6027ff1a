"""The wire under asyncio: socket readiness, packet dispatch, the receive window and PUBACK
flushes, on the event loop's thread.

paho runs without its own thread. Its socket (a :class:`~bridge.mqtt.wire.WireSocket`) is
registered with the event loop; each readiness callback fills the wire's buffer with large
reads and hands it on one packet at a time (:class:`~bridge.mqtt.wire.Framer`): PUBLISH (QoS
0/1) straight to the sink, everything else to paho, in stream order. A payload over
``mqtt.max_payload_bytes`` streams past as it arrives and reaches the sink as an excerpt once
its last byte has passed.

Acknowledgements are fenced: a PUBACK written is not yet a PUBACK the broker has read (a kill
or a reset can discard it in a socket buffer, and the broker then redelivers the message). After
each batch of PUBACKs the driver writes a PINGREQ; its PINGRESP proves the broker read them, and
only then does the sink's owner hear which acknowledgements are settled (``on_acks_read``). One
fence is outstanding at a time and covers every acknowledgement written before it; a fence that
has not passed when the connection ends is void (the broker redelivers, and the receiver
recognises the message).

The receive window: messages of this connection not yet acknowledged. Brokers are supposed to
stop at Receive Maximum, but mosquitto 2.0.11 floods a resumed session once the client starts
acknowledging (measured: 10 PUBACKs released 500 messages past a window of 50), so the driver
stops reading the socket itself at the window; TCP then holds the broker back and memory stays
bounded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from bridge.mqtt.acks import AckLedger
from bridge.mqtt.client import install_wire, note_bytes_received
from bridge.mqtt.state import SourceState
from bridge.mqtt.wire import PINGRESP, ForPaho, Framer, MalformedPacket, WireSocket

# A sink gets (topic, payload, mid, qos, dup, generation); generation changes on each connection.
MessageSink = Callable[[str, bytes, int, int, bool, int], None]
# Acknowledgements the broker has read, as (packet id, the newest key given to ack() for it),
# in the order the ids were first acknowledged.
AcksRead = Callable[[list[tuple[int, int]]], None]
_BYTES_PER_WAKEUP = 1 << 20  # read at most this much per readiness callback, then yield


def _unwatch(remove: Callable[[int], object], fd: int) -> None:
    """Stop watching ``fd`` with the loop's ``remove_reader`` or ``remove_writer``, ignoring
    what it returns: asyncio's loop returns a bool, uvloop's None, and code compiled from
    these types (mypyc) checks a result typed ``bool``."""
    remove(fd)


class WireDriver:
    """Moves bytes between one paho client's socket and the event loop."""

    def __init__(
        self,
        client: mqtt.Client,
        sink: MessageSink,
        window: int,
        state: SourceState,
        *,
        v5: bool,
        max_payload: int,
        on_acks_read: AcksRead | None = None,
    ) -> None:
        self._client = client
        self._sink = sink
        self._window = window
        self._state = state  # read per packet: whether CONNACK was seen, and the generation
        self._framer = Framer(v5=v5, max_payload=max_payload)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._sock: WireSocket | None = None
        self._unacked = 0
        self._reading_paused = False
        self._flush_pending = False
        self._on_acks_read = on_acks_read
        # Acks written since the last fence, and those the outstanding fence covers. By packet
        # id, because the broker may reuse an id only once it has read our PUBACK for it, so a
        # newer ack of the same id supersedes the older one. That bounds both at 65,535 entries
        # even when a fence takes the whole drain to pass (mosquitto 2.0.11 queues the PINGRESP
        # behind every message it floods past the window), in fixed memory (bridge/mqtt/acks.py).
        self._unfenced = AckLedger()
        self._fenced = AckLedger()
        self.received = 0
        self.fences_passed = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that runs the source (called from the loop's thread)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    # -- acknowledgements ------------------------------------------------------------------

    def ack(self, mid: int, qos: int, key: int = 0) -> None:
        """Acknowledge a message of the current connection (in receive order). PUBACKs are
        buffered and sent together once the caller's batch is done, followed by a fence;
        ``(mid, key)`` is handed to ``on_acks_read`` once the broker has read the PUBACK."""
        wire = self._sock
        if qos == 1 and wire is not None:
            wire.queue_puback(mid)
        else:
            self._client.ack(mid, qos)
        if wire is not None:
            self._unfenced.add(mid, key)
            self._schedule_flush()
        self._unacked -= 1
        if self._reading_paused and self._unacked < self._window:
            self._reading_paused = False
            if self._loop is not None and self._sock is not None:
                self._loop.add_reader(self._sock.fd, self._on_readable)
                # Whole packets may already wait in the buffer (or in TLS), not on the socket.
                self._loop.call_soon(self._on_readable)

    def received_by_paho(self, topic: str, payload: bytes, mid: int, qos: int, dup: bool) -> None:
        """A message paho parsed itself (QoS 2): count it and hand it on like the others."""
        self.received += 1
        if qos:
            self._unacked += 1
        self._sink(topic, payload, mid, qos, dup, self._state.generation)

    # -- reading ---------------------------------------------------------------------------

    def _on_readable(self) -> None:
        wire = self._sock
        budget = _BYTES_PER_WAKEUP
        while wire is not None and self._sock is wire:
            self._dispatch(wire)
            if self._reading_paused or self._sock is not wire:
                return
            if budget <= 0:
                # Yield to other tasks; TLS may hold bytes that no longer make the fd readable.
                assert self._loop is not None
                self._loop.call_soon(self._on_readable)
                return
            got = wire.fill()
            if not got:
                if wire.eof or wire.error is not None:
                    self._surface_close(wire)
                return
            budget -= got

    def _dispatch(self, wire: WireSocket) -> None:
        """Hand every packet in the buffer on: PUBLISH (QoS 0/1) straight to the sink, anything
        else to paho, one packet at a time, in stream order; bytes of an oversize payload are
        consumed as they arrive."""
        client = self._client
        state = self._state
        framer = self._framer
        rx = wire.rx
        received = self.received
        start = wire.pos
        while self._sock is wire:
            if self._unacked >= self._window:
                self._pause_reading()
                break
            pos = wire.pos
            try:
                wire.pos, event = framer.next(rx, pos, state.connected)
            except MalformedPacket as exc:
                wire.error = ConnectionError(f"malformed packet from the broker: {exc}")
                self._surface_close(wire)
                return
            if event is None:
                break
            if not isinstance(event, ForPaho):
                self.received += 1
                if event.qos:
                    self._unacked += 1
                self._sink(
                    event.topic, event.payload, event.mid, event.qos, event.dup, state.generation
                )
                continue
            if rx[pos] >> 4 == PINGRESP and wire.ping_answered():
                wire.pos = pos + event.length  # a fence's answer: not paho's to see
                note_bytes_received(client)
                self._fence_passed()
                continue
            wire.limit = pos + event.length  # paho reads exactly this packet
            try:
                client.loop_read()
            finally:
                wire.limit = None
            if wire.pos == pos:
                break  # paho did not take it (cannot happen with a whole packet); retry later
        if self.received != received or (framer.mid_packet and wire.pos != start):
            note_bytes_received(client)

    def _surface_close(self, wire: WireSocket) -> None:
        """Let paho read the end of the stream (or the error) so it runs its disconnect path."""
        if self._sock is wire:
            wire.limit = None
            if self._framer.mid_packet:
                # The rest of a packet streaming past: paho never saw its start.
                wire.pos = len(wire.rx)
                self._framer.reset()
            self._client.loop_read()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._loop is not None and self._sock is not None:
            self._reading_paused = True
            _unwatch(self._loop.remove_reader, self._sock.fd)

    # -- fences ----------------------------------------------------------------------------

    def _fence_passed(self) -> None:
        """The broker answered the outstanding fence: it has read every acknowledgement
        written before it."""
        covered = self._fenced.items()
        self._fenced.clear()
        self.fences_passed += 1
        if self._unfenced:
            self._schedule_flush()  # the next fence, for what was written meanwhile
        if covered and self._on_acks_read is not None:
            self._on_acks_read(covered)

    def _fence(self, wire: WireSocket) -> None:
        """Write a fence behind the acknowledgements not yet covered, unless one is out."""
        if not self._unfenced or wire.fences_due:
            return
        if self._client.want_write():
            self._client.loop_write()  # acknowledgements paho holds (QoS 2) go first
        # One fence is out at a time, so the fenced ledger is empty here: the two swap places.
        self._fenced, self._unfenced = self._unfenced, self._fenced
        self._unfenced.clear()
        wire.queue_pingreq()

    # -- writing ---------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_pending and self._loop is not None:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        wire = self._sock
        if wire is None:
            return
        self._fence(wire)
        if not wire.flush():
            if wire.error is not None:
                self._surface_close(wire)
            elif self._loop is not None:
                self._loop.add_writer(wire.fd, self._on_writable)

    def _on_writable(self) -> None:
        wire = self._sock
        self._client.loop_write()
        if wire is None or self._sock is not wire or self._loop is None:
            return
        if wire.flush() and not self._client.want_write():
            _unwatch(self._loop.remove_writer, wire.fd)
        elif wire.error is not None:
            self._surface_close(wire)

    # -- paho's socket callbacks (loop thread, except socket open during connect) ----------

    def _call_on_loop(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    def socket_opened(self, client: mqtt.Client, _ud: Any, sock: Any) -> None:
        """paho created the socket and is about to send CONNECT: put the wire in front."""
        loop = self._loop
        assert loop is not None
        wire = install_wire(client, sock)

        def add() -> None:
            self._sock = wire
            self._framer.reset()
            self._unacked = 0  # a new connection: the broker resends what was never acked
            self._void_fences()
            self._reading_paused = False
            loop.add_reader(wire.fd, self._on_readable)
            if wire.tx:
                loop.add_writer(wire.fd, self._on_writable)

        self._call_on_loop(add)

    def socket_closed(self, _c: mqtt.Client, _ud: Any, sock: WireSocket | Any) -> None:
        """paho closed the socket."""
        loop = self._loop
        assert loop is not None
        fd = sock.fd if isinstance(sock, WireSocket) else sock.fileno()

        def remove() -> None:
            _unwatch(loop.remove_reader, fd)
            _unwatch(loop.remove_writer, fd)
            if self._sock is sock:
                self._sock = None
                self._reading_paused = False
                self._void_fences()

        self._call_on_loop(remove)

    def _void_fences(self) -> None:
        """The connection ended: whether the broker read what was not fenced is unknown."""
        self._unfenced.clear()
        self._fenced.clear()

    def register_write(self, _c: mqtt.Client, _ud: Any, sock: WireSocket | Any) -> None:
        """paho has bytes to send."""
        loop = self._loop
        assert loop is not None
        fd = sock.fd if isinstance(sock, WireSocket) else sock.fileno()
        self._call_on_loop(lambda: loop.add_writer(fd, self._on_writable))

    def unregister_write(self, _c: mqtt.Client, _ud: Any, sock: WireSocket | Any) -> None:
        """paho's queue is empty; the wire may still hold bytes the kernel did not take."""
        loop = self._loop
        assert loop is not None

        def remove() -> None:
            if isinstance(sock, WireSocket) and sock.tx:
                return
            _unwatch(loop.remove_writer, sock.fd if isinstance(sock, WireSocket) else sock.fileno())

        self._call_on_loop(remove)
