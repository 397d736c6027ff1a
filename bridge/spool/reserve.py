"""A file of real blocks kept beside the spool and given back when the disk is full.

In WAL mode even a DELETE needs new pages, so on a full disk the deletes that would free space
fail too. Releasing the reserve lets them go through; intake then waits until the reserve can
be re-created, so it never eats the space the deletes need.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from bridge.logs import LogThrottle

log = logging.getLogger(__name__)


class DiskReserve:
    """``size`` bytes at ``path`` (0: no reserve)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._in_place = False
        self._throttle = LogThrottle(30.0)

    @property
    def missing(self) -> bool:
        """True when a reserve is configured but not in place (released, or no room for it)."""
        return self.size > 0 and not self._in_place

    def ensure(self, *, quiet: bool = False) -> bool:
        """Create (or re-create after a release) the reserve; False if the disk has no room
        for it now (logged unless ``quiet``), or none is configured."""
        if self.size <= 0:
            return False
        with contextlib.suppress(OSError):
            if self.path.stat().st_size >= self.size:
                self._in_place = True
                return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)  # real blocks, not a sparse file
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if not quiet:
                log.warning(
                    "cannot reserve %d bytes beside the spool (%s); retrying later",
                    self.size,
                    exc.strerror,
                )
            return False
        self._in_place = True
        return True

    def release(self) -> bool:
        """Give the reserve back to the filesystem; False if there was none to give."""
        self._in_place = False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("cannot release the spool's disk reserve %s: %s", self.path, exc)
            return False
        self._throttle.log(
            log,
            logging.ERROR,
            "reserve",
            "disk full: released the %d-byte reserve beside the spool so delivered points can "
            "be deleted; free disk space (the reserve is re-created once there is room)",
            self.size,
        )
        return True

    def free_disk_bytes(self) -> int:
        """Bytes free for this user on the filesystem of the reserve (and the spool)."""
        try:
            stat = os.statvfs(self.path.parent)
        except OSError:
            return 0
        return stat.f_bavail * stat.f_frsize

    def disk_room(self, need: int) -> int:
        """Free disk a write of ``need`` bytes wants: twice that (the WAL, then the database
        file at the next checkpoint), at least 1 MiB of it, another MiB, and the reserve if it
        was given back."""
        return (self.size if self.missing else 0) + 2 * max(need, 1 << 20) + (1 << 20)
