"""The pure parts of the API client: what a status means (shared with the telemetry sender)
and the typed results parsed from the documented bodies, bad bodies included."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.api.http import answer_kind
from bridge.api.models import (
    AlertRule,
    format_time,
    parse_alert_created,
    parse_device_page,
    parse_series,
    parse_time,
)

T0 = datetime(2024, 11, 15, 8, 32, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "ok"),
        (201, "ok"),
        (429, "rate_limited"),
        (500, "server"),
        (503, "server"),
        (401, "auth"),
        (403, "auth"),
        (404, "not_found"),
        (301, "redirect"),
        (400, "refused"),
        (422, "refused"),
    ],
)
def test_answer_kind(status: int, kind: str) -> None:
    assert answer_kind(status) == kind


def test_the_documented_device_page_parses() -> None:
    page = parse_device_page(
        {
            "data": [
                {
                    "device_id": "sensor-gw-0417",
                    "label": "Gateway Floor 4",
                    "status": "online",
                    "last_seen": "2024-11-15T08:32:00Z",
                    "created_at": "2024-03-10T14:20:00Z",
                }
            ],
            "pagination": {"page": 1, "per_page": 10, "total": 47},
        }
    )
    [device] = page.devices
    assert device.label == "Gateway Floor 4"
    assert device.last_seen == T0
    assert (page.page, page.per_page, page.total, page.is_last) == (1, 10, 47, False)


@pytest.mark.parametrize(
    ("page", "per_page", "total", "rows", "last"),
    [(5, 10, 47, 7, True), (4, 10, 40, 10, True), (4, 10, 41, 10, False), (9, 10, 500, 0, True)],
)
def test_a_page_is_last_by_the_total_or_when_empty(
    page: int, per_page: int, total: int, rows: int, last: bool
) -> None:
    row = {"device_id": "d", "status": "online"}
    doc = {"data": [row] * rows, "pagination": {"page": page, "per_page": per_page, "total": total}}
    assert parse_device_page(doc).is_last is last


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ([], "body"),
        ({"pagination": {"page": 1, "per_page": 1, "total": 0}}, "body.data"),
        ({"data": []}, "body.pagination"),
        ({"data": [], "pagination": {"page": 1, "per_page": 1, "total": -1}}, "total"),
        (
            {"data": [{"status": "online"}], "pagination": {"page": 1, "per_page": 1, "total": 1}},
            "body.data[0].device_id",
        ),
        (
            {
                "data": [{"device_id": "d", "status": "online", "last_seen": "yesterday"}],
                "pagination": {"page": 1, "per_page": 1, "total": 1},
            },
            "body.data[0].last_seen",
        ),
    ],
)
def test_a_bad_device_page_names_the_field(doc: Any, where: str) -> None:
    with pytest.raises(ValueError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_device_page(doc)


def test_the_documented_series_parses_and_a_bad_bucket_is_refused() -> None:
    series = parse_series(
        {
            "device_id": "sensor-gw-0417",
            "metric": "cpu_temp",
            "interval": "1h",
            "data": [{"t": "2024-11-14T00:00:00Z", "avg": 58.2, "min": 54.1, "max": 63.8}],
        }
    )
    assert series.data[0].t == datetime(2024, 11, 14, tzinfo=UTC)
    assert (series.data[0].min, series.data[0].max) == (54.1, 63.8)
    with pytest.raises(ValueError, match=r"body.data\[0\].max"):
        parse_series(
            {
                "device_id": "d",
                "metric": "m",
                "data": [{"t": "2024-11-14T00:00:00Z", "avg": 1, "min": 1, "max": True}],
            }
        )


def test_the_documented_alert_answer_parses() -> None:
    created = parse_alert_created(
        {
            "id": "alert_xK7mQ2",
            "name": "High CPU Temperature",
            "status": "active",
            "created_at": "2024-11-15T09:10:00Z",
        }
    )
    assert created.id == "alert_xK7mQ2"
    assert created.created_at == datetime(2024, 11, 15, 9, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"body.id"):
        parse_alert_created({"name": "x", "status": "active"})


def test_an_alert_rule_is_the_documented_body() -> None:
    rule = AlertRule("High CPU Temperature", "sensor-gw-0417", "cpu_temp", "gt", 80, "https://x/h")
    assert rule.body() == {
        "name": "High CPU Temperature",
        "device_id": "sensor-gw-0417",
        "metric": "cpu_temp",
        "condition": "gt",
        "threshold": 80,
        "notify": {"type": "webhook", "url": "https://x/h"},
    }


@given(st.datetimes(timezones=st.just(UTC)))
def test_format_time_round_trips(when: datetime) -> None:
    assert parse_time(format_time(when)) == when


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="offset"):
        parse_time("2024-01-01T00:00:00")
