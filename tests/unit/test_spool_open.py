"""Unit tests of opening and closing the durable SQLite spool, each on a real database file in
tmp_path: the lock, counters rebuilt on reopen, corrupt files moved aside, the async facade's one
thread, opening beside the running owner, and the disk reserve."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest

from bridge.errors import SpoolError, SpoolLocked
from bridge.settings import SpoolSettings
from bridge.spool.census import UNLISTED, PageCensus
from bridge.spool.deadletters import DeadLetterFilter
from bridge.spool.facade import AsyncSpool
from bridge.spool.store import Spool
from tests.support.clock import FakeClock
from tests.support.spool import NOW_S, dead, integrity, rec, reopen


def test_open_creates_the_directory_the_database_and_a_lock_file(path: Path) -> None:
    """open() creates the parent directory, the database and a lock file holding our pid."""
    s = Spool(SpoolSettings(path, reserve_bytes=0))
    s.open()
    try:
        assert path.is_file()
        lock = path.with_name(path.name + ".lock")
        assert lock.read_text() == str(os.getpid())
        assert (s.file.depth_records, s.file.depth_points, s.file.oldest_received_us) == (
            0,
            0,
            None,
        )
        assert s.file.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        s.close()


def test_depth_counters_and_oldest_survive_close_and_reopen(spool: Spool) -> None:
    """depth_records, depth_points and oldest_received_us are rebuilt from the file on open."""
    spool.writer.commit([rec(3, n=1), rec(4, n=5)], [])
    spool.writer.commit([rec(5, n=2)], [dead()])
    assert spool.file.oldest_received_us == rec(3).received_us
    before = (spool.file.depth_records, spool.file.depth_points, spool.file.oldest_received_us)
    assert before == (3, 8, rec(3).received_us)
    spool = reopen(spool)
    try:
        assert (
            spool.file.depth_records,
            spool.file.depth_points,
            spool.file.oldest_received_us,
        ) == before
        assert spool.dead_letters.count() == 1
        spool.outbox.delivered([spool.outbox.fetch(0, 1)[0].seq])
        assert spool.file.oldest_received_us == rec(4).received_us
    finally:
        spool.close()


def test_meta_values_persist(spool: Spool) -> None:
    """meta_set values are read back by meta_get, also after reopening."""
    assert spool.file.meta_get("client_id") is None
    spool.file.meta_set("client_id", "bridge-1")
    spool.file.meta_set("client_id", "bridge-2")
    spool = reopen(spool)
    try:
        assert spool.file.meta_get("client_id") == "bridge-2"
    finally:
        spool.close()


def test_second_spool_on_the_same_path_is_locked_out(path: Path) -> None:
    """While one Spool is open another on the same path raises SpoolLocked; after close it opens."""
    first = Spool(SpoolSettings(path, reserve_bytes=0))
    first.open()
    second = Spool(SpoolSettings(path, reserve_bytes=0))
    try:
        with pytest.raises(SpoolLocked, match=f"pid {os.getpid()}"):
            second.open()
        first.writer.commit([rec(1)], [])
    finally:
        first.close()
    second.open()
    try:
        assert second.file.depth_records == 1
    finally:
        second.close()


def test_closed_spool_refuses_work_and_close_is_idempotent(path: Path) -> None:
    """Using a spool that is not open raises SpoolError; close() may be called twice."""
    s = Spool(SpoolSettings(path, reserve_bytes=0))
    with pytest.raises(SpoolError, match="not open"):
        s.outbox.fetch(0, 1)
    s.open()
    s.close()
    s.close()
    with pytest.raises(SpoolError, match="not open"):
        s.writer.commit([rec(1)], [])


def test_garbled_pages_are_moved_aside_and_a_new_spool_starts(path: Path) -> None:
    """A file failing quick_check is renamed to .corrupt-<time> (kept) and a fresh spool opens."""
    s = Spool(SpoolSettings(path, reserve_bytes=0))
    s.open()
    s.writer.commit([rec(i, n=50) for i in range(300)], [])
    s.close()
    raw = bytearray(path.read_bytes())
    noise = random.Random(1)
    for offset in range(2 * 4096, len(raw), 4096):  # keep the header page, garble the rest
        raw[offset : offset + 4096] = noise.randbytes(4096)
    path.write_bytes(bytes(raw))
    fresh = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    fresh.open()
    try:
        assert fresh.file.moved_aside == path.with_name(path.name + ".corrupt-20241115T080140")
        assert fresh.file.moved_aside.read_bytes() == bytes(raw)
        assert fresh.file.depth_records == 0
        assert fresh.writer.commit([rec(1)], []).records_inserted == 1
        assert integrity(fresh) == ["ok"]
    finally:
        fresh.close()


def test_garbage_file_is_moved_aside_and_a_new_spool_starts(path: Path) -> None:
    """A .db file of garbage bytes is moved aside (never deleted) and a new spool works."""
    path.parent.mkdir(parents=True)
    garbage = random.Random(2).randbytes(64 * 1024)
    path.write_bytes(garbage)
    s = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
    s.open()
    try:
        assert s.file.moved_aside is not None
        assert s.file.moved_aside.name.startswith("bridge.db.corrupt-")
        assert s.file.moved_aside.read_bytes() == garbage
        assert s.writer.commit([rec(1)], []).records_inserted == 1
        # The connection that found the garbage is closed, not left for the collector.
        aside = s.file.moved_aside.resolve()
        held = [fd for fd in Path("/proc/self/fd").iterdir() if _points_to(fd, aside)]
        assert held == []
    finally:
        s.close()


def _points_to(fd: Path, target: Path) -> bool:
    try:
        return Path(os.readlink(fd)) == target
    except OSError:  # the directory's own descriptor, gone while listing
        return False


def test_two_corrupt_spools_in_the_same_second_are_both_kept(path: Path) -> None:
    """Moving aside never overwrites an earlier corrupt copy, even within the same second."""
    copies = []
    for seed in (3, 4):
        s = Spool(SpoolSettings(path, reserve_bytes=0))
        s.open()
        s.writer.commit([rec(i, n=50) for i in range(100)], [])
        s.close()
        raw = bytearray(path.read_bytes())
        raw[2 * 4096 :] = random.Random(seed).randbytes(len(raw) - 2 * 4096)
        path.write_bytes(bytes(raw))
        copies.append(bytes(raw))
        fresh = Spool(SpoolSettings(path, reserve_bytes=0), clock=FakeClock(NOW_S))
        fresh.open()
        fresh.close()
    kept = {p.read_bytes() for p in path.parent.glob("bridge.db.corrupt-*")}
    assert set(copies) <= kept


async def test_async_spool_runs_every_call_on_one_worker_thread(path: Path) -> None:
    """AsyncSpool runs open, calls and close on a single thread other than the event loop's."""
    seen: set[int] = set()

    def where() -> int:
        seen.add(threading.get_ident())
        return threading.get_ident()

    async with AsyncSpool(Spool(SpoolSettings(path, reserve_bytes=0))) as aspool:
        for _ in range(20):
            await aspool._run(where)
        result = await aspool.commit([rec(1)], [], [], [], forget_unacked=False)
        assert result.records_inserted == 1
        batches = await aspool.take_batches(4, 100, single_object=False, newest_first=False)
        assert [len(b.records) for b in batches] == [1]
        await aspool._run(where)
    assert len(seen) == 1
    assert threading.get_ident() not in seen
    assert aspool.file._db is None  # closed on exit


# -- opened beside its owner -------------------------------------------------------------------


def test_shared_open_sees_a_running_spool_and_the_owner_notices_its_writes(spool: Spool) -> None:
    """A tool opens the spool beside the locked owner; the owner picks up its requeue."""
    spool.writer.commit([rec(1)], [dead()])
    assert spool.file.external_changes() == 0
    tool = Spool(SpoolSettings(spool.file.path, reserve_bytes=0), clock=FakeClock(NOW_S))
    tool.open_shared()
    try:
        letter = tool.dead_letters.find(DeadLetterFilter())[0]
        tool.dead_letters.requeue([letter.id], [rec(7, n=3)])
    finally:
        tool.close()
    assert spool.file.external_changes() == 3
    assert spool.file.depth_points == 5
    assert spool.file.external_changes() == 0
    assert spool.dead_letters.count() == 0


def test_shared_open_of_a_missing_spool_names_the_path(tmp_path: Path) -> None:
    """No spool file: a clear error, and nothing is created."""
    missing = tmp_path / "nope.db"
    with pytest.raises(SpoolError, match="no spool at"):
        Spool(SpoolSettings(missing, reserve_bytes=0)).open_shared()
    assert not missing.exists()


# -- the disk reserve and free pages -------------------------------------------------------------


def test_reserve_is_real_disk_released_once_and_recreated(path: Path) -> None:
    """The reserve beside the spool occupies real blocks (not a sparse file), is given back
    once on demand, and comes back when asked while there is room."""
    s = Spool(SpoolSettings(path, reserve_bytes=1 << 20), clock=FakeClock(NOW_S))
    s.open()
    try:
        st = s.file.reserve.path.stat()
        assert st.st_size == 1 << 20
        assert st.st_blocks * 512 >= 1 << 20
        assert not s.file.reserve.missing
        assert s.file.reserve.release()
        assert s.file.reserve.missing
        assert not s.file.reserve.release()  # nothing left to give
        assert s.file.reserve.ensure()
        assert s.file.reserve.path.stat().st_size == 1 << 20
    finally:
        s.close()


def test_no_reserve_file_when_none_is_configured(spool: Spool) -> None:
    """A spool configured with reserve_bytes 0 (as tools and these tests open it) creates no
    reserve file and never reports one missing."""
    assert not spool.file.reserve.path.exists()
    assert not spool.file.reserve.missing


def test_new_spools_can_give_free_pages_back_to_a_full_disk(spool: Spool) -> None:
    """A new spool file is created with incremental auto-vacuum, so deleted points' pages can
    be returned to the filesystem when the disk fills. Its pages are 1 KiB (fewer bytes
    written per commit). The records are wide enough that the ids kept of delivered ones are a
    small part of what they took."""
    assert spool.file.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert spool.file.conn.execute("PRAGMA page_size").fetchone()[0] == 1024
    spool.writer.commit([rec(i, n=16) for i in range(2000)], [])
    size = spool.file.path.stat().st_size + Path(str(spool.file.path) + "-wal").stat().st_size
    spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 5000)])
    spool.file.reclaim()
    after = spool.file.path.stat().st_size + Path(str(spool.file.path) + "-wal").stat().st_size
    assert after < size / 2


def _pages_settlements_write(spool: Spool) -> Counter[str]:
    """Pages of the WAL that 16 settlements of 25 four-metric records (one request of 100
    points each, as delivery settles them) and the sweep of them out of the spool write, by
    b-tree."""
    spool.writer.commit([rec(i, n=4) for i in range(400)], [])
    census = PageCensus(spool.file)
    if not census.start():
        pytest.skip("this SQLite has no dbstat")
    records = spool.outbox.fetch(0, 400)
    for start in range(0, 400, 25):
        spool.outbox.delivered([r.seq for r in records[start : start + 25]])
        census.take("settle")
    assert len(spool.file.unswept) == 400  # fewer than a sweep waits for
    spool.outbox.sweep()
    census.take("settle")
    return census.pages["settle"]


def test_pages_a_settlement_frees_are_not_written_again(path: Path, spool: Spool) -> None:
    """Distributions build SQLite with SECURE_DELETE (Debian's, this machine's), which
    overwrites every page a delete empties with zeros, through the WAL. The spool asks for
    FAST, on every open: deleted rows are still zeroed inside pages written anyway, emptied
    pages go to the free list as they are. Against the same settlement with secure delete
    on, the settlement writes fewer pages of the free list, the same of the records."""
    assert spool.file.conn.execute("PRAGMA secure_delete").fetchone()[0] == 2  # FAST
    spool = reopen(spool)
    try:
        assert spool.file.conn.execute("PRAGMA secure_delete").fetchone()[0] == 2
        fast = _pages_settlements_write(spool)
    finally:
        spool.close()
    other = Spool(SpoolSettings(path.with_name("other.db")), clock=FakeClock(NOW_S))
    other.open()
    try:
        other.file.conn.execute("PRAGMA secure_delete=ON")
        zeroed = _pages_settlements_write(other)
    finally:
        other.close()
    assert fast[UNLISTED] + 10 < zeroed[UNLISTED]
    assert fast["records"] == zeroed["records"]


@pytest.mark.parametrize("page_size", [None, 4096])
def test_the_wal_is_checkpointed_after_half_the_reserve_whatever_the_page_size(
    path: Path, page_size: int | None
) -> None:
    """SQLite's automatic checkpoint counts pages: the spool sets it to half its disk reserve
    in bytes (here 8 MiB, so 4 MiB), for its own 1 KiB pages and for a file an older bridge
    made with 4 KiB pages. The WAL file keeps the size it reached before the checkpoint that
    restarts it."""
    if page_size is not None:
        path.parent.mkdir(parents=True)
        old = sqlite3.connect(path)
        old.execute(f"PRAGMA page_size={page_size}")
        old.execute("PRAGMA journal_mode=WAL")
        old.close()
    s = Spool(SpoolSettings(path, reserve_bytes=8 << 20), clock=FakeClock(NOW_S))
    s.open()
    try:
        assert s.file.conn.execute("PRAGMA page_size").fetchone()[0] == (page_size or 1024)
        for start in range(0, 12_000, 200):  # about 12 MiB through the WAL
            s.writer.commit([rec(i, n=16) for i in range(start, start + 200)], [])
            s.outbox.delivered([r.seq for r in s.outbox.fetch(0, 500)])
        wal = Path(f"{path}-wal").stat().st_size
        assert 3 << 20 < wal < 6 << 20
    finally:
        s.close()


@pytest.mark.parametrize(
    ("reserve", "expected"),
    [
        (0, 16 << 20),  # no reserve: the most
        (32 << 20, 16 << 20),  # the default reserve
        (64 << 20, 16 << 20),  # never more than 16 MiB
        (6 << 20, 3 << 20),
        (1 << 20, 1 << 20),  # never less than 1 MiB
    ],
)
def test_the_checkpoint_interval_follows_the_reserve(
    path: Path, reserve: int, expected: int
) -> None:
    """A checkpoint can grow the database file by what the WAL holds; on a full disk that
    comes out of the reserve given back, so the WAL holds at most half of it."""
    s = Spool(SpoolSettings(path, reserve_bytes=reserve), clock=FakeClock(NOW_S))
    s.open()
    try:
        pages = s.file.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert pages * 1024 == expected
    finally:
        s.close()
