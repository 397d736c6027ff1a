"""Hot reload of the mapping file: on SIGHUP, and when the file changes.

A file that fails to load keeps the running rules (logged, counted in
``config_reloads_total{result="failure"}``); the next good version is taken. Messages already
received keep the mapping they were received under.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from bridge import heap
from bridge.config.files import file_key
from bridge.errors import ConfigError
from bridge.mapping.identifiers import IdentifierLimits
from bridge.mapping.loader import load_mappings, make_mapper
from bridge.mapping.mapper import Mapper
from bridge.metrics import BridgeMetrics
from bridge.settings import MappingSettings

log = logging.getLogger(__name__)

# Called with the new mapper once it is in use; returns (filters added, filters removed).
Swap = Callable[[Mapper], tuple[list[str], list[str]]]


class MappingReloader:
    """Watches one mapping file and swaps the bridge's mapper when it changes."""

    def __init__(
        self, path: Path, settings: MappingSettings, metrics: BridgeMetrics, swap: Swap
    ) -> None:
        self._path = path
        self._s = settings
        self._m = metrics
        self._swap = swap
        self._requested = asyncio.Event()

    def request(self) -> None:
        """Re-read the file soon (SIGHUP)."""
        self._requested.set()

    async def reload(self) -> bool:
        """Load the file again; on any error keep running the current rules.

        Returns whether the new file is now in use.
        """
        path = self._path
        log.debug("reloading the mapping file %s", path, extra={"path": str(path)})
        try:
            rules = await asyncio.to_thread(load_mappings, path, IdentifierLimits.of(self._s))
        except ConfigError as exc:
            self._m.config_reloads.labels("failure").inc()
            self._m.config_last_reload_ok.set(0)
            log.error("reload of %s failed; still running the previous mapping:\n%s", path, exc)
            return False
        log.debug(
            "%s: %d rule(s) valid; compiling and swapping them in",
            path,
            len(rules),
            extra={"path": str(path), "rules": len(rules)},
        )
        added, removed = self._swap(make_mapper(rules, self._s))
        heap.refreeze()  # the old rules' cycles were frozen with the rest at start-up
        self._m.config_reloads.labels("success").inc()
        self._m.config_last_reload_ok.set(1)
        self._m.config_last_reload_time.set(time.time())
        log.info(
            "reloaded %s: %d rule(s); subscribed %s, unsubscribed %s",
            path,
            len(rules),
            added or "nothing new",
            removed or "nothing",
        )
        return True

    async def watch_loop(self) -> None:
        """Reload on SIGHUP, and when the file changes (mtime, size or inode: a Kubernetes
        ConfigMap update swaps a symlink)."""
        interval = self._s.reload_interval_s
        last = file_key(self._path)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval or None):
                    await self._requested.wait()
            requested = self._requested.is_set()
            self._requested.clear()
            key = file_key(self._path)
            if requested or key != last:
                log.debug(
                    "mapping file %s: %s",
                    self._path,
                    "reload requested" if requested else "changed",
                )
                last = key
                await self.reload()
