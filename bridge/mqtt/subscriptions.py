"""Which filters the bridge subscribes to, and which ones its broker session still holds.

A persistent session keeps its subscriptions across restarts, so a filter the configuration no
longer has (an edited mapping, a share group turned on) would go on delivering forever: the
filters the session holds are remembered (persisted by the caller through ``on_filters``) and
the stale ones unsubscribed at the next connect. Pure bookkeeping: no paho, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable


class Subscriptions:
    """The wanted filters (mapping rules) and those the broker session holds, as far as we
    know."""

    def __init__(
        self,
        filters: list[str],
        share_group: str | None,
        in_session: list[str] | None = None,
        on_filters: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.filters = list(filters)
        self._group = share_group
        self._in_session: set[str] = set(in_session or ())
        self._on_filters = on_filters

    def broker_filter(self, topic_filter: str) -> str:
        """The filter as sent to the broker: ``$share/<group>/<filter>`` in a share group."""
        return f"$share/{self._group}/{topic_filter}" if self._group else topic_filter

    def wanted(self) -> list[str]:
        """Every broker filter the configuration asks for."""
        return [self.broker_filter(f) for f in self.filters]

    def stale(self, session_present: bool) -> list[str]:
        """Filters a resumed session holds that the configuration no longer has."""
        if not session_present:
            return []
        return sorted(self._in_session - set(self.wanted()))

    def change(self, filters: list[str]) -> tuple[list[str], list[str]]:
        """Switch to new filters (a mapping reload); returns (added, removed) in mapping form."""
        old = self.filters
        added = [f for f in filters if f not in old]
        removed = [f for f in old if f not in filters]
        self.filters = list(filters)
        return added, removed

    def held(self, broker_filters: set[str]) -> None:
        """The broker session now holds exactly these filters."""
        if broker_filters != self._in_session:
            self._in_session = broker_filters
            if self._on_filters is not None:
                self._on_filters(sorted(broker_filters))
