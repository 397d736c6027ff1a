"""The Sparkplug host mode's MQTT side: the STATE Will, birth and death, and rebirth NCMDs.

Consumer mode (the default) never gets here: the bridge then publishes nothing. With
``sparkplug.host_id`` set, :class:`~bridge.mqtt.source.MqttSource` calls :meth:`SparkplugHost.arm`
before each CONNECT (a new timestamp, and the death with it as the Will), :meth:`~SparkplugHost.
online` right after it subscribed on a CONNACK (the retained birth, same timestamp) and
:meth:`~SparkplugHost.offline` on a clean stop, before DISCONNECT (a clean DISCONNECT discards
the Will, so the death is published explicitly).

Everything is published through paho's ordinary ``publish``: paho writes whole packets to the
:class:`~bridge.mqtt.wire.WireSocket`, in order with the PUBACKs and fences the driver appends,
and the broker's PUBACK for a QoS 1 STATE is a packet the wire hands to paho (it only parses
PUBLISH itself). A broker whose ACL forbids the STATE answers (v5) with a failing PUBACK, and
mosquitto 2.0 then also closes the connection: the host mode turns itself off until the next
start (no Will, no STATE, no NCMD), says so as an error, and the bridge reconnects and goes on
consuming; the broker redelivers what was not acknowledged. The session stays persistent in
host mode too (docs/guide/sparkplug.md says why).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from bridge.settings import SparkplugSettings
from bridge.sparkplug.host import (
    COMMAND_QOS,
    STATE_QOS,
    RebirthLimiter,
    rebirth_command,
    state_payload,
    state_topic,
)

log = logging.getLogger(__name__)

_ACL_HINT = (
    "the broker's ACL must let the bridge publish on {state} and spBv1.0/+/NCMD/+ "
    "(docs/guide/sparkplug.md); the host mode is off until the bridge restarts, the bridge "
    "goes on consuming"
)


class SparkplugHost:
    """One host application identity on the bridge's own MQTT connection."""

    def __init__(
        self,
        settings: SparkplugSettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        assert settings.host_id is not None
        self.host_id = settings.host_id
        self.topic = state_topic(settings.host_id)
        self.timestamp_ms = 0  # of the current connection's birth and death
        self.limiter = RebirthLimiter(settings.rebirth_interval_s, settings.rebirth_max_per_minute)
        self.refused = 0  # publishes the broker refused (v5 PUBACK with a failure reason)
        self.off = False  # turned off by a refusal: nothing more is published
        self._clock = clock
        self._monotonic = monotonic
        self._client: mqtt.Client | None = None
        self._connected = False
        self._state_mids: set[int] = set()

    def attach(self, client: mqtt.Client) -> None:
        """The bridge's client (called once by the source)."""
        self._client = client
        client.on_publish = self._on_publish

    def arm(self) -> None:
        """Before a CONNECT: a new timestamp, and the death with it as the MQTT Will."""
        assert self._client is not None
        if self.off:
            self._client.will_clear()
            return
        self.timestamp_ms = int(self._clock() * 1000)
        self._client.will_set(
            self.topic, state_payload(False, self.timestamp_ms), qos=STATE_QOS, retain=True
        )

    def online(self) -> None:
        """After CONNACK and SUBSCRIBE: the retained birth, with the Will's timestamp."""
        if self.off:
            return
        self._connected = True
        self._publish_state(True)
        log.info(
            "Sparkplug host %r online: birth published on %s (timestamp %d)",
            self.host_id,
            self.topic,
            self.timestamp_ms,
            extra={"event": "sparkplug_host_online", "host_id": self.host_id},
        )

    def disconnected(self) -> None:
        self._connected = False

    def offline(self) -> None:
        """On a clean stop, before DISCONNECT: the death, published explicitly."""
        if self._connected:
            self._publish_state(False)
            log.info("Sparkplug host %r offline: death published on %s", self.host_id, self.topic)
        self._connected = False

    def request_rebirth(self, group: str, node: str, reason: str) -> str:
        """Ask an edge node for its BIRTHs again: ``"sent"``, ``"limited"`` (the rate limit
        held it back), ``"not_connected"`` or ``"off"`` (the broker refused the STATE)."""
        if not self._connected or self._client is None:
            return "off" if self.off else "not_connected"
        if not self.limiter.allow(group, node, self._monotonic()):
            return "limited"
        topic, payload = rebirth_command(group, node, int(self._clock() * 1000))
        self._client.publish(topic, payload, qos=COMMAND_QOS, retain=False)
        log.info(
            "asked Sparkplug edge node %s/%s for a rebirth (%s): NCMD on %s",
            group,
            node,
            reason.replace("_", " "),
            topic,
            extra={"event": "sparkplug_rebirth_request", "group": group, "node": node},
        )
        return "sent"

    def _publish_state(self, online: bool) -> None:
        assert self._client is not None
        info = self._client.publish(
            self.topic, state_payload(online, self.timestamp_ms), qos=STATE_QOS, retain=True
        )
        self._state_mids.add(info.mid)

    def _on_publish(self, _c: mqtt.Client, _ud: Any, mid: int, reason: Any, _props: Any) -> None:
        is_state = mid in self._state_mids
        self._state_mids.discard(mid)
        if getattr(reason, "is_failure", False):
            self.refused += 1
            self.off = True
            self._connected = False
            what = "STATE" if is_state else "a publish"
            log.error(
                "the broker refused the Sparkplug host's %s on %s: %s; %s",
                what,
                self.topic if is_state else "its topic",
                reason,
                _ACL_HINT.format(state=self.topic),
                extra={"event": "sparkplug_host_refused"},
            )
