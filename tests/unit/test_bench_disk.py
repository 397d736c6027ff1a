"""``bench disk``: the spool's bytes per point in a live flow and the census of its pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.cli.main import main
from bridge.lab.bench.disk_mode import GROUP, flow
from bridge.spool.census import PageCensus
from bridge.spool.store import Spool
from tests.support.spool import rec


def test_the_flow_spans_the_devices_and_seconds_asked_for() -> None:
    groups = flow(1000, 40, 600.0)
    records = [r for g in groups for r in g]
    assert len(records) == 1000
    assert all(len(g) <= GROUP for g in groups)
    assert len({r.device_id for r in records}) == 40
    assert len({r.record_id for r in records}) == 1000
    span = records[-1].ts_us - records[0].ts_us
    assert 599_000_000 <= span <= 600_000_000


def test_the_census_gives_each_page_a_commit_wrote_to_its_table(spool: Spool) -> None:
    """A commit writes pages of the records table and its id index, and of the header; a
    settlement those of the settled records, their sweep those of the delivered ids. Pages per
    transaction are averaged by kind."""
    census = PageCensus(spool.file)
    assert census.start()
    spool.writer.commit([rec(i, n=4) for i in range(40)], [])
    census.take("commit")
    spool.outbox.delivered([r.seq for r in spool.outbox.fetch(0, 100)])
    census.take("settle")
    spool.outbox.sweep()
    census.take("sweep")
    found = census.per_transaction()
    assert {"records", "sqlite_autoindex_records_1", "sqlite_schema"} <= found["commit"].keys()
    assert "settled" in found["settle"]
    assert {"sqlite_autoindex_delivered_ids_1", "settled"} <= found["sweep"].keys()
    assert "sqlite_autoindex_delivered_ids_1" not in found["commit"].keys() | found["settle"]
    assert census.transactions == {"commit": 1, "settle": 1, "sweep": 1}


def test_bench_disk_accounts_for_every_point_and_reports_the_census(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    args = ["bench", "disk", "--messages", "3000", "--sensors", "50", "--span-seconds", "300"]
    assert main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "OK: every point committed and settled once" in printed
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["points"] == 12000
    assert report["write_bytes"] > 0
    assert report["bytes_per_point"] > 0
    assert report["transactions"]["commit"] == len(flow(3000, 50, 300.0)) // 3
    assert report["transactions"]["settle"] >= 1000 * 4 // 100
    assert sum(report["census"]["settle"].values()) > 1
    assert [t["name"] for t in report["targets"]] == ["spool bytes written per point, live flow"]
