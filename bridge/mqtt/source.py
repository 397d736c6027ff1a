"""MQTT source: paho-mqtt 2.x driven directly from asyncio, with manual acknowledgement.

paho runs without its own thread: the socket is registered with the event loop
(``add_reader``/``add_writer``) and ``loop_misc`` runs once a second for keepalive. Messages are
handed to a synchronous sink on the loop thread; the bridge acknowledges them with :meth:`ack`
after they are committed to the spool. paho types stay inside this module.

The blocking part of connecting (DNS, TCP, TLS handshake) runs in a worker thread so a dead
broker never stalls the loop; socket callbacks from that thread are passed to the loop safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.backoff import Backoff
from bridge.logs import LogThrottle
from bridge.mqtt.wire import PUBLISH, MalformedPacket, WireSocket, frame_length, parse_publish
from bridge.settings import MqttSettings

log = logging.getLogger(__name__)

# A sink gets (topic, payload, mid, qos, dup, generation); generation changes on each connection.
MessageSink = Callable[[str, bytes, int, int, bool, int], None]
_BYTES_PER_WAKEUP = 1 << 20  # read at most this much per readiness callback, then yield


@dataclass(slots=True)
class SourceState:
    """What the rest of the bridge may read about the connection."""

    connected: bool = False
    subscribed: bool = False
    generation: int = 0
    session_present: bool | None = None
    last_error: str = ""


class MqttSource:
    """Owns one paho client and its reconnect loop."""

    def __init__(
        self,
        settings: MqttSettings,
        subscriptions: list[str],
        sink: MessageSink,
        *,
        password: str | None = None,
        on_connected: Callable[[bool], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        rng: Callable[[], float] = random.random,
        session_filters: list[str] | None = None,
        on_filters: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._s = settings
        self._subscriptions = subscriptions
        # Broker filters the broker's session holds for us, as far as we know (persisted by
        # the caller through on_filters): a session keeps its subscriptions across restarts,
        # so filters the configuration no longer has (an edited mapping, a share group turned
        # on) are unsubscribed at the next connect instead of delivering forever.
        self._in_session: set[str] = set(session_filters or ())
        self._on_filters = on_filters
        self._sink = sink
        self._password = password
        self._on_connected_cb = on_connected
        self._on_disconnected_cb = on_disconnected
        self._rng = rng
        self.state = SourceState()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._connack = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = False
        self._received = 0
        # Our own receive window: messages of this connection not yet acknowledged. Brokers are
        # supposed to stop at Receive Maximum, but mosquitto 2.0.11 floods a resumed session
        # once the client starts acknowledging (measured: 10 PUBACKs released 500 messages past
        # a window of 50), so the bridge stops reading the socket itself at the window; TCP
        # then holds the broker back and memory stays bounded.
        self._window = settings.receive_maximum
        self._unacked = 0
        self._reading_paused = False
        self._sock: WireSocket | None = None
        self._flush_pending = False
        self._throttle = LogThrottle(30.0)
        self._socket_error = ""  # paho's last socket error before CONNACK (e.g. a TLS alert)
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self._s
        v5 = s.protocol == "v5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        if s.username is not None:
            client.username_pw_set(s.username, self._password)
        if s.tls.enabled:
            ctx = ssl.create_default_context(cafile=str(s.tls.ca_file) if s.tls.ca_file else None)
            if s.tls.cert_file and s.tls.key_file:
                ctx.load_cert_chain(str(s.tls.cert_file), str(s.tls.key_file))
            if not s.tls.verify:
                log.warning(
                    "mqtt.tls.verify is false: the broker's certificate is not checked, so "
                    "anyone on the network path can pose as the broker"
                )
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            client.tls_set_context(ctx)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    # -- public -----------------------------------------------------------------------------

    def update_subscriptions(self, filters: list[str]) -> tuple[list[str], list[str]]:
        """Switch to a new set of filters (mapping reload); returns (added, removed).

        Applied at once when connected, and used for every later (re)connect.
        """
        old = self._subscriptions
        added = [f for f in filters if f not in old]
        removed = [f for f in old if f not in filters]
        self._subscriptions = list(filters)
        if self.state.connected:
            self._subscribe([self._broker_filter(f) for f in added])
            if removed:
                self._client.unsubscribe([self._broker_filter(f) for f in removed])
            self._set_in_session({self._broker_filter(f) for f in filters})
        return added, removed

    def _broker_filter(self, topic_filter: str) -> str:
        group = self._s.share_group
        return f"$share/{group}/{topic_filter}" if group else topic_filter

    def _subscribe(self, broker_filters: list[str]) -> None:
        if broker_filters and self._s.protocol == "v5":
            self._client.subscribe([(f, _subscribe_options()) for f in broker_filters])
        elif broker_filters:
            self._client.subscribe([(f, 1) for f in broker_filters])

    def _set_in_session(self, broker_filters: set[str]) -> None:
        if broker_filters != self._in_session:
            self._in_session = broker_filters
            if self._on_filters is not None:
                self._on_filters(sorted(broker_filters))

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message of the current connection (call in receive order). PUBACKs
        are buffered and sent together once the caller's batch is done."""
        wire = self._sock
        if qos == 1 and wire is not None:
            wire.queue_puback(mid)
            if not self._flush_pending and self._loop is not None:
                self._flush_pending = True
                self._loop.call_soon(self._flush)
        else:
            self._client.ack(mid, qos)
        self._unacked -= 1
        if self._reading_paused and self._unacked < self._window:
            self._reading_paused = False
            if self._loop is not None and self._sock is not None:
                self._loop.add_reader(self._sock.fd, self._on_readable)
                # Whole packets may already wait in the buffer (or in TLS), not on the socket.
                self._loop.call_soon(self._on_readable)

    async def run(self) -> None:
        """Connect, and reconnect forever with capped full-jitter backoff, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        backoff = Backoff(self._s.reconnect_min_s, self._s.reconnect_max_s, self._rng)
        try:
            while True:
                if await self._connect_once():
                    backoff.reset()
                    await self._serve_connection()
                if self._stopping:
                    return
                delay = backoff.next_delay()
                log.info("reconnecting to the broker in %.1f s", delay)
                await asyncio.sleep(delay)
        finally:
            self._teardown()

    async def stop(self) -> None:
        """Disconnect cleanly, keeping the broker session (no Session Expiry 0 is sent)."""
        self._stopping = True
        if self.state.connected:
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._lost.wait()

    # -- connection lifecycle -----------------------------------------------------------

    async def _connect_once(self) -> bool:
        s = self._s
        self._connack.clear()
        self._lost.clear()
        assert self._loop is not None
        # paho reports why a socket failed only through on_log; listen until CONNACK (it
        # formats a line for every packet once connected, so not longer).
        self._socket_error = ""
        self._client.on_log = self._on_log
        try:
            await self._loop.run_in_executor(None, self._blocking_connect)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.state.last_error = f"connect to {s.host}:{s.port} failed: {exc}"
            self._throttle.log(log, logging.WARNING, "connect", "%s", self.state.last_error)
            self._teardown()
            return False
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                await self._connack.wait()
        except TimeoutError:
            self.state.last_error = f"no CONNACK from {s.host}:{s.port} in {s.connect_timeout_s} s"
            self._throttle.log(log, logging.WARNING, "connack", "%s", self.state.last_error)
            self._teardown()
            return False
        if not self.state.connected:
            self._teardown()
            return False
        return True

    def _blocking_connect(self) -> None:
        try:
            self._connect_call()
        except BaseException as exc:
            # paho leaves the socket of a failed TLS handshake to the garbage collector; with a
            # reconnect loop that is one descriptor per attempt until GC runs. Close it now.
            for frame, _ in traceback.walk_tb(exc.__traceback__):
                for value in frame.f_locals.values():
                    if isinstance(value, socket.socket) and value is not self._client.socket():
                        value.close()
            raise

    def _connect_call(self) -> None:
        s = self._s
        if s.protocol == "v5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s
            # Receive Maximum sizes the broker's window of unacknowledged messages; messages
            # wait here only until the next group commit, so a wide window keeps commits large.
            props.ReceiveMaximum = s.receive_maximum
            self._client.connect(s.host, s.port, s.keepalive_s, clean_start=False, properties=props)
        else:
            self._client.connect(s.host, s.port, s.keepalive_s)

    async def _serve_connection(self) -> None:
        """Run keepalive housekeeping until the connection is lost."""
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._lost.wait()
            if not self._lost.is_set():
                self._client.loop_misc()
        self._teardown()

    def _teardown(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            self._client._sock_close()  # paho has no public close-without-DISCONNECT
        self._set_disconnected()

    def _set_disconnected(self) -> None:
        self.state.subscribed = False
        if self.state.connected:
            self.state.connected = False
            if self._on_disconnected_cb:
                self._on_disconnected_cb()
        self._lost.set()

    # -- paho callbacks (loop thread, except socket open during connect) -----------------

    def _on_connect(
        self, client: mqtt.Client, _ud: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        client.on_log = None
        if reason.is_failure:
            self.state.last_error = f"broker refused the connection: {reason}"
            self._throttle.log(log, logging.ERROR, "refused", "%s", self.state.last_error)
            self._connack.set()
            return
        present = bool(flags.session_present)
        self.state.connected = True
        self.state.generation += 1
        self.state.session_present = present
        wanted = [self._broker_filter(f) for f in self._subscriptions]
        stale = sorted(self._in_session - set(wanted)) if present else []
        if stale:
            client.unsubscribe(stale)
            log.info(
                "unsubscribed %d filter(s) the broker session kept from an earlier "
                "configuration: %s",
                len(stale),
                ", ".join(stale[:5]) + (" …" if len(stale) > 5 else ""),
            )
        self._subscribe(wanted)
        self._set_in_session(set(wanted))
        log.info(
            "connected to %s:%s as %r (session present: %s), subscribed to %d filter(s)%s",
            self._s.host,
            self._s.port,
            self._s.client_id,
            present,
            len(wanted),
            f" in share group {self._s.share_group!r}" if self._s.share_group else "",
        )
        if self._on_connected_cb:
            self._on_connected_cb(present)
        self._connack.set()

    def _on_subscribe(
        self, _c: mqtt.Client, _ud: Any, _mid: int, reasons: list[Any], _props: Any
    ) -> None:
        refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            # The broker's ACL may forbid a filter: say so loudly, keep the rest running.
            self.state.last_error = f"broker refused {len(refused)} subscription(s): {refused}"
            log.error("%s", self.state.last_error)
        self.state.subscribed = True

    def _on_disconnect(
        self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if not self._stopping and self.state.connected:
            # Only a link that was up is news; a refused CONNACK already said why.
            self.state.last_error = f"disconnected from broker: {reason}"
            log.warning("%s", self.state.last_error)
        elif not self._stopping and not self._connack.is_set():
            # Closed before any CONNACK: mosquitto does this when it rejects a client
            # certificate after the handshake (TLS 1.3), giving no MQTT reason.
            detail = self._socket_error or str(reason)
            if not self._s.tls.enabled:
                hint = "is it a TLS port? (mqtt.tls.enabled)"
            elif self._s.tls.cert_file:
                hint = "it may not accept the client certificate (mqtt.tls.cert_file)"
            else:
                hint = "it may require a client certificate (mqtt.tls.cert_file)"
            self.state.last_error = (
                f"broker closed the connection before accepting it ({detail}); {hint}"
            )
            self._throttle.log(log, logging.ERROR, "closed", "%s", self.state.last_error)
        self._set_disconnected()
        self._connack.set()

    def _on_log(self, _c: mqtt.Client, _ud: Any, level: int, message: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._socket_error = message

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        # Only for what the wire does not parse itself (QoS 2); see _dispatch.
        self._received += 1
        if msg.qos:
            self._unacked += 1
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")  # brokers validate UTF-8
        self._sink(
            topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.dup), self.state.generation
        )

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
        """Hand every whole packet in the buffer on: PUBLISH (QoS 0/1) straight to the sink,
        anything else to paho, one packet at a time, in stream order."""
        client = self._client
        rx = wire.rx
        v5 = self._s.protocol == "v5"
        received = self._received
        while self._sock is wire:
            if self._unacked >= self._window:
                self._pause_reading()
                break
            pos = wire.pos
            try:
                length = frame_length(rx, pos)
                if length is None:
                    break
                publish = (
                    parse_publish(rx, pos, length, v5)
                    if rx[pos] >> 4 == PUBLISH and self.state.connected
                    else None
                )
            except MalformedPacket as exc:
                wire.error = ConnectionError(f"malformed packet from the broker: {exc}")
                self._surface_close(wire)
                return
            if publish is not None:
                wire.pos = pos + length
                self._received += 1
                if publish.qos:
                    self._unacked += 1
                self._sink(
                    publish.topic,
                    publish.payload,
                    publish.mid,
                    publish.qos,
                    publish.dup,
                    self.state.generation,
                )
                continue
            wire.limit = pos + length  # paho reads exactly this packet
            try:
                client.loop_read()
            finally:
                wire.limit = None
            if wire.pos == pos:
                break  # paho did not take it (cannot happen with a whole packet); retry later
        if self._received != received:
            _note_bytes_received(client)

    def _surface_close(self, wire: WireSocket) -> None:
        """Let paho read the end of the stream (or the error) so it runs its disconnect path."""
        if self._sock is wire:
            wire.limit = None
            self._client.loop_read()

    def _flush(self) -> None:
        self._flush_pending = False
        wire = self._sock
        if wire is None:
            return
        if not wire.flush():
            if wire.error is not None:
                self._surface_close(wire)
            elif self._loop is not None:
                self._loop.add_writer(wire.fd, self._on_writable)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._loop is not None and self._sock is not None:
            self._reading_paused = True
            self._loop.remove_reader(self._sock.fd)

    def _on_writable(self) -> None:
        wire = self._sock
        self._client.loop_write()
        if wire is None or self._sock is not wire or self._loop is None:
            return
        if wire.flush() and not self._client.want_write():
            self._loop.remove_writer(wire.fd)
        elif wire.error is not None:
            self._surface_close(wire)

    def _call_on_loop(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    def _on_socket_open(self, client: mqtt.Client, _ud: Any, sock: socket.socket | Any) -> None:
        loop = self._loop
        assert loop is not None
        # paho calls this right after creating the socket, before it sends CONNECT: from here
        # on it reads and writes through the wire (see bridge/mqtt/wire.py).
        wire = WireSocket(sock)
        client._sock = wire

        def add() -> None:
            self._sock = wire
            self._unacked = 0  # a new connection: the broker resends what was never acked
            self._reading_paused = False
            loop.add_reader(wire.fd, self._on_readable)
            if wire.tx:
                loop.add_writer(wire.fd, self._on_writable)

        self._call_on_loop(add)

    def _on_socket_close(self, _c: mqtt.Client, _ud: Any, sock: WireSocket | Any) -> None:
        loop = self._loop
        assert loop is not None
        fd = sock.fd if isinstance(sock, WireSocket) else sock.fileno()

        def remove() -> None:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            if self._sock is sock:
                self._sock = None
                self._reading_paused = False

        self._call_on_loop(remove)

    def _on_register_write(self, _c: mqtt.Client, _ud: Any, sock: WireSocket | Any) -> None:
        loop = self._loop
        assert loop is not None
        fd = sock.fd if isinstance(sock, WireSocket) else sock.fileno()
        self._call_on_loop(lambda: loop.add_writer(fd, self._on_writable))

    def _on_unregister_write(self, _c: mqtt.Client, _ud: Any, sock: WireSocket | Any) -> None:
        loop = self._loop
        assert loop is not None

        def remove() -> None:
            # paho's queue is empty; the wire may still hold bytes the kernel did not take.
            if isinstance(sock, WireSocket) and sock.tx:
                return
            loop.remove_writer(sock.fd if isinstance(sock, WireSocket) else sock.fileno())

        self._call_on_loop(remove)


def _subscribe_options() -> SubscribeOptions:
    """QoS 1; retained messages only when the subscription is new. A reconnect re-subscribes
    to filters its session already has, and a replayed retained message without a payload
    time would otherwise be stored again as a new reading (MQTT v5 Retain Handling 1)."""
    return SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)


def _note_bytes_received(client: mqtt.Client) -> None:
    """Tell paho's keepalive that the broker is talking: PUBLISH packets parsed by the wire
    never pass through paho's reader, which is where it notes the time."""
    client._last_bytes_received = time.monotonic()  # paho 2.2; tests/unit/test_mqttwire.py
