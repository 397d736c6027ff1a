"""A token rotated while delivery is paused by 401s (reliability matrix rows 9 and 20), and
tokens that cannot be used (row 23): real mosquitto → a bridge (in-process with the token source
a deployment uses, or ``metriqo-bridge run`` as a subprocess) → a real local API that answers
401 until it sees the new token, judged by the no-loss oracle (:mod:`tests.support.oracle`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bridge.app import Bridge
from bridge.config.secrets import TokenSource
from bridge.lab.apiserver.faults import Faults
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.mapping.loader import load_mappings_text
from bridge.metrics import BridgeMetrics
from bridge.settings import Settings
from tests.support import TOKEN
from tests.support.harness import (
    TEST_MAPPINGS,
    BridgeProcess,
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    run_bridge,
)
from tests.support.oracle import (
    assert_exactly,
    wait_committed,
    wait_delivered,
    wait_drained,
    wait_for,
)

OLD_TOKEN = "mqk_old_0ld-r0tat3d-t0ken"


NEW_TOKEN = "mqk_new_n3w-r0tat3d-t0ken"


def _write_token(path: Path, token: str, how: str) -> None:
    """Install a token file the way an operator would."""
    if how == "overwrite":
        path.write_text(token + "\n", encoding="utf-8")  # keeps the file's 0600 mode
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)


@contextlib.asynccontextmanager
async def _running_bridge_with_token(
    settings: Settings, token: Callable[[], str], metrics: BridgeMetrics | None = None
) -> AsyncIterator[Bridge]:
    """Like `harness.running_bridge`, but with the token source a deployment uses."""
    bridge = Bridge(
        settings,
        load_mappings_text(TEST_MAPPINGS, "test-mappings.yaml"),
        token,
        metrics=metrics,
    )
    async with run_bridge(bridge) as running:
        yield running


@pytest.mark.parametrize("how", ["rename", "overwrite"])
async def test_token_rotated_during_a_401_pause_is_picked_up_without_restart(
    broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """401s pause delivery (data kept, nothing dead-lettered); writing the new token into
    api.token_file resumes it without a restart, and neither token shows in logs, metrics or
    readiness problems."""
    caplog.set_level(logging.DEBUG)
    n = 200
    start_ms = int(time.time() * 1000) - n
    messages = env_messages(n, start_ms)
    token_file = tmp_path / "token"
    _write_token(token_file, OLD_TOKEN, "rename")
    faults = Faults(unauthorized_until_token=NEW_TOKEN)
    async with LocalApi(TOKEN, rate_limit_per_minute=None, faults=faults) as api:
        settings = make_settings(
            broker.port, api.url, tmp_path / "spool.db", **{"api.token_file": str(token_file)}
        )
        async with _running_bridge_with_token(
            settings, TokenSource(settings.credentials)
        ) as bridge:
            await publish(broker.port, messages[: n // 2])
            await wait_for(
                lambda: metric(bridge, "metriqo_bridge_delivery_paused") == 1,
                what="delivery paused by the 401s",
            )
            await publish(broker.port, messages[n // 2 :], client_id="pub-2")  # keeps spooling
            await wait_committed(bridge, n)
            problems = bridge.problems()
            assert any(p.startswith("delivery paused") for p in problems), problems
            assert metric(bridge, "metriqo_bridge_spool_points") == 4 * n
            assert metric(bridge, "metriqo_bridge_points_delivered_total") == 0
            assert bridge.spool.dead_letters.count() == 0
            assert api.store.point_count() == 0
            _write_token(token_file, NEW_TOKEN, how)
            await wait_delivered(api, expected_env_points(n, start_ms))
            await wait_drained(bridge)
            assert metric(bridge, "metriqo_bridge_delivery_paused") == 0
            assert bridge.problems() == []
            assert bridge.spool.dead_letters.count() == 0
            exposition = generate_latest(bridge.metrics.registry).decode()
        requests = api.store.requests
    assert_exactly(delivered_points(api.store.points()), expected_env_points(n, start_ms))
    assert {r.authorization for r in requests} == {f"Bearer {OLD_TOKEN}", f"Bearer {NEW_TOKEN}"}
    assert all(r.status == 401 for r in requests if r.authorization == f"Bearer {OLD_TOKEN}")
    assert all(r.status == 201 for r in requests if r.authorization == f"Bearer {NEW_TOKEN}")
    assert "401" in caplog.text  # the pause was logged, so the logs were captured
    for secret in (OLD_TOKEN, NEW_TOKEN):
        assert secret not in caplog.text
        assert secret not in exposition
        assert not any(secret in p for p in problems)


async def test_rotated_token_file_fixed_by_chmod_is_picked_up(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """A rotated token file first refused for its mode (0644) is used once the operator runs
    the ``chmod 600`` the bridge's error message asks for."""
    n = 20
    start_ms = int(time.time() * 1000) - n
    token_file = tmp_path / "token"
    _write_token(token_file, OLD_TOKEN, "rename")
    faults = Faults(unauthorized_until_token=NEW_TOKEN)
    async with LocalApi(TOKEN, rate_limit_per_minute=None, faults=faults) as api:
        settings = make_settings(
            broker.port,
            api.url,
            tmp_path / "spool.db",
            **{"api.token_file": str(token_file), "stop_timeout_s": "1"},
        )
        async with _running_bridge_with_token(
            settings, TokenSource(settings.credentials)
        ) as bridge:
            await publish(broker.port, env_messages(n, start_ms))
            await wait_for(
                lambda: metric(bridge, "metriqo_bridge_delivery_paused") == 1,
                what="delivery paused by the 401s",
            )
            tmp = tmp_path / "token.new"
            tmp.write_text(NEW_TOKEN + "\n", encoding="utf-8")
            tmp.chmod(0o644)  # a default umask
            os.replace(tmp, token_file)
            seen = len(api.store.requests)
            await wait_for(lambda: len(api.store.requests) > seen, what="a retry after the rename")
            token_file.chmod(0o600)
            await wait_delivered(api, expected_env_points(n, start_ms), timeout=5)


def _labelled(text: str, sample: str) -> float:
    """The value of ``sample`` (name and labels, as exposed) in a /metrics text (NaN if absent)."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return float("nan")


def _scrape(proc: BridgeProcess) -> str:
    url = f"http://127.0.0.1:{proc.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text: str = r.read().decode()
    return text


async def _wait_stored(
    api: LocalApi, proc: BridgeProcess, want: set[tuple[str, str, int, float]]
) -> None:
    """Wait until the API holds ``want``; fail at once if the bridge exits."""
    deadline = time.monotonic() + 60
    while not want <= set(delivered_points(api.store.points())):
        assert proc.running, (
            f"the bridge exited with {proc.proc and proc.proc.returncode}:\n{proc.output()[-3000:]}"
        )
        assert time.monotonic() < deadline, "points not stored within 60 s"
        await asyncio.sleep(0.05)


async def test_a_rotated_token_file_of_two_lines_is_refused_and_the_bridge_keeps_running(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A token file rewritten with two lines used to be taken as the new token, and the next
    POST crashed ``metriqo-bridge run`` (exit 1, again at every restart). Now the re-read is
    refused: delivery goes on with the token in use, ``token_unusable_total{reason="reload"}``
    counts it, the log says why, and neither line of the file is ever shown."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    secrets.chmod(0o700)
    token_file = secrets / "token"
    _write_token(token_file, TOKEN, "rename")
    n = 200
    start_ms = int(time.time() * 1000) - n
    messages = env_messages(n, start_ms)
    second_line = "mqk_test_s3cond-l1ne-of-the-file"
    proc = BridgeProcess(broker.port, api.url, tmp_path / "bridge")
    try:
        proc.start({"METRIQO_BRIDGE_TOKEN_FILE": str(token_file)})
        await asyncio.to_thread(proc.wait_ready)
        await publish(broker.port, messages[: n // 2])
        await _wait_stored(api, proc, expected_env_points(n // 2, start_ms))
        _write_token(token_file, f"{TOKEN}\n{second_line}", "rename")
        await publish(broker.port, messages[n // 2 :], client_id="pub-2")
        await _wait_stored(api, proc, expected_env_points(n, start_ms))
        exposition = await asyncio.to_thread(_scrape, proc)
        assert proc.running
        assert proc.terminate() == 0
    finally:
        proc.close()  # fails if the token appeared in the output
    assert _labelled(exposition, 'metriqo_bridge_token_unusable_total{reason="reload"}') >= 1
    assert _labelled(exposition, "metriqo_bridge_delivery_paused") == 0
    assert_exactly(delivered_points(api.store.points()), expected_env_points(n, start_ms))
    assert {r.authorization for r in api.store.requests} == {f"Bearer {TOKEN}"}
    output = proc.output()
    assert "token file changed but is unusable; still using the previous token" in output
    assert "the token holds a line break (U+000A) inside it" in output
    assert second_line not in output


async def test_a_token_no_header_can_carry_pauses_delivery_instead_of_ending_the_bridge(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """The sender's own guard (the seam: the token callable yields a token with a line break,
    which the settings would have refused): aiohttp's ValueError used to end the bridge. Now
    delivery pauses with the reason on /readyz, ``token_unusable_total{reason="send"}`` counts,
    nothing reaches the API, and a usable token delivers every point exactly once."""
    n = 50
    start_ms = int(time.time() * 1000) - n
    current = {"token": TOKEN + "\nX-Injected: 1"}
    metrics = BridgeMetrics()
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with _running_bridge_with_token(settings, lambda: current["token"], metrics) as bridge:
        await publish(broker.port, env_messages(n, start_ms))
        await wait_for(
            lambda: metric(bridge, "metriqo_bridge_token_unusable_total", reason="send") >= 2,
            what="the unsendable token refused twice",
        )
        assert metric(bridge, "metriqo_bridge_delivery_paused") == 1
        problems = bridge.problems()
        assert any("the API token cannot be sent" in p for p in problems), problems
        assert api.store.requests == []
        current["token"] = TOKEN
        await wait_delivered(api, expected_env_points(n, start_ms))
        await wait_drained(bridge)
        assert metric(bridge, "metriqo_bridge_delivery_paused") == 0
    assert_exactly(delivered_points(api.store.points()), expected_env_points(n, start_ms))
