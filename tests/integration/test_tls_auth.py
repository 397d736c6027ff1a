"""TLS to the broker from the bridge's side: the broker's certificate is verified by default.

The PKI, the secure broker and the TLS clients the TLS tests share are in
:mod:`tests.support.tls`."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from bridge.lab.apiserver.server import LocalApi
from tests.support.harness import (
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    running_bridge,
)
from tests.support.tls import (
    GATEWAY_USER,
    Pki,
    SecureBroker,
    assert_no_secrets,
    client_context,
    log_text,
    mtls_settings,
    password_file,
    status_pages,
    tls_publish,
    wait_attempts,
)


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    """A password file with the gateway's login."""
    return password_file(tmp_path / "passwd", {GATEWAY_USER: "gateway-pw-7"})


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown-ca", "self-signed certificate in certificate chain"),
        ("wrong-host", "IP address mismatch"),
    ],
)
async def test_an_unverifiable_broker_is_refused(
    case: str,
    reason: str,
    *,
    pki: Pki,
    passwords: Path,
    api: LocalApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Verification is on by default: a broker certificate from an untrusted CA, or for another
    host, is refused; the bridge is not ready, names the reason and keeps retrying."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    wrong = (pki.wrong_host, pki.wrong_host_key) if case == "wrong-host" else None
    ca = pki.rogue_ca if case == "unknown-ca" else pki.ca
    with SecureBroker(tmp_path / "broker", pki, passwords, server_cert=wrong) as broker:
        overrides = mtls_settings(pki)
        overrides["mqtt.tls.ca_file"] = str(ca)
        settings = make_settings(broker.cert_port, api.url, tmp_path / "spool.db", **overrides)
        async with running_bridge(settings, connected=False) as bridge:
            await wait_attempts(caplog, 3)
            pages = await status_pages(bridge)
            status, body = pages["/readyz"]
            assert status == 503
            assert "CERTIFICATE_VERIFY_FAILED" in body
            assert reason in body
            assert metric(bridge, "metriqo_bridge_mqtt_connects_total") == 0
        warnings = [r for r in caplog.records if "CERTIFICATE_VERIFY_FAILED" in r.getMessage()]
        assert len(warnings) == 1, "logged once per interval, not once per attempt"
    out, err = capfd.readouterr()
    assert_no_secrets([log_text(caplog), out, err, *(b for _, b in pages.values())])


async def test_verify_false_is_the_only_way_past_an_unverifiable_broker(
    *,
    pki: Pki,
    passwords: Path,
    api: LocalApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """With mqtt.tls.verify: false the bridge connects to a broker whose certificate names
    another host and is signed by a CA it was not given, and delivers."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    wrong = (pki.wrong_host, pki.wrong_host_key)
    with SecureBroker(tmp_path / "broker", pki, passwords, server_cert=wrong) as broker:
        overrides = mtls_settings(pki)
        overrides["mqtt.tls.ca_file"] = str(pki.rogue_ca)
        overrides["mqtt.tls.verify"] = "false"
        settings = make_settings(broker.cert_port, api.url, tmp_path / "spool.db", **overrides)
        async with running_bridge(settings) as bridge:
            start_ms = int(time.time() * 1000)
            # The gateway verifies the broker properly: its CA names the plant's CA.
            ctx = client_context(pki.ca)
            ctx.check_hostname = False  # the certificate is for broker.plant.invalid
            await tls_publish(
                broker.password_port,
                ctx,
                env_messages(10, start_ms),
                username=GATEWAY_USER,
                password="gateway-pw-7",
            )
            await api.store.wait_for_points(40, 30)
            assert metric(bridge, "metriqo_bridge_mqtt_connects_total") == 1
            pages = await status_pages(bridge)
    assert set(delivered_points(api.store.points())) == expected_env_points(10, start_ms)
    out, err = capfd.readouterr()
    assert_no_secrets([log_text(caplog), out, err, *(b for _, b in pages.values())], "gateway-pw-7")


async def test_verify_false_is_logged_as_a_warning(
    pki: Pki, passwords: Path, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Turning verification off is said loudly at start: it lets anyone impersonate the broker."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    with SecureBroker(tmp_path / "broker", pki, passwords) as broker:
        overrides = mtls_settings(pki)
        overrides["mqtt.tls.verify"] = "false"
        settings = make_settings(broker.cert_port, api.url, tmp_path / "spool.db", **overrides)
        async with running_bridge(settings):
            pass
    warned = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "mqtt.tls.verify" in r.getMessage()
    ]
    assert warned
