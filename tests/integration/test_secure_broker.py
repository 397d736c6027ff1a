"""The shipped mosquitto/secure.conf and mosquitto/acl with the real bridge: mutual TLS and
password logins deliver, refused logins leave the bridge retrying and not ready, and the ACL
keeps the bridge's user read-only."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config.secrets import resolve_mqtt_password
from bridge.lab.apiserver.server import LocalApi
from bridge.mapping.loader import load_mappings
from bridge.mapping.mapper import Mapper
from bridge.settings import Settings
from tests.support import REPO
from tests.support.harness import (
    BridgeProcess,
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    running_bridge,
)
from tests.support.tls import (
    BRIDGE_USER,
    GATEWAY_USER,
    Pki,
    SecureBroker,
    TlsClient,
    assert_no_secrets,
    client_context,
    fetch,
    log_text,
    mtls_settings,
    password_file,
    reconnect_attempts,
    status_pages,
    tls_publish,
    wait_attempts,
)

BRIDGE_PW = "bridge-pw-Q8v2"  # recognisable values: every test greps the output for them
GATEWAY_PW = "gateway-pw-Z3k9"
NOT_AUTHORIZED = 0x87


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[SecureBroker]:
    """The shipped secure broker with the bridge's and the gateway's logins."""
    passwords = password_file(
        tmp_path / "passwd", {BRIDGE_USER: BRIDGE_PW, GATEWAY_USER: GATEWAY_PW}
    )
    with SecureBroker(tmp_path / "broker", pki, passwords) as b:
        yield b


def password_settings(pki: Pki, secret: Path) -> dict[str, str]:
    """Bridge settings for TLS with a username and a password file."""
    return {
        "mqtt.client_id": BRIDGE_USER,
        "mqtt.tls.enabled": "true",
        "mqtt.tls.ca_file": str(pki.ca),
        "mqtt.username": BRIDGE_USER,
        "mqtt.password_file": str(secret),
    }


def secret_file(path: Path, value: str) -> Path:
    """A 0600 file holding one secret, as an operator would create it."""
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


async def gateway_publish(
    broker: SecureBroker, pki: Pki, messages: list[tuple[str, bytes]]
) -> None:
    """The plant gateway publishes over the password listener; every PUBACK must be success."""
    codes = await tls_publish(
        broker.password_port,
        client_context(pki.ca),
        messages,
        username=GATEWAY_USER,
        password=GATEWAY_PW,
    )
    assert {c.value for c in codes} <= {0x00, 0x10}  # success, or no subscriber yet


async def test_client_certificate_delivers_a_burst(
    pki: Pki,
    broker: SecureBroker,
    api: LocalApi,
    tmp_path: Path,
    *,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Mutual TLS on 8883 (CN=metriqo-bridge is the ACL user): the bridge drains a burst that
    waited in its session, which also exercises reading TLS-buffered data from the loop."""
    caplog.set_level(logging.INFO, logger="bridge")
    settings = make_settings(broker.cert_port, api.url, tmp_path / "spool.db", **mtls_settings(pki))
    async with running_bridge(settings):
        pass  # creates the session
    n = 2000
    start_ms = int(time.time() * 1000) - n
    await gateway_publish(broker, pki, env_messages(n, start_ms))
    async with running_bridge(settings) as bridge:
        await api.store.wait_for_points(4 * n, 60)
        assert metric(bridge, "metriqo_bridge_mqtt_connects_total") == 1
        pages = await status_pages(bridge)
    assert pages["/readyz"][0] == 200
    assert set(delivered_points(api.store.points())) == expected_env_points(n, start_ms)
    assert f"u'{BRIDGE_USER}'" in broker.log()  # the certificate's CN became the username
    out, err = capfd.readouterr()
    outputs = [log_text(caplog), out, err, *(b for _, b in pages.values())]
    assert_no_secrets(outputs, GATEWAY_PW, BRIDGE_PW)


async def test_password_login_delivers(
    pki: Pki, broker: SecureBroker, api: LocalApi, tmp_path: Path
) -> None:
    """The bridge process logs in on 8884 with a username and a 0600 password file, delivers,
    and neither the password nor the API token appears in its output or status pages."""
    secret = secret_file(tmp_path / "mqtt-password", BRIDGE_PW)
    proc = BridgeProcess(
        broker.password_port,
        api.url,
        tmp_path / "bridge",
        **password_settings(pki, secret),
        log_level="DEBUG",
    )
    try:
        proc.start()
        await asyncio.to_thread(proc.wait_ready)
        start_ms = int(time.time() * 1000)
        await gateway_publish(broker, pki, env_messages(50, start_ms))
        await api.store.wait_for_points(200, 30)
        base = f"http://127.0.0.1:{proc.http_port}"
        pages = [await asyncio.to_thread(fetch, base + p) for p in ("/readyz", "/metrics")]
        assert pages[0][0] == 200
        assert proc.terminate() == 0
    finally:
        proc.close()
    assert set(delivered_points(api.store.points())) == expected_env_points(50, start_ms)
    assert f"u'{BRIDGE_USER}'" in broker.log()
    assert_no_secrets([proc.output(), *(b for _, b in pages)], BRIDGE_PW, GATEWAY_PW)


# How each refused login shows in the broker's log: proof that the broker refused it.
_REFUSALS = {
    "wrong-password": "not authorised",
    "anonymous": "not authorised",
    "unknown-certificate": "certificate verify failed",
    "no-certificate": "peer did not return a certificate",
}


def _refused_settings(
    case: str, pki: Pki, broker: SecureBroker, tmp_path: Path, api_url: str
) -> Settings:
    """Settings for one of the refused logins of `_REFUSALS`."""
    tls = {"mqtt.tls.enabled": "true", "mqtt.tls.ca_file": str(pki.ca)}
    if case == "wrong-password":
        wrong = secret_file(tmp_path / "pw", "not-" + BRIDGE_PW)
        port, overrides = broker.password_port, password_settings(pki, wrong)
    elif case == "anonymous":
        port, overrides = broker.password_port, tls
    elif case == "unknown-certificate":
        port, overrides = broker.cert_port, mtls_settings(pki)
        overrides["mqtt.tls.cert_file"] = str(pki.rogue_client)
        overrides["mqtt.tls.key_file"] = str(pki.rogue_client_key)
    else:
        port, overrides = broker.cert_port, tls
    return make_settings(port, api_url, tmp_path / "spool.db", **overrides)


@pytest.mark.parametrize("case", list(_REFUSALS))
async def test_a_refused_login_leaves_the_bridge_retrying_and_not_ready(
    case: str,
    pki: Pki,
    broker: SecureBroker,
    api: LocalApi,
    tmp_path: Path,
    *,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The broker refuses the login; the bridge does not crash, keeps retrying, never counts a
    connection and answers /readyz with 503 "mqtt not connected"."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    settings = _refused_settings(case, pki, broker, tmp_path, api.url)
    password = resolve_mqtt_password(settings.credentials)
    async with running_bridge(settings, connected=False, password=password) as bridge:
        await wait_attempts(caplog, 3)
        pages = await status_pages(bridge)
        assert metric(bridge, "metriqo_bridge_mqtt_connects_total") == 0
        assert metric(bridge, "metriqo_bridge_mqtt_connected") == 0
    # running_bridge re-raises if the bridge's task had failed: it was still running here.
    status, body = pages["/readyz"]
    assert status == 503
    assert "mqtt not connected" in body
    assert broker.log().count(_REFUSALS[case]) >= 3
    out, err = capfd.readouterr()
    outputs = [log_text(caplog), out, err, *(b for _, b in pages.values())]
    assert_no_secrets(outputs, BRIDGE_PW, "not-" + BRIDGE_PW, GATEWAY_PW)


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("wrong-password", "not authorized"),
        ("anonymous", "not authorized"),
        ("unknown-certificate", "certificate"),
        ("no-certificate", "certificate"),
    ],
)
async def test_a_refused_login_is_named_once_per_interval(
    case: str,
    named: str,
    *,
    pki: Pki,
    broker: SecureBroker,
    api: LocalApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """/readyz says why the broker refused, and the log says it once, not once per attempt."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    settings = _refused_settings(case, pki, broker, tmp_path, api.url)
    password = resolve_mqtt_password(settings.credentials)
    async with running_bridge(settings, connected=False, password=password) as bridge:
        await wait_attempts(caplog, 3)
        pages = await status_pages(bridge)
    assert reconnect_attempts(caplog) >= 3
    assert named in pages["/readyz"][1].lower()
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "bridge.mqtt.source"
    ]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert named in errors[0].getMessage().lower()


async def test_the_bridge_user_cannot_publish(pki: Pki, broker: SecureBroker) -> None:
    """The ACL keeps metriqo-bridge read-only on both listeners: mosquitto answers its QoS 1
    PUBLISH with PUBACK 0x87 (not authorized) and passes nothing on, while the gateway's
    messages reach a reader; the gateway in turn receives nothing."""

    def run() -> tuple[list[int], list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        ctx = client_context(pki.ca)
        cert_ctx = client_context(pki.ca, (pki.client, pki.client_key))
        reader = TlsClient(broker.cert_port, cert_ctx, "reader")
        gateway = TlsClient(broker.password_port, ctx, "gw", GATEWAY_USER, GATEWAY_PW)
        codes = []
        try:
            reader.client.subscribe("plant/#", qos=1)
            gateway.client.subscribe("plant/#", qos=1)
            reader.wait(lambda: len(reader.subacks) == 1, "SUBACK")
            gateway.wait(lambda: len(gateway.subacks) == 1, "SUBACK")
            for port, cctx, login in (
                (broker.password_port, ctx, {"username": BRIDGE_USER, "password": BRIDGE_PW}),
                (broker.cert_port, cert_ctx, {}),
            ):
                writer = TlsClient(port, cctx, f"writer-{port}", **login)
                try:
                    codes += [c.value for c in writer.publish_all([("plant/x/y/env", b"forged")])]
                finally:
                    writer.close()
            # Published after the forged messages: once it arrives, they would have too.
            gateway.publish_all([("plant/x/y/env", b"genuine")])
            reader.wait(lambda: (("plant/x/y/env", b"genuine")) in reader.received, "message")
            return codes, reader.received, gateway.received
        finally:
            reader.close()
            gateway.close()

    codes, read, gateway_read = await asyncio.to_thread(run)
    assert codes == [NOT_AUTHORIZED, NOT_AUTHORIZED]
    assert read == [("plant/x/y/env", b"genuine")]
    assert gateway_read == []


async def test_the_acl_lets_the_bridge_read_every_shipped_mapping(
    pki: Pki, broker: SecureBroker
) -> None:
    """Every filter of the shipped topic-mappings.yaml is writable by the gateway and readable
    by metriqo-bridge under the shipped ACL: a message on each reaches the bridge's user.
    (mosquitto grants a subscription its ACL does not cover and then delivers nothing, so only
    a delivered message proves access.)"""
    filters = Mapper(load_mappings(REPO / "topic-mappings.yaml")).subscriptions
    topics = [
        "/".join("x" if level in ("+", "#") else level for level in f.split("/")) for f in filters
    ]

    def run() -> list[tuple[str, bytes]]:
        cert_ctx = client_context(pki.ca, (pki.client, pki.client_key))
        reader = TlsClient(broker.cert_port, cert_ctx, "reader")
        try:
            reader.client.subscribe([(f, 1) for f in filters])
            reader.wait(lambda: len(reader.subacks) == len(filters), "SUBACK")
            gateway = TlsClient(
                broker.password_port, client_context(pki.ca), "gw", GATEWAY_USER, GATEWAY_PW
            )
            try:
                gateway.publish_all([(t, b"1") for t in topics])
            finally:
                gateway.close()
            want = set(topics)
            reader.wait(lambda: want <= {t for t, _ in reader.received}, "message on each topic")
            return reader.received
        finally:
            reader.close()

    received = await asyncio.to_thread(run)
    assert {t for t, _ in received} == set(topics)


@pytest.mark.parametrize("highest", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_1_2_and_1_3_are_accepted(
    highest: ssl.TLSVersion, pki: Pki, broker: SecureBroker
) -> None:
    """tls_version tlsv1.2 is a minimum: a client limited to TLS 1.2 still connects, and one
    that offers 1.3 gets 1.3."""

    def run() -> str | None:
        ctx = client_context(pki.ca, (pki.client, pki.client_key), max_version=highest)
        client = TlsClient(broker.cert_port, ctx, f"tls-{highest.name}")
        try:
            assert client.connack is not None
            assert not client.connack.is_failure
            sock = client.client.socket()
            assert isinstance(sock, ssl.SSLSocket)
            return sock.version()
        finally:
            client.close()

    version = await asyncio.to_thread(run)
    assert version == highest.name.replace("v1_", "v1.")
