"""A process crash in the middle of one spool operation, for the spool's crash tests
(``test_spool_model.py``, ``test_spool_crash.py``): a forked child opens the spool file, runs
the operation and is SIGKILLed just before its N-th SQL statement (or right after the operation
returned); ``cache_size=1`` in the child spills uncommitted pages into the WAL, so recovery has
real uncommitted frames to discard."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable
from typing import Any, NoReturn, cast

from bridge.spool.store import Spool


class KillSwitch:
    """Stands in for a spool's connection in a forked child.

    SIGKILLs the process just before its ``kill_at``-th statement and reports each ``COMMIT``
    that went through as one ``C`` byte on ``report_fd``, so the parent knows whether the
    operation's transaction survived.
    """

    def __init__(self, db: sqlite3.Connection, kill_at: int, report_fd: int) -> None:
        self._db = db
        self._kill_at = kill_at
        self._fd = report_fd
        self._n = 0

    def _tick(self) -> None:
        if self._n == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self._n += 1

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """``Connection.execute`` with the kill check and the commit report."""
        self._tick()
        cur = self._db.execute(sql, params)
        if sql == "COMMIT":
            os.write(self._fd, b"C")
        return cur

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        """``Connection.executemany`` with the kill check."""
        self._tick()
        return self._db.executemany(sql, rows)


def run_and_crash(
    make_spool: Callable[[], Spool], op: Callable[[Spool], object], kill_at: int
) -> bool:
    """Run ``op`` on a fresh spool in a forked child that is SIGKILLed before its
    ``kill_at``-th SQL statement (or after ``op`` returns); True if its COMMIT went through.

    The caller must have closed its own spool: the child takes the lock like a restarted bridge.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns and coverage never sees it end
        os.close(read_fd)
        _child(make_spool, op, kill_at, write_fd)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read()
    assert os.WIFSIGNALED(status), (status, report)
    assert os.WTERMSIG(status) == signal.SIGKILL, (status, report)
    assert report in (b"", b"C"), report
    return report == b"C"


def _child(
    make_spool: Callable[[], Spool], op: Callable[[Spool], object], kill_at: int, fd: int
) -> NoReturn:  # pragma: no cover - runs in the forked child
    try:
        spool = make_spool()
        spool.open()
        spool.file.conn.execute("PRAGMA cache_size=1")  # spill uncommitted pages into the WAL
        spool.file._db = cast("sqlite3.Connection", KillSwitch(spool.file.conn, kill_at, fd))
        op(spool)
        os.kill(os.getpid(), signal.SIGKILL)  # committed, then killed before anything else
    except BaseException as exc:  # noqa: BLE001  # report anything to the parent, never return
        os.write(fd, b"child failed: " + repr(exc).encode()[:500])
    finally:
        os._exit(3)
