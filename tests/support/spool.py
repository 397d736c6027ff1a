"""What the spool unit tests share: fixed times, records and dead letters to commit, and
reopening a spool file. The ``path`` and ``spool`` fixtures are in ``tests/unit/conftest.py``."""

from __future__ import annotations

from bridge.models import DeadLetter, Record
from bridge.settings import SpoolSettings
from bridge.spool.store import Spool
from tests.support.clock import FakeClock

T0_US = 1_731_657_600_000_000  # 2024-11-15T08:00:00Z
NOW_S = 1_731_657_700.0  # the fake wall clock: 100 s after T0


def rec(i: int, n: int = 2, device: str = "d1") -> Record:
    """Record number ``i`` with ``n`` metrics, received ``i`` ms after T0."""
    return Record(
        device,
        T0_US + i * 1_000_000,
        {f"m{j}": float(i * 10 + j) for j in range(n)},
        T0_US + i * 1000,
    )


# A runaway device sending 100 readings while each of nine quiet devices sends one (the fair
# share's tests).
QUIET = [f"quiet-{k}" for k in range(9)]
RUNAWAY = "runaway"


def reading(device: str, i: int) -> Record:
    """Reading ``i`` of ``device``: four metrics, timestamps unique per device."""
    return Record(device, T0_US + i * 1000, {f"m{j}": float(i + j) for j in range(4)}, T0_US + i)


def burst(i: int) -> list[Record]:
    """What the runaway sends while each quiet device sends one reading: 100 readings."""
    return [reading(RUNAWAY, 100 * i + k) for k in range(100)]


def quiet(i: int) -> list[Record]:
    """One reading of each quiet device."""
    return [reading(d, i) for d in QUIET]


def dead(
    reason: str = "invalid_json", payload: bytes = b"{oops", received_us: int = T0_US
) -> DeadLetter:
    """A dead letter as the intake would write it."""
    return DeadLetter(reason, "detail text", "plant/a/b", payload, "rule-a", received_us)


def reopen(s: Spool) -> Spool:
    """Close ``s`` and open a new Spool on the same file."""
    s.close()
    again = Spool(SpoolSettings(s.file.path, reserve_bytes=0), clock=FakeClock(NOW_S))
    again.open()
    return again


def integrity(s: Spool) -> list[str]:
    """Rows of PRAGMA integrity_check."""
    return [str(row[0]) for row in s.file.conn.execute("PRAGMA integrity_check").fetchall()]
