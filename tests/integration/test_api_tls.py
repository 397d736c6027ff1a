"""HTTPS to the Metriqo API: the server certificate is verified against the system CAs or
``api.ca_file``, a failed verification keeps everything in the spool, and plain http to a
non-loopback API is refused at start."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from tests.support import TOKEN
from tests.support.harness import (
    BridgeProcess,
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)
from tests.support.tls import (
    Pki,
    assert_no_secrets,
    log_text,
    status_pages,
)

EX_CONFIG = 78


@pytest.fixture
async def https_api(pki: Pki) -> AsyncIterator[LocalApi]:
    """The local API served over HTTPS with a certificate from the test CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server), str(pki.server_key))
    async with LocalApi(token=TOKEN, rate_limit_per_minute=None, ssl_context=ctx) as server:
        assert server.url.startswith("https://127.0.0.1:")
        yield server


async def test_https_with_the_ca_file_delivers(
    pki: Pki,
    broker: LocalBroker,
    https_api: LocalApi,
    tmp_path: Path,
    *,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """With api.ca_file naming the CA that signed the API's certificate, the bridge delivers
    over HTTPS and every request succeeds."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    settings = make_settings(
        broker.port, https_api.url, tmp_path / "spool.db", **{"api.ca_file": str(pki.ca)}
    )
    start_ms = int(time.time() * 1000)
    async with running_bridge(settings) as bridge:
        await publish(broker.port, env_messages(100, start_ms))
        await https_api.store.wait_for_points(400, 30)
        # The API stored the points before the bridge read its answer: wait for the count.
        async with asyncio.timeout(10):
            while metric(bridge, "metriqo_bridge_api_requests_total", status_class="2xx") < 1:
                await asyncio.sleep(0.02)
        assert metric(bridge, "metriqo_bridge_api_requests_total", status_class="error") == 0
        pages = await status_pages(bridge)
    assert set(delivered_points(https_api.store.points())) == expected_env_points(100, start_ms)
    out, err = capfd.readouterr()
    assert_no_secrets([log_text(caplog), out, err, *(b for _, b in pages.values())])


async def test_an_unverified_api_keeps_the_data_until_the_ca_file_is_given(
    pki: Pki,
    broker: LocalBroker,
    https_api: LocalApi,
    tmp_path: Path,
    *,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Without api.ca_file only the system CAs are trusted: every request fails certificate
    verification, is counted as status_class="error" and logged once, nothing reaches the API
    and nothing is lost; after a restart with api.ca_file everything is delivered."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    spool = tmp_path / "spool.db"
    start_ms = int(time.time() * 1000)
    # A short stop deadline: at stop the bridge tries to deliver what waits, which cannot work.
    unverified = make_settings(broker.port, https_api.url, spool, stop_timeout_s="1")
    async with running_bridge(unverified) as bridge:
        await publish(broker.port, env_messages(100, start_ms))
        async with asyncio.timeout(30):
            while (
                metric(bridge, "metriqo_bridge_api_requests_total", status_class="error") < 3
                or metric(bridge, "metriqo_bridge_messages_committed_total") < 100
            ):
                await asyncio.sleep(0.05)
        assert metric(bridge, "metriqo_bridge_api_requests_total", status_class="2xx") == 0
        assert metric(bridge, "metriqo_bridge_spool_points") == 400
        pages = await status_pages(bridge)
    assert https_api.store.requests == []  # the token never left before verification
    failures = [r for r in caplog.records if "certificate verify failed" in r.getMessage()]
    assert len(failures) == 1, "logged once per interval, not once per request"
    assert "API connection failed" in failures[0].getMessage()
    settings = make_settings(broker.port, https_api.url, spool, **{"api.ca_file": str(pki.ca)})
    async with running_bridge(settings) as bridge:
        await https_api.store.wait_for_points(400, 30)
        more = await status_pages(bridge)
    assert set(delivered_points(https_api.store.points())) == expected_env_points(100, start_ms)
    out, err = capfd.readouterr()
    outputs = [log_text(caplog), out, err, *(b for _, b in (*pages.values(), *more.values()))]
    assert_no_secrets(outputs)


async def test_plain_http_to_a_remote_api_is_refused_at_start(tmp_path: Path) -> None:
    """http:// to a non-loopback API would send the token in clear: the bridge exits 78 at
    start, naming api.base_url and the way out, without printing the token."""
    proc = BridgeProcess(free_port(), "http://metriqo.plant.invalid/api/v2", tmp_path / "bridge")
    try:
        proc.start()
        code = await asyncio.to_thread(proc.proc.wait, 15)  # type: ignore[union-attr]
    finally:
        proc.close()
    output = proc.output()
    assert code == EX_CONFIG, output
    assert "api.base_url" in output
    assert "api.allow_http" in output
    assert_no_secrets([output])


async def test_allow_http_lets_the_bridge_start(broker: LocalBroker, tmp_path: Path) -> None:
    """api.allow_http: true is the explicit opt-in that accepts http:// to a remote API."""
    proc = BridgeProcess(
        broker.port,
        "http://metriqo.plant.invalid/api/v2",
        tmp_path / "bridge",
        **{"api.allow_http": "true"},
    )
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        assert proc.terminate() == 0
    finally:
        proc.close()
    assert_no_secrets([proc.output()])
