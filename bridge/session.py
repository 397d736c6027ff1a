"""What the bridge remembers about its broker session, across restarts, in the spool.

Whether this client id already had a session on this broker (so a reconnect without one is an
alarm: messages queued while the bridge was away may be gone), and which filters that session
holds (so filters a changed configuration dropped are unsubscribed at the next connect).

It also says when the link comes back after a disconnect: how long it was down, and whether
the broker kept the session (INFO) or not (WARNING: what the broker queued meanwhile may be
gone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from bridge.intake import Intake
from bridge.logs import duration
from bridge.metrics import BridgeMetrics
from bridge.outage import Outage
from bridge.settings import MqttSettings
from bridge.spool.facade import AsyncSpool

log = logging.getLogger(__name__)

_SESSION_KEY = "mqtt_session"
_FILTERS_KEY = "mqtt_filters"  # JSON list of the broker filters the session holds


class SessionMemory:
    """The broker session's state kept in the spool's meta table."""

    def __init__(
        self,
        spool: AsyncSpool,
        intake: Intake,
        metrics: BridgeMetrics,
        mqtt: MqttSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spool = spool
        self._intake = intake
        self._m = metrics
        self._client_id = mqtt.client_id
        self._tag = f"{mqtt.client_id}@{mqtt.host}:{mqtt.port}"
        self._had_session = False
        self._tg: asyncio.TaskGroup | None = None
        self._link = Outage(clock)

    async def load(self) -> list[str]:
        """Read what an earlier run left; returns the filters the broker session holds
        (empty if this client id had no session on this broker)."""
        self._had_session = await self._spool.meta_get(_SESSION_KEY) == self._tag
        filters = await self._spool.meta_get(_FILTERS_KEY)
        return list(orjson.loads(filters)) if filters and self._had_session else []

    def attach(self, tg: asyncio.TaskGroup) -> None:
        """The task group that runs the spool writes of :meth:`connected` and :meth:`filters`."""
        self._tg = tg

    def connected(self, session_present: bool) -> None:
        """The broker accepted a connection (MQTT callback: must not block)."""
        m = self._m
        m.mqtt_connected.set(1)
        m.mqtt_connects.inc()
        if not session_present:
            self._intake.session_lost()
        ended = self._link.recovered()
        restored = (
            ""
            if ended is None
            else f"broker link restored after {duration(ended.down_s)} down, but the "
        )
        fields: dict[str, object] = {"event": "mqtt_link", "session_present": session_present}
        if ended is not None:
            fields["down_s"] = round(ended.down_s, 3)
        if not session_present and self._had_session:
            m.mqtt_session_lost.inc()
            log.warning(
                "%sbroker had no session for client id %r: messages queued while the bridge was "
                "away may have been dropped by the broker (session expired or broker state lost)",
                restored,
                self._client_id,
                extra=fields,
            )
        elif ended is not None:
            log.info(
                "broker link restored after %s down; the broker kept the session (session "
                "present: %s), so what it queued meanwhile arrives now",
                duration(ended.down_s),
                session_present,
                extra=fields,
            )
        if not self._had_session:
            self._had_session = True
            self._write(_SESSION_KEY, self._tag, "bridge.session.remember")

    def disconnected(self) -> None:
        """The link to the broker was lost (MQTT callback: must not block)."""
        self._m.mqtt_connected.set(0)
        self._link.failed(announced=True, kind="disconnected")

    def filters(self, filters: list[str]) -> None:
        """The broker session now holds these filters (MQTT callback: must not block)."""
        self._write(_FILTERS_KEY, orjson.dumps(filters).decode(), "bridge.session.filters")

    def _write(self, key: str, value: str, name: str) -> None:
        if self._tg is not None:
            self._tg.create_task(self._spool.meta_set(key, value), name=name)
