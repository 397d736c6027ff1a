"""MQTT source: one paho-mqtt 2.x client driven from asyncio, with manual acknowledgement.

The source connects (resuming the broker session), subscribes, reconnects forever with capped
full-jitter backoff, and reports the connection in :attr:`MqttSource.state`. Messages reach a
synchronous sink on the loop thread through the :class:`~bridge.mqtt.driver.WireDriver`; the
bridge acknowledges them with :meth:`MqttSource.ack` after they are committed to the spool, and
hears through ``on_acks_read`` when the broker has read those acknowledgements.

The blocking part of connecting (DNS, TCP, TLS handshake) runs in a worker thread so a dead
broker never stalls the loop; ``loop_misc`` runs once a second for keepalive. paho types stay
inside this package; its private members inside :mod:`bridge.mqtt.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import traceback
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from bridge.backoff import Backoff
from bridge.logs import LogThrottle
from bridge.mqtt import client as paho
from bridge.mqtt.driver import AcksRead, MessageSink, WireDriver
from bridge.mqtt.host import SparkplugHost
from bridge.mqtt.state import SourceState
from bridge.mqtt.subscriptions import Subscriptions
from bridge.settings import MqttSettings

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL_VERSION = 0x84  # CONNACK reason (v5); paho maps a v3 answer of 1 to it
_V311_ONLY = "NATS, aedes, amqtt and RabbitMQ before 3.13 speak 3.1.1 only"
_NOT_V5 = f"this broker does not speak MQTT v5 ({_V311_ONLY}): set mqtt.protocol: v311"
_MAYBE_NOT_V5 = f"if this broker does not speak MQTT v5 ({_V311_ONLY}), set mqtt.protocol: v311"


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
        on_acks_read: AcksRead | None = None,
        host: SparkplugHost | None = None,
    ) -> None:
        self._s = settings
        self._host = host  # Sparkplug host mode; None: consumer mode, nothing is published
        self._subs = Subscriptions(subscriptions, settings.share_group, session_filters, on_filters)
        self._on_connected_cb = on_connected
        self._on_disconnected_cb = on_disconnected
        self._rng = rng
        self.state = SourceState()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = False
        self._throttle = LogThrottle(30.0)
        self._socket_error = ""  # paho's last socket error before CONNACK (e.g. a TLS alert)
        self._client = paho.make_client(settings, password)
        self._driver = WireDriver(
            self._client,
            sink,
            settings.receive_maximum,
            self.state,
            v5=settings.protocol == "v5",
            max_payload=settings.max_payload_bytes,
            on_acks_read=on_acks_read,
        )
        client = self._client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._driver.socket_opened
        client.on_socket_close = self._driver.socket_closed
        client.on_socket_register_write = self._driver.register_write
        client.on_socket_unregister_write = self._driver.unregister_write
        if host is not None:
            host.attach(client)

    # -- public -----------------------------------------------------------------------------

    def update_subscriptions(self, filters: list[str]) -> tuple[list[str], list[str]]:
        """Switch to a new set of filters (mapping reload); returns (added, removed).

        Applied at once when connected, and used for every later (re)connect.
        """
        subs = self._subs
        added, removed = subs.change(filters)
        if self.state.connected:
            paho.subscribe(self._client, [subs.broker_filter(f) for f in added], v5=self._v5)
            if removed:
                self._client.unsubscribe([subs.broker_filter(f) for f in removed])
            subs.held(set(subs.wanted()))
        return added, removed

    def ack(self, mid: int, qos: int, key: int = 0) -> None:
        """Acknowledge a message of the current connection (call in receive order);
        ``on_acks_read`` gets ``(mid, key)`` once the broker has read the acknowledgement."""
        self._driver.ack(mid, qos, key)

    @property
    def fences_passed(self) -> int:
        """PINGREQ fences the broker answered (each settles the acknowledgements before it)."""
        return self._driver.fences_passed

    async def run(self) -> None:
        """Connect, and reconnect forever with capped full-jitter backoff, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._driver.attach(self._loop)
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
            if self._host is not None:
                self._host.offline()  # a clean DISCONNECT discards the Will: say it first
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._lost.wait()

    @property
    def _v5(self) -> bool:
        return self._s.protocol == "v5"

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
        log.debug(
            "connecting to %s:%s as %r (MQTT %s, TLS %s, keepalive %d s, session expiry %d s, "
            "receive maximum %d)",
            s.host,
            s.port,
            s.client_id,
            s.protocol,
            "on" if s.tls.enabled else "off",
            s.keepalive_s,
            s.session_expiry_s,
            s.receive_maximum,
        )
        if self._host is not None:
            self._host.arm()  # the Will goes in this CONNECT
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
            if self._v5:
                # amqtt, for one, never answers a v5 CONNECT.
                self.state.last_error += f"; {_MAYBE_NOT_V5}"
            self._throttle.log(log, logging.WARNING, "connack", "%s", self.state.last_error)
            self._teardown()
            return False
        if not self.state.connected:
            self._teardown()
            return False
        return True

    def _blocking_connect(self) -> None:
        try:
            paho.connect(self._client, self._s)
        except BaseException as exc:
            # paho leaves the socket of a failed TLS handshake to the garbage collector; with a
            # reconnect loop that is one descriptor per attempt until GC runs. Close it now.
            for frame, _ in traceback.walk_tb(exc.__traceback__):
                for value in frame.f_locals.values():
                    if isinstance(value, socket.socket) and value is not self._client.socket():
                        value.close()
            raise

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
        paho.drop_link(self._client)
        self._set_disconnected()

    def _set_disconnected(self) -> None:
        self.state.subscribed = False
        if self._host is not None:
            self._host.disconnected()
        if self.state.connected:
            self.state.connected = False
            if self._on_disconnected_cb:
                self._on_disconnected_cb()
        self._lost.set()

    # -- paho callbacks (loop thread) -------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _ud: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        client.on_log = None
        if reason.is_failure:
            self.state.last_error = f"broker refused the connection: {reason}"
            if self._v5 and reason.value == _UNSUPPORTED_PROTOCOL_VERSION:
                self.state.last_error += f"; {_NOT_V5}"
            self._throttle.log(log, logging.ERROR, "refused", "%s", self.state.last_error)
            self._connack.set()
            return
        present = bool(flags.session_present)
        self.state.connected = True
        self.state.generation += 1
        self.state.session_present = present
        subs = self._subs
        wanted = subs.wanted()
        stale = subs.stale(present)
        if stale:
            client.unsubscribe(stale)
            log.info(
                "unsubscribed %d filter(s) the broker session kept from an earlier "
                "configuration: %s",
                len(stale),
                ", ".join(stale[:5]) + (" …" if len(stale) > 5 else ""),
            )
        paho.subscribe(client, wanted, v5=self._v5)
        subs.held(set(wanted))
        log.debug("subscribing at QoS 1: %s", ", ".join(wanted), extra={"filters": wanted})
        log.info(
            "connected to %s:%s as %r (session present: %s), subscribed to %d filter(s)%s",
            self._s.host,
            self._s.port,
            self._s.client_id,
            present,
            len(wanted),
            f" in share group {self._s.share_group!r}" if self._s.share_group else "",
            extra={
                "event": "mqtt_connected",
                "broker": f"{self._s.host}:{self._s.port}",
                "client_id": self._s.client_id,
                "session_present": present,
                "filters": len(wanted),
            },
        )
        if self._host is not None:
            self._host.online()  # after SUBSCRIBE, as Sparkplug 3.0 orders it
        if self._on_connected_cb:
            self._on_connected_cb(present)
        self._connack.set()

    def _on_subscribe(
        self, _c: mqtt.Client, _ud: Any, _mid: int, reasons: list[Any], _props: Any
    ) -> None:
        refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        log.debug("broker answered the subscription: %s", ", ".join(str(r) for r in reasons))
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
            log.warning("%s", self.state.last_error, extra={"event": "mqtt_disconnected"})
        elif not self._stopping and not self._connack.is_set():
            # Closed before any CONNACK: mosquitto does this when it rejects a client
            # certificate after the handshake (TLS 1.3), giving no MQTT reason.
            detail = self._socket_error or str(reason)
            if not self._s.tls.enabled and self._v5:
                # RabbitMQ 3.10 closes the connection on a v5 CONNECT without a word.
                hint = f"is it a TLS port? (mqtt.tls.enabled); {_MAYBE_NOT_V5}"
            elif not self._s.tls.enabled:
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
        # Only for what the wire does not parse itself (QoS 2); see WireDriver._dispatch.
        topic = paho.message_topic(msg)
        self._driver.received_by_paho(topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.dup))
