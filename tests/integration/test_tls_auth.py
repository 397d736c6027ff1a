"""Broker connections with TLS + client certificate, and with username/password."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bridge.apiserver import LocalApi
from bridge.broker import LocalBroker, free_port
from tests.integration.harness import (
    Publisher,
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    running_bridge,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path / "pki"
    d.mkdir()
    p = {
        n: d / n
        for n in (
            "ca.key",
            "ca.pem",
            "srv.key",
            "srv.csr",
            "srv.pem",
            "cli.key",
            "cli.csr",
            "cli.pem",
            "san.ext",
        )
    }
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(p["ca.key"]),
        "-out",
        str(p["ca.pem"]),
    )
    p["san.ext"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    for who, cn in (("srv", "127.0.0.1"), ("cli", "bridge-under-test")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            str(p[f"{who}.key"]),
            "-out",
            str(p[f"{who}.csr"]),
        )
        extra = ["-extfile", str(p["san.ext"])] if who == "srv" else []
        _openssl(
            "x509",
            "-req",
            "-in",
            str(p[f"{who}.csr"]),
            "-CA",
            str(p["ca.pem"]),
            "-CAkey",
            str(p["ca.key"]),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            str(p[f"{who}.pem"]),
            *extra,
        )
    for key in ("srv.key", "cli.key"):
        p[key].chmod(0o600)
    return p


async def test_tls_with_client_certificate_delivers_a_burst(
    certs: dict[str, Path], api: LocalApi, tmp_path: Path
) -> None:
    """The bridge connects over TLS with a client certificate and drains a burst published
    before it connected (exercises reading TLS-buffered data from the event loop)."""
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncafile {certs['ca.pem']}\n"
        f"certfile {certs['srv.pem']}\nkeyfile {certs['srv.key']}\nrequire_certificate true\n"
    )
    n = 2000
    start_ms = int(time.time() * 1000) - n
    with LocalBroker(workdir=tmp_path / "broker", extra_config=extra) as broker:
        settings = make_settings(
            tls_port,
            api.url,
            tmp_path / "spool.db",
            **{
                "mqtt.tls.enabled": "true",
                "mqtt.tls.ca_file": str(certs["ca.pem"]),
                "mqtt.tls.cert_file": str(certs["cli.pem"]),
                "mqtt.tls.key_file": str(certs["cli.key"]),
            },
        )
        async with running_bridge(settings):
            pass  # creates the session
        pub = Publisher(broker.port)  # the plain listener
        try:
            await asyncio.to_thread(pub.publish_all, env_messages(n, start_ms))
        finally:
            pub.close()
        async with running_bridge(settings) as bridge:
            await api.store.wait_for_points(4 * n, 60)
            assert metric(bridge, "metriqo_bridge_mqtt_connects_total") == 1
    assert set(delivered_points(api.store.points())) == expected_env_points(n, start_ms)


async def test_tls_with_an_unknown_ca_is_not_ready_and_keeps_retrying(
    certs: dict[str, Path], api: LocalApi, tmp_path: Path
) -> None:
    """Verification is on: a broker certificate from another CA is refused, /readyz says why."""
    tls_port = free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\ncafile {certs['ca.pem']}\n"
        f"certfile {certs['srv.pem']}\nkeyfile {certs['srv.key']}\n"
    )
    with LocalBroker(workdir=tmp_path / "broker", extra_config=extra):
        settings = make_settings(
            tls_port,
            api.url,
            tmp_path / "spool.db",
            **{"mqtt.tls.enabled": "true", "mqtt.tls.ca_file": str(certs["cli.pem"])},
        )
        async with running_bridge(settings, connected=False) as bridge:
            await asyncio.sleep(1.5)
            problems = bridge.problems()
            assert problems
            assert "CERTIFICATE_VERIFY_FAILED" in problems[0]
            assert metric(bridge, "metriqo_bridge_mqtt_connects_total") == 0


async def test_username_password_from_a_file(api: LocalApi, tmp_path: Path) -> None:
    """A broker that requires a login accepts the bridge's credentials from a 0600 file."""
    pwfile = tmp_path / "passwd"
    pwfile.write_text("", encoding="utf-8")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(pwfile), "bridge", "s3cret-pw"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["mosquitto_passwd", "-b", str(pwfile), "sensor", "sensor-pw"],
        check=True,
        capture_output=True,
    )
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-pw\n", encoding="utf-8")
    secret.chmod(0o600)
    extra = f"allow_anonymous false\npassword_file {pwfile}\n"
    with LocalBroker(workdir=tmp_path / "broker", extra_config=extra) as broker:
        settings = make_settings(
            broker.port,
            api.url,
            tmp_path / "spool.db",
            **{"mqtt.username": "bridge", "mqtt.password_file": str(secret)},
        )
        from bridge.settings import resolve_mqtt_password

        assert resolve_mqtt_password(settings) == "s3cret-pw"
        async with running_bridge(settings, password="s3cret-pw") as bridge:
            await publish(
                broker.port,
                env_messages(10, int(time.time() * 1000)),
                username="sensor",
                password="sensor-pw",
            )
            await api.store.wait_for_points(40, 30)
            assert metric(bridge, "metriqo_bridge_mqtt_connected") == 1


async def test_wrong_password_is_reported_not_ready(api: LocalApi, tmp_path: Path) -> None:
    """Bad credentials: the bridge keeps retrying and /readyz names the refusal."""
    pwfile = tmp_path / "passwd"
    pwfile.write_text("", encoding="utf-8")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(pwfile), "bridge", "right"], check=True, capture_output=True
    )
    extra = f"allow_anonymous false\npassword_file {pwfile}\n"
    with LocalBroker(workdir=tmp_path / "broker", extra_config=extra) as broker:
        settings = make_settings(
            broker.port, api.url, tmp_path / "spool.db", **{"mqtt.username": "bridge"}
        )
        async with running_bridge(settings, password="wrong", connected=False) as bridge:
            await asyncio.sleep(1.5)
            problems = bridge.problems()
            assert problems
            assert "refused" in problems[0].lower() or "not authorized" in problems[0].lower()
