"""A side session: a look at the broker that leaves no trace, for ``discover`` and ``tap``.

The bridge's own session is persistent (the broker queues QoS 1 messages for it while it is
away), so looking at the broker under the bridge's client id would take over its connection and
its queued messages. A side session therefore always has its own client id and a clean,
non-persistent session: MQTT v5 Clean Start 1 with Session Expiry Interval 0, v3.1.1 Clean
Session 1. It subscribes at QoS 0, so the broker keeps nothing for it and nothing is
acknowledged; the broker forgets the session when the connection closes.

paho runs its own network thread here (``loop_start``): these are short-lived commands, not the
bridge's data path. Messages cross to the caller through a bounded queue; what does not fit is
counted in :attr:`SideSession.overflow` (never dropped silently). paho types stay in this module.
"""

from __future__ import annotations

import queue
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.errors import BrokerError
from bridge.mqtt.client import configure_tls
from bridge.settings import MqttSettings

QUEUE_LIMIT = 50_000  # messages between paho's thread and the caller; beyond: counted overflow


def side_client_id(purpose: str) -> str:
    """A fresh client id for one side session, e.g. ``mqb-discover-3f9a1c`` (at most 23
    characters, the length every MQTT 3.1.1 broker must accept)."""
    return f"mqb-{purpose[:8]}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class SideMessage:
    """One message the side session received."""

    topic: str
    payload: bytes
    retained: bool
    received_us: int


class SideSession:
    """A clean QoS 0 session on the bridge's broker (same host, credentials and TLS).

    Use as a context manager: entering connects and subscribes (raising
    :class:`~bridge.errors.BrokerError` if the broker cannot be reached or refuses), leaving
    disconnects, which ends the session on the broker.
    """

    def __init__(
        self,
        settings: MqttSettings,
        password: str | None,
        filters: list[str],
        *,
        client_id: str,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        if client_id == settings.client_id:
            raise BrokerError(
                f"client id {client_id!r} is the bridge's own (mqtt.client_id): a side session "
                "under it would take over the bridge's session"
            )
        self.client_id = client_id
        self.filters = filters
        self.overflow = 0  # messages that did not fit in the queue
        self.refused_filters: list[str] = []
        self._s = settings
        self._queue: queue.Queue[SideMessage] = queue.Queue(queue_limit)
        self._ready = threading.Event()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._old_sigint: Any = None
        self._old_sigterm: Any = None
        self._error = ""
        self._v5 = settings.protocol == "v5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else True,
            reconnect_on_failure=False,
        )
        if settings.username is not None:
            client.username_pw_set(settings.username, password)
        configure_tls(client, settings)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._client = client

    def __enter__(self) -> Self:
        s = self._s
        where = f"{s.host}:{s.port}"
        try:
            if self._v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 0  # the broker forgets the session on close
                self._client.connect(
                    s.host, s.port, s.keepalive_s, clean_start=True, properties=props
                )
            else:
                self._client.connect(s.host, s.port, s.keepalive_s)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise BrokerError(f"cannot connect to the broker at {where}: {exc}") from exc
        self._client.loop_start()
        try:
            self._wait(self._ready, f"no CONNACK from {where}")
            filters = [(f, 0) for f in self.filters]
            self._client.subscribe(filters)
            self._wait(self._subscribed, f"no SUBACK from {where}")
        except BaseException:
            self._close()
            raise
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C ends the reading at the next look instead of raising KeyboardInterrupt
            # wherever the main thread is: raised inside the queue's lock it could leave that
            # lock held, and paho's thread, putting the next message, would then block the
            # disconnect forever (seen once as a tap that did not stop on SIGINT). A second
            # Ctrl-C interrupts as usual. SIGTERM the same way (the command line turns it into
            # an exception like Ctrl-C's).
            self._old_sigint = signal.signal(signal.SIGINT, self._on_sigint)
            self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt
        self._stop.set()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        if self._old_sigint is not None:
            signal.signal(signal.SIGINT, self._old_sigint)
            self._old_sigint = None
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        self._close()

    def messages(self, *, seconds: float, limit: int) -> Iterator[SideMessage]:
        """Messages as they arrive, until ``seconds`` have passed or ``limit`` came (0: no
        limit), or the broker closed the connection (:class:`~bridge.errors.BrokerError`)."""
        deadline = time.monotonic() + seconds
        taken = 0
        while limit <= 0 or taken < limit:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return
            try:
                message = self._queue.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self._error:
                    raise BrokerError(self._error) from None
                continue
            taken += 1
            yield message

    @property
    def unread(self) -> int:
        """Messages received but not taken when the command stopped reading."""
        return self._queue.qsize()

    # -- paho's thread ----------------------------------------------------------------------

    def _wait(self, event: threading.Event, timeout_message: str) -> None:
        if not event.wait(self._s.connect_timeout_s):
            raise BrokerError(f"{timeout_message} in {self._s.connect_timeout_s:g} s")
        if self._error:
            raise BrokerError(self._error)

    def _close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self._error = f"the broker refused the connection: {reason}"
            self._subscribed.set()
        self._ready.set()

    def _on_subscribe(
        self, _c: mqtt.Client, _ud: Any, _mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        self.refused_filters = [
            f for f, r in zip(self.filters, reasons, strict=False) if r.is_failure
        ]
        if len(self.refused_filters) == len(self.filters):
            self._error = f"the broker refused every subscription: {', '.join(self.filters)}"
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")  # brokers validate UTF-8
        received = SideMessage(topic, bytes(msg.payload), bool(msg.retain), time.time_ns() // 1000)
        try:
            self._queue.put_nowait(received)
        except queue.Full:
            self.overflow += 1  # only paho's thread writes it

    def _on_disconnect(
        self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure and not self._error:
            if not self._ready.is_set():
                # Closed before a CONNACK was read: a broker that refuses a login sends its
                # refusal and closes at once, and a busy client may see only the close.
                self._error = (
                    f"the broker refused the connection (it closed the link before accepting "
                    f"the login: {reason}); check the credentials, the TLS settings and the port"
                )
            else:
                self._error = f"the broker closed the connection: {reason}"
        self._ready.set()
        self._subscribed.set()
