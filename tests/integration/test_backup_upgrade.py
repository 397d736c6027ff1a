"""The spool's backup and upgrade story: `backup` copies a running bridge's spool consistently
and the copy restores every waiting point; a spool from a newer version is refused untouched."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import time
from pathlib import Path

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from bridge.spool.schema import SCHEMA_VERSION
from tests.support.harness import (
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    run_cli,
    running_bridge,
)


def _waiting_points(path: Path) -> int:
    # closing(): sqlite3's own 'with' ends the transaction but leaves the connection open
    # (Python 3.13+ warns when the collector finds it, in whichever test runs then).
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(
            db.execute(
                "SELECT COALESCE(SUM(n), 0) FROM records "
                "WHERE seq NOT IN (SELECT seq FROM settled)"  # delivered, not swept out yet
            ).fetchone()[0]
        )


async def test_backup_beside_a_running_bridge_restores_every_waiting_point(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """While the API is unreachable and points wait, `backup` copies the live spool (the bridge
    keeps committing during the copy). A bridge started on the copy delivers exactly the points
    that waited when the copy was taken."""
    n = 400
    start_ms = int(time.time() * 1000) - n
    messages = env_messages(n, start_ms)
    spool = tmp_path / "spool.db"
    down = f"http://127.0.0.1:{free_port()}/api/v2"  # nothing listens: an outage
    settings = make_settings(broker.port, down, spool)
    dest = tmp_path / "backups" / "spool-copy.db"
    dest.parent.mkdir()
    async with running_bridge(settings) as bridge:
        await publish(broker.port, messages[: n // 2], client_id="pub-1")
        while metric(bridge, "metriqo_bridge_spool_points") < 4 * (n // 2):
            await asyncio.sleep(0.05)
        # The second half arrives while the copy is taken: the copy holds a consistent state.
        second = asyncio.create_task(publish(broker.port, messages[n // 2 :], client_id="pub-2"))
        result = await asyncio.to_thread(run_cli, "backup", str(dest), "--spool-path", str(spool))
        await second
        while metric(bridge, "metriqo_bridge_spool_points") < 4 * n:
            await asyncio.sleep(0.05)
    assert result.returncode == 0, result.stderr
    copied = _waiting_points(dest)
    assert copied % 4 == 0
    assert 4 * (n // 2) <= copied <= 4 * n
    assert f"{copied} waiting point(s)" in result.stdout
    assert f"layout version {SCHEMA_VERSION}" in result.stdout
    assert not dest.with_name(dest.name + ".partial").exists()
    # A second backup to the same file needs --force.
    again = run_cli("backup", str(dest), "--spool-path", str(spool))
    assert again.returncode == 2
    assert "--force" in again.stderr

    restored = tmp_path / "restored.db"
    restored.write_bytes(dest.read_bytes())
    async with running_bridge(make_settings(broker.port, api.url, restored)):
        await api.store.wait_for_points(copied, 30)
        await asyncio.sleep(0.5)  # nothing more may arrive
    got = delivered_points(api.store.points())
    assert len(got) == copied
    assert set(got) <= expected_env_points(n, start_ms)


def test_backup_without_a_spool_exits_66(tmp_path: Path) -> None:
    result = run_cli("backup", str(tmp_path / "x.db"), "--spool-path", str(tmp_path / "none.db"))
    assert result.returncode == 66
    assert "no spool at" in result.stderr


async def test_a_spool_from_a_newer_version_is_refused_untouched(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """After a downgrade, the older bridge exits 78 naming the layout versions and leaves the
    file byte for byte as it was (no migration, no move-aside); an older spool without a
    version is adopted as layout 1."""
    spool = tmp_path / "spool.db"
    async with running_bridge(make_settings(broker.port, api.url, spool)):
        pass
    db = sqlite3.connect(spool)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()  # the last close checkpoints the WAL into the file
    before = hashlib.sha256(spool.read_bytes()).hexdigest()
    result = run_cli(
        "run", "--spool-path", str(spool), "--mqtt-port", str(broker.port),
        "--api-base-url", api.url, "--http-port", "0", "--set", "api.token=t",
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert f"layout version {SCHEMA_VERSION + 1}" in result.stderr
    assert "left untouched" in result.stderr
    assert hashlib.sha256(spool.read_bytes()).hexdigest() == before
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("spool.db")) == [
        "spool.db",
        "spool.db.lock",
        "spool.db.reserve",
    ]  # not moved aside

    db = sqlite3.connect(spool)
    db.execute("PRAGMA user_version=0")  # as written before versions were recorded
    db.close()
    async with running_bridge(make_settings(broker.port, api.url, spool)):
        pass
    with contextlib.closing(sqlite3.connect(spool)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
