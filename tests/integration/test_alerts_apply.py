"""``metriqo-bridge alerts plan|apply`` against the local API over real HTTP: what plan shows,
apply creating each alert once (and nothing the second time), drift for a changed and a removed
entry, the alerts endpoint's 429 honoured, a crash between Metriqo's 201 and the ledger reported
on the next run instead of a duplicate, and the whole loop: a mapping file with rules and
alerts → apply → the bridge delivers telemetry that crosses the threshold → the local API calls
the webhook."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from bridge.api.alert_apply import ONE_ATTEMPT, apply
from bridge.api.alert_ledger import Ledger, plan
from bridge.api.client import ApiClient, Budgets
from bridge.cli.main import main
from bridge.lab.apiserver.ratelimits import EndpointLimits
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.lab.webhook import WebhookReceiver
from bridge.settings import SenderSettings
from tests.support import TOKEN
from tests.support.clock import FakeClock
from tests.support.harness import make_settings, publish, running_bridge

WAIT = 30.0  # generous: only a bug makes loopback requests take this long
UNLIMITED = EndpointLimits(telemetry=None, devices=None, metrics=None, alerts=None)

RULES = """version: 1
rules:
  - name: line-env
    topic: plant/{line}/env
    device_id: "{line}"
    metrics:
      temp: temperature
"""


def alerts_yaml(hook: str, threshold: float = 30, *, with_cold: bool = True) -> str:
    text = RULES + (
        "alerts:\n"
        "  - name: Hot line\n"
        "    device: line-1\n"
        "    metric: temp\n"
        '    condition: ">"\n'
        f"    threshold: {threshold}\n"
        f"    notify: {hook}\n"
    )
    if with_cold:
        text += (
            "  - name: Cold\n"
            "    device: [line-1, line-2]\n"
            "    metric: temp\n"
            "    condition: lte\n"
            "    threshold: 2\n"
            f"    notify: {hook}\n"
        )
    return text


class Cli:
    """``metriqo-bridge alerts …`` with one mapping file, state directory and API."""

    def __init__(self, tmp_path: Path, api_url: str) -> None:
        self.file = tmp_path / "topic-mappings.yaml"
        self.state = tmp_path / "state"
        token = tmp_path / "token"
        token.write_text(TOKEN + "\n", encoding="utf-8")
        token.chmod(0o600)
        self.common = [
            "--mapping-file",
            str(self.file),
            "--state-dir",
            str(self.state),
            "--api-base-url",
            api_url,
            "--api-token-file",
            str(token),
        ]

    async def __call__(self, verb: str, *extra: str) -> int:
        # A worker thread: the local API keeps serving on this test's event loop.
        return await asyncio.to_thread(main, ["alerts", verb, *extra, *self.common])

    def ledger(self) -> dict[str, dict[str, object]]:
        doc = orjson.loads((self.state / "alerts-ledger.json").read_bytes())
        alerts: dict[str, dict[str, object]] = doc["alerts"]
        return alerts


@pytest.fixture
async def open_api() -> AsyncIterator[LocalApi]:
    async with LocalApi(TOKEN, limits=UNLIMITED) as server:
        yield server


async def test_plan_then_apply_creates_each_alert_once_and_again_nothing(
    open_api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(tmp_path, open_api.url)
    cli.file.write_text(alerts_yaml("http://127.0.0.1:9/hook"), encoding="utf-8")
    assert await cli("plan") == 0
    out = capsys.readouterr().out
    assert "+ create 'Hot line': temp > 30.0 on line-1, notify http://127.0.0.1:9/…" in out
    assert "+ create 'Cold (line-1)': temp <= 2.0 on line-1" in out
    assert "+ create 'Cold (line-2)': temp <= 2.0 on line-2" in out
    assert "plan: 3 to create, 0 unchanged, 0 need(s) action" in out
    assert open_api.store.alerts.alerts == []  # plan sends nothing

    assert await cli("apply") == 0
    out = capsys.readouterr().out
    stored = open_api.store.alerts.alerts
    assert sorted(a.spec.name for a in stored) == ["Cold (line-1)", "Cold (line-2)", "Hot line"]
    hot = next(a for a in stored if a.spec.name == "Hot line")
    assert (hot.spec.device_id, hot.spec.condition, hot.spec.threshold) == ("line-1", "gt", 30)
    assert f"created {hot.id} 'Hot line'" in out
    assert "apply: 3 of 3 created" in out
    ledger = cli.ledger()
    assert {name: e["id"] for name, e in ledger.items()} == {a.spec.name: a.id for a in stored}
    assert all(e["state"] == "created" for e in ledger.values())

    assert await cli("apply") == 0
    out = capsys.readouterr().out
    assert "apply: nothing to create" in out
    assert f"= 'Hot line' exists as {hot.id}" in out
    assert len(open_api.store.alerts.alerts) == 3  # nothing created the second time
    assert TOKEN not in out


async def test_a_changed_and_a_removed_entry_are_drift_with_the_dashboard_steps(
    open_api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(tmp_path, open_api.url)
    cli.file.write_text(alerts_yaml("http://127.0.0.1:9/hook"), encoding="utf-8")
    assert await cli("apply") == 0
    ids = {a.spec.name: a.id for a in open_api.store.alerts.alerts}
    capsys.readouterr()
    # Hot line's threshold changes; Cold (both devices) is removed from the file.
    cli.file.write_text(alerts_yaml("http://127.0.0.1:9/hook", 35, with_cold=False), "utf-8")
    assert await cli("plan") == 1
    out = capsys.readouterr().out
    hot = ids["Hot line"]
    assert f"! 'Hot line' ({hot}) differs from the file: threshold 30.0 → 35.0" in out
    assert (
        f"delete alert {hot} 'Hot line' in the Metriqo dashboard, then run "
        "`metriqo-bridge alerts forget 'Hot line'` and `metriqo-bridge alerts apply`; the new "
        "version will be created as a new alert" in out
    )
    cold = ids["Cold (line-2)"]
    assert f"! 'Cold (line-2)' ({cold}) is no longer in the file" in out
    assert (
        f"delete alert {cold} 'Cold (line-2)' in the Metriqo dashboard, then run "
        "`metriqo-bridge alerts forget 'Cold (line-2)'`" in out
    )
    # apply cannot fix drift: it creates nothing and says so.
    assert await cli("apply") == 1
    assert len(open_api.store.alerts.alerts) == 3
    # The user deleted them in the dashboard and says so; apply creates the new version.
    assert await cli("forget", "Hot line", "Cold (line-1)", "Cold (line-2)") == 0
    assert await cli("apply") == 0
    newest = open_api.store.alerts.alerts[-1]
    assert (newest.spec.name, newest.spec.threshold) == ("Hot line", 35)
    assert cli.ledger()["Hot line"]["id"] == newest.id != hot
    assert set(cli.ledger()) == {"Hot line"}


async def test_an_invalid_webhook_stops_with_78_naming_file_and_line(
    open_api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(tmp_path, open_api.url)
    cli.file.write_text(alerts_yaml("http://hooks.example.com/x"), encoding="utf-8")
    assert await cli("apply") == 78
    err = capsys.readouterr().err
    assert (
        f"{cli.file}:14: alerts[0].notify: webhook 'http://hooks.example.com/x' must use https"
        in err
    )
    assert open_api.store.alerts.alerts == []


async def test_a_429_at_the_alerts_limit_is_waited_out_and_nothing_is_duplicated(
    tmp_path: Path,
) -> None:
    """Two alerts per window: the third request meets a 429 and is sent again no sooner than
    its Retry-After (server and client share one fake clock, so a busy machine cannot change
    the outcome); every alert is created exactly once and recorded."""
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    limits = EndpointLimits(telemetry=None, devices=None, metrics=None, alerts=2)
    (tmp_path / "m.yaml").write_text(alerts_yaml("http://127.0.0.1:9/hook"), encoding="utf-8")
    from bridge.mapping.loader import load_mapping_alerts

    _rules, desired, _ = load_mapping_alerts(tmp_path / "m.yaml")
    ledger = Ledger(tmp_path / "alerts-ledger.json")
    async with LocalApi(TOKEN, clock=clock, limits=limits) as server:
        budgets = Budgets(alerts=6000)  # faster than the server allows: provokes the 429
        retry = ONE_ATTEMPT  # as the command does: apply itself sends a 429'd alert again
        settings = SenderSettings(base_url=server.url)
        async with (
            asyncio.timeout(WAIT),
            ApiClient(
                settings, lambda: TOKEN, budgets=budgets, retry=retry, clock=clock, sleep=sleep
            ) as api,
        ):
            result = await apply(plan([d.rule for d in desired], ledger), api, ledger)
        calls = [c for c in server.store.calls if c.endpoint == "alerts"]
        stored = server.store.alerts.alerts
    assert result.error is None
    assert [c.status for c in calls] == [201, 201, 429, 201]
    assert api.stats["alerts"].rate_limited == 1
    retry_after = calls[2].retry_after
    assert retry_after is not None
    assert retry_after >= 59
    assert calls[3].received_at >= calls[2].received_at + retry_after
    assert sorted(a.spec.name for a in stored) == ["Cold (line-1)", "Cold (line-2)", "Hot line"]
    assert {e.name: e.id for e in Ledger.load(ledger.path).entries.values()} == {
        a.spec.name: a.id for a in stored
    }


async def test_a_crash_between_the_201_and_the_ledger_is_reported_not_duplicated(
    open_api: LocalApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command is killed (SIGKILL, by the failpoint) right after Metriqo created the second
    alert: the next plan says that one may exist, the next apply creates only the third, and
    after `adopt` with the id the dashboard shows, everything is recorded once."""
    cli = Cli(tmp_path, open_api.url)
    cli.file.write_text(alerts_yaml("http://127.0.0.1:9/hook"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIQO_BRIDGE_")}
    env["METRIQO_BRIDGE_FAILPOINTS"] = "alerts_after_create_before_ledger:crash@2"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "alerts", "apply", *cli.common,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(WAIT):
        _, err = await proc.communicate()
    assert proc.returncode == -9, err.decode()
    stored = open_api.store.alerts.alerts
    assert [a.spec.name for a in stored] == ["Hot line", "Cold (line-1)"]
    assert {n: e["state"] for n, e in cli.ledger().items()} == {
        "Hot line": "created",
        "Cold (line-1)": "intent",
    }

    assert await cli("plan") == 1
    out = capsys.readouterr().out
    assert "? 'Cold (line-1)' was sent at" in out
    assert "it may exist in Metriqo" in out
    assert "`metriqo-bridge alerts adopt 'Cold (line-1)' ALERT_ID`" in out
    assert "+ create 'Cold (line-2)'" in out

    assert await cli("apply") == 1  # creates the third; the unsure one still needs a look
    names = [a.spec.name for a in open_api.store.alerts.alerts]
    assert names == ["Hot line", "Cold (line-1)", "Cold (line-2)"]  # no second Cold (line-1)

    assert await cli("adopt", "Cold (line-1)", stored[1].id) == 0
    assert await cli("apply") == 0
    assert len(open_api.store.alerts.alerts) == 3
    ledger = cli.ledger()
    assert {n: e["id"] for n, e in ledger.items()} == {
        a.spec.name: a.id for a in open_api.store.alerts.alerts
    }


async def test_applied_alert_fires_on_the_webhook_when_the_bridge_delivers_a_crossing(
    broker: LocalBroker, open_api: LocalApi, tmp_path: Path
) -> None:
    """The whole loop: one mapping file holds the rule and the alert; apply creates the alert;
    the bridge maps MQTT messages with that same file and delivers them; the local API sees
    line-1's temperature cross 30 and calls the webhook."""
    async with WebhookReceiver() as hook:
        cli = Cli(tmp_path, open_api.url)
        text = alerts_yaml(hook.url)
        cli.file.write_text(text, encoding="utf-8")
        assert await cli("apply") == 0
        hot = next(a for a in open_api.store.alerts.alerts if a.spec.name == "Hot line")
        settings = make_settings(broker.port, open_api.url, tmp_path / "spool.db")
        async with running_bridge(settings, text):
            await publish(
                broker.port,
                [
                    ("plant/line-1/env", b'{"temperature": 25}'),
                    ("plant/line-2/env", b'{"temperature": 45}'),  # no alert for line-2 > 30
                    ("plant/line-1/env", b'{"temperature": 31.5}'),
                ],
            )
            await hook.wait_for(1, WAIT)
            await open_api.store.wait_for_points(3, WAIT)
        notifier = open_api.notifier
        await _until(lambda: notifier.sent + notifier.failed == notifier.fired)
    assert notifier.fired == 1
    [call] = hook.received
    assert (call["alert_id"], call["device_id"], call["metric"], call["value"]) == (
        hot.id,
        "line-1",
        "temp",
        31.5,
    )


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_500_is_not_sent_again_and_is_reported_as_possibly_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 500 may come after Metriqo stored the alert (a proxy timing out, a crash after the
    commit): the command sends that alert once only, keeps its intent, exits 69, and the next
    plan says it may exist. A server that answers every POST with 500 counts the attempts."""
    posts: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        posts.append(request.path)
        return web.json_response({"error": "internal", "message": "oops"}, status=500)

    app = web.Application()
    app.router.add_post("/api/v2/alerts", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        cli = Cli(tmp_path, f"http://127.0.0.1:{runner.addresses[0][1]}/api/v2")
        cli.file.write_text(alerts_yaml("http://127.0.0.1:9/hook"), encoding="utf-8")
        assert await cli("apply") == 69
        assert posts == ["/api/v2/alerts"]  # once: a second POST could make a duplicate
        assert {n: e["state"] for n, e in cli.ledger().items()} == {"Hot line": "intent"}
        capsys.readouterr()
        assert await cli("plan") == 1
        assert "? 'Hot line' was sent at" in capsys.readouterr().out
    finally:
        await runner.cleanup()
