"""A token rotated while delivery is paused by 401s (reliability matrix rows 9 and 20): real
mosquitto → in-process bridge with the token source a deployment uses → a real local API that
answers 401 until it sees the new token, judged by the no-loss oracle
(:mod:`tests.support.oracle`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
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
from bridge.settings import Settings
from tests.support import TOKEN
from tests.support.harness import (
    TEST_MAPPINGS,
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
    settings: Settings, token: Callable[[], str]
) -> AsyncIterator[Bridge]:
    """Like `harness.running_bridge`, but with the token source a deployment uses."""
    bridge = Bridge(settings, load_mappings_text(TEST_MAPPINGS, "test-mappings.yaml"), token)
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
