"""Run inside a private small tmpfs by tests/faults/test_disk_full.py: the memory of delivered
ids fills the disk after a long drain. Prints one JSON line of what happened at each step.

    python -m tests.support.ids_fill_disk SPOOL_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from bridge.errors import SpoolFull
from bridge.models import Record
from bridge.settings import SpoolSettings
from bridge.spool.store import Spool

T0 = 1_795_680_000_000_000


def main(directory: Path) -> None:
    spool = Spool(SpoolSettings(directory / "bridge.db", reserve_bytes=4 << 20))
    spool.open()
    sent = 0

    def commit(n: int) -> bool:
        nonlocal sent
        batch = [
            Record(f"dev{(sent + i) % 100}", T0 + sent + i, {"a": 1.5, "b": 2.5}, T0)
            for i in range(n)
        ]
        try:
            spool.commit(batch, [])
        except SpoolFull:
            return False
        sent += n
        return True

    def deliver() -> None:
        outbox = spool.outbox
        while batches := outbox.take_batches(4, 100, single_object=False, newest_first=False):
            outbox.delivered([s for b in batches for s in b.seqs])

    def ids() -> int:
        return int(spool.file.conn.execute("SELECT COUNT(*) FROM delivered_ids").fetchone()[0])

    # A drain into a small disk: every commit is delivered at once, so nothing waits, and the
    # delivered ids pile up until they fill it. Intake must never be refused for them: the
    # oldest are forgotten instead.
    refused = forgot_at = 0
    most = 0
    while not forgot_at and sent < 1_000_000:
        if not commit(500):
            refused += 1
            break
        deliver()
        if ids() < most:
            forgot_at = sent
        most = max(most, ids())
    drained = {"refused": refused, "forgot_at": forgot_at, "most_ids": most, "ids": ids()}
    # Records that wait (the API is down) fill the disk: the ids stay, as they guard against
    # redeliveries of what was just sent, and the deletes of delivered points will make room.
    before = ids()
    while commit(500):
        pass
    waiting = {"ids_before": before, "ids": ids(), "points": spool.file.depth_points}
    # The API is back: everything is delivered, and intake goes on.
    deliver()
    after = {"resumed": commit(500), "points": spool.file.depth_points}
    check = spool.file.conn.execute("PRAGMA integrity_check").fetchone()[0]
    spool.close()
    print(
        orjson.dumps(
            {"drained": drained, "waiting": waiting, "after": after, "check": check}
        ).decode()
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
