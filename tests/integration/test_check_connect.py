"""``check --connect`` against real parts: private mosquitto brokers (anonymous, TLS with a
password file and the shipped ACL, the dynamic-security plugin refusing a filter), the local
API with the right and a wrong token, closed ports. Each red line shows its fix, and a running
bridge's session survives the check."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bridge.errors import EX_CONFIG, EX_OK, EX_UNAVAILABLE
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from tests.support import TOKEN
from tests.support.harness import (
    TEST_MAPPINGS,
    delivered_points,
    env_messages,
    expected_env_points,
    make_settings,
    metric,
    publish,
    run_cli,
    running_bridge,
)
from tests.support.tls import (
    BRIDGE_USER,
    Pki,
    SecureBroker,
    password_file,
)

BRIDGE_PW = "bridge-pw-Check-71"  # recognisable: every run is searched for it
WRONG_TOKEN = "mqk_test_not-the-right-one"
LINES = ("mapping", "dns", "tcp", "tls", "login", "subscribe", "api")
DYNSEC = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


class Check:
    """One ``check --connect`` run: its exit code, text or JSON, and the lines by name."""

    def __init__(self, proc: subprocess.CompletedProcess[str], as_json: bool) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.lines: dict[str, dict[str, Any]] = {}
        if as_json:
            checks = json.loads(proc.stdout)["checks"]
            # One line per step, always all of them, in the order a reading travels.
            assert [line["check"] for line in checks] == list(LINES), checks
            self.lines = {line["check"]: line for line in checks}

    def status(self) -> dict[str, str]:
        return {name: line["status"] for name, line in self.lines.items()}


async def check(
    workdir: Path, *args: str, token: str = TOKEN, as_json: bool = True, password: str = ""
) -> Check:
    """``metriqo-bridge check --connect`` as a user runs it (a subprocess), with the test
    mappings, the token in the environment and ``args``; fails if a secret is printed."""
    mappings = workdir / "topic-mappings.yaml"
    if not mappings.exists():
        mappings.write_text(TEST_MAPPINGS, encoding="utf-8")
    argv = ["check", "--connect", str(mappings), "--set", "mqtt.connect_timeout_s=20", *args]
    if as_json:
        argv.append("--json")
    env = {"METRIQO_BRIDGE_TOKEN": token} if token else {}
    proc = await asyncio.to_thread(run_cli, *argv, env=env, timeout=120)
    for secret in (TOKEN, WRONG_TOKEN, BRIDGE_PW, *([password] if password else [])):
        assert secret not in proc.stdout + proc.stderr, "a secret was printed"
    assert not proc.stderr, proc.stderr
    return Check(proc, as_json)


def secret_file(path: Path, value: str) -> Path:
    """A 0600 file holding one secret."""
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


# -- all green, and the bridge's session -----------------------------------------------------


async def test_all_green(broker: LocalBroker, api: LocalApi, tmp_path: Path) -> None:
    """A reachable plain broker and the right token: every line passes, exit 0, and the text
    says so."""
    args = ("--mqtt-port", str(broker.port), "--api-base-url", api.url)
    result = await check(tmp_path, *args)
    assert result.code == EX_OK, result.out
    assert result.status() == {
        "mapping": "ok",
        "dns": "ok",
        "tcp": "ok",
        "tls": "skip",
        "login": "ok",
        "subscribe": "ok",
        "api": "ok",
    }
    assert "plant/+/+/env, tele/+/+" in result.lines["subscribe"]["detail"]
    text = await check(tmp_path, *args, as_json=False)
    assert text.code == EX_OK
    assert text.out.endswith("all 6 checks passed\n")
    assert "[ ok ] API reachable and the token accepted" in text.out


async def test_a_running_bridge_keeps_its_session(
    broker: LocalBroker, api: LocalApi, tmp_path: Path
) -> None:
    """The check, given the very settings of a running bridge (its client id included),
    connects under another id: the bridge is not disconnected, goes on delivering, and its
    broker session still queues messages for it while it is stopped."""
    settings = make_settings(broker.port, api.url, tmp_path / "spool.db")
    async with running_bridge(settings) as bridge:
        args = ("--mqtt-port", str(broker.port), "--mqtt-client-id", settings.mqtt.client_id)
        result = await check(tmp_path, *args, "--api-base-url", api.url)
        assert result.code == EX_OK, result.out
        assert "client id bridge-under-test-check-" in result.lines["login"]["summary"]
        start_ms = 1_700_000_000_000
        await publish(broker.port, env_messages(5, start_ms))
        await api.store.wait_for_points(20, 30)
        assert metric(bridge, "metriqo_bridge_mqtt_connects_total") == 1
        assert bridge.source is not None
        assert bridge.source.state.connected
    assert set(delivered_points(api.store.points())) == expected_env_points(5, start_ms)
    assert "already connected" not in broker.log_tail(100_000)
    # Stopped: the broker queues for the bridge's session; a check under the bridge's id with
    # a clean session would throw the queue away.
    later_ms = start_ms + 60_000
    await publish(broker.port, env_messages(5, later_ms))
    result = await check(tmp_path, *args, "--api-base-url", api.url)
    assert result.code == EX_OK, result.out
    async with running_bridge(settings):
        await api.store.wait_for_points(40, 30)
    expected = expected_env_points(5, start_ms) | expected_env_points(5, later_ms)
    assert set(delivered_points(api.store.points())) == expected


# -- the broker's red lines ------------------------------------------------------------------


async def test_a_closed_port(api: LocalApi, tmp_path: Path) -> None:
    """Nothing listens on the port: the TCP line is red with its fix; later lines are not
    checked; exit 69."""
    result = await check(tmp_path, "--mqtt-port", str(free_port()), "--api-base-url", api.url)
    assert result.code == EX_UNAVAILABLE
    tcp = result.lines["tcp"]
    assert tcp["status"] == "fail"
    assert "refused: nothing listens there" in tcp["summary"]
    assert tcp["fix"] == "start the broker, or check mqtt.host and mqtt.port"
    assert result.status()["login"] == "skip"
    assert result.status()["api"] == "ok"
    text = await check(tmp_path, "--mqtt-port", str(free_port()), "--api-base-url", api.url,
                       as_json=False)  # fmt: skip
    assert "[FAIL] connection to 127.0.0.1:" in text.out
    assert "       fix: start the broker, or check mqtt.host and mqtt.port" in text.out
    assert "1 of 7 checks failed" in text.out


async def test_a_host_that_does_not_resolve(api: LocalApi, tmp_path: Path) -> None:
    """A broker host name that does not resolve is the DNS line, with its fix."""
    args = ("--mqtt-host", "broker.plant.invalid", "--api-base-url", api.url)
    result = await check(tmp_path, *args, "--set", "mqtt.connect_timeout_s=10")
    dns = result.lines["dns"]
    assert dns["status"] == "fail"
    assert "'broker.plant.invalid' does not resolve" in dns["summary"]
    assert dns["fix"] == "check mqtt.host; try: getent hosts broker.plant.invalid"
    assert result.code == EX_UNAVAILABLE


@pytest.fixture
def secure(pki: Pki, tmp_path: Path) -> Iterator[SecureBroker]:
    """The shipped secure broker (mTLS on one port, passwords on the other, the shipped ACL)."""
    passwords = password_file(tmp_path / "passwd", {BRIDGE_USER: BRIDGE_PW})
    with SecureBroker(tmp_path / "broker", pki, passwords) as b:
        yield b


def tls_args(pki: Pki, port: int, password: Path | None = None) -> list[str]:
    """The flags of a bridge on the secure broker's password listener."""
    args = ["--mqtt-port", str(port), "--set", "mqtt.tls.enabled=true"]
    args += ["--set", f"mqtt.tls.ca_file={pki.ca}", "--set", f"mqtt.username={BRIDGE_USER}"]
    if password is not None:
        args += ["--set", f"mqtt.password_file={password}"]
    return args


@pytest.mark.parametrize(("protocol", "code"), [("v5", "0x87"), ("v311", "0x05")])
async def test_a_wrong_password(
    protocol: str, code: str, *, secure: SecureBroker, pki: Pki, api: LocalApi, tmp_path: Path
) -> None:
    """A wrong password is the login line, with the broker's reason in words and its code in
    either protocol version, and the fix; the password never appears."""
    wrong = secret_file(tmp_path / "pw", "not-the-password-42")
    args = [*tls_args(pki, secure.password_port, wrong), "--set", f"mqtt.protocol={protocol}"]
    result = await check(tmp_path, *args, "--api-base-url", api.url, password="not-the-password-42")
    login = result.lines["login"]
    assert login["status"] == "fail"
    assert f"login refused: not authorized (CONNACK reason {code}" in login["summary"]
    assert "check mqtt.username, the password in mqtt.password_file" in login["fix"]
    assert result.status()["tls"] == "ok"
    assert result.status()["subscribe"] == "skip"
    assert result.code == EX_UNAVAILABLE


async def test_the_right_password_over_tls(
    secure: SecureBroker, pki: Pki, api: LocalApi, tmp_path: Path
) -> None:
    """Over verified TLS with the right password every line passes (the shipped ACL grants
    the bridge's user read access to everything)."""
    args = tls_args(pki, secure.password_port, secret_file(tmp_path / "pw", BRIDGE_PW))
    result = await check(tmp_path, *args, "--api-base-url", api.url)
    assert result.code == EX_OK, result.out
    assert result.lines["tls"]["summary"] == "TLS accepted; the broker's certificate is verified"


async def test_a_certificate_for_another_name(pki: Pki, api: LocalApi, tmp_path: Path) -> None:
    """A broker certificate for another host name is a red TLS line that says so."""
    passwords = password_file(tmp_path / "passwd", {BRIDGE_USER: BRIDGE_PW})
    wrong = (pki.wrong_host, pki.wrong_host_key)
    with SecureBroker(tmp_path / "broker", pki, passwords, server_cert=wrong) as broker:
        result = await check(
            tmp_path, *tls_args(pki, broker.password_port), "--api-base-url", api.url
        )
    tls = result.lines["tls"]
    assert tls["status"] == "fail"
    assert tls["summary"] == "the broker's certificate is not for 127.0.0.1"
    assert "IP address mismatch" in tls["detail"]
    assert tls["fix"].startswith("set mqtt.host to a name the certificate lists")
    assert result.status()["login"] == "skip"


def expired_server_cert(pki: Pki, d: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, signed by the plant's CA, valid from two days ago until one
    day ago.

    Signed with ``openssl ca``, whose ``-startdate``/``-enddate`` set both dates on OpenSSL 3.0
    and 3.4+ alike: ``openssl x509 -req -days -1`` (an end before the start) works on 3.0 but
    is refused from 3.4 on ("end date before start date"), and the ``-not_before``/
    ``-not_after`` that replace it do not exist on 3.0.
    """
    key, csr, cert = d / "old.key", d / "old.csr", d / "old.pem"
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = ["openssl", "req", *new_key, "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out"]
    subprocess.run([*run, str(csr)], check=True, capture_output=True)
    ca_dir = d / "old-ca"  # the bookkeeping files openssl ca insists on
    ca_dir.mkdir()
    (ca_dir / "index.txt").write_text("", encoding="utf-8")
    (ca_dir / "ext").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    (ca_dir / "ca.cnf").write_text(
        f"[ca]\ndefault_ca = expired\n[expired]\ndatabase = {ca_dir / 'index.txt'}\n"
        f"new_certs_dir = {ca_dir}\nserial = {ca_dir / 'serial'}\ndefault_md = sha256\n"
        "policy = any\n[any]\ncommonName = supplied\n",
        encoding="utf-8",
    )
    now = datetime.now(UTC)

    def stamp(days_ago: int) -> str:
        return (now - timedelta(days=days_ago)).strftime("%Y%m%d%H%M%SZ")

    sign = [
        "openssl", "ca", "-batch", "-notext", "-config", str(ca_dir / "ca.cnf"),
        "-cert", str(pki.ca), "-keyfile", str(pki.dir / "plant-ca.key"), "-create_serial",
        "-startdate", stamp(2), "-enddate", stamp(1), "-extfile", str(ca_dir / "ext"),
        "-in", str(csr), "-out", str(cert),
    ]  # fmt: skip
    subprocess.run(sign, check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


async def test_an_expired_certificate(pki: Pki, api: LocalApi, tmp_path: Path) -> None:
    """A broker certificate that has expired is a red TLS line that says so."""
    passwords = password_file(tmp_path / "passwd", {BRIDGE_USER: BRIDGE_PW})
    old = expired_server_cert(pki, tmp_path)
    with SecureBroker(tmp_path / "broker", pki, passwords, server_cert=old) as broker:
        result = await check(
            tmp_path, *tls_args(pki, broker.password_port), "--api-base-url", api.url
        )
    tls = result.lines["tls"]
    assert tls["summary"] == "the broker's certificate has expired"
    assert tls["fix"] == "renew the broker's certificate"


async def test_an_unknown_ca(secure: SecureBroker, pki: Pki, api: LocalApi, tmp_path: Path) -> None:
    """A broker certificate from a CA that was not given is a red TLS line naming the fix."""
    args = [*tls_args(pki, secure.password_port), "--set", f"mqtt.tls.ca_file={pki.rogue_ca}"]
    result = await check(tmp_path, *args, "--api-base-url", api.url)
    tls = result.lines["tls"]
    assert (
        tls["summary"] == "the broker's certificate is signed by a CA this machine does not trust"
    )
    assert tls["fix"].startswith("set mqtt.tls.ca_file to the CA certificate")


async def test_a_client_certificate_is_required(
    secure: SecureBroker, pki: Pki, api: LocalApi, tmp_path: Path
) -> None:
    """The mutual-TLS listener without a client certificate: the TLS line says one is
    required (TLS 1.3 reports it after the handshake, at the first read)."""
    result = await check(tmp_path, *tls_args(pki, secure.cert_port), "--api-base-url", api.url)
    tls = result.lines["tls"]
    assert tls["status"] == "fail", result.lines
    assert tls["summary"] in (
        "the broker requires a client certificate",  # the alert won the race
        "the broker most likely requires a client certificate (none is configured)",
    )
    assert "mqtt.tls.cert_file and mqtt.tls.key_file" in tls["fix"]


async def test_a_client_certificate_from_another_ca(
    secure: SecureBroker, pki: Pki, api: LocalApi, tmp_path: Path
) -> None:
    """A client certificate the broker's CA did not sign: the TLS line says it was refused."""
    args = [*tls_args(pki, secure.cert_port), "--set", f"mqtt.tls.cert_file={pki.rogue_client}"]
    args += ["--set", f"mqtt.tls.key_file={pki.rogue_client_key}", "--api-base-url", api.url]
    result = await check(tmp_path, *args)
    tls = result.lines["tls"]
    assert tls["status"] == "fail", result.lines
    assert "refused the client certificate" in tls["summary"]
    assert tls["fix"].startswith("use a client certificate signed by the CA in the broker's")


async def test_tls_to_a_plain_port(
    broker: LocalBroker, pki: Pki, api: LocalApi, tmp_path: Path
) -> None:
    """TLS to a listener that does not speak it: the TLS line says so and names the port."""
    args = [
        "--mqtt-port",
        str(broker.port),
        "--set",
        "mqtt.tls.enabled=true",
        "--api-base-url",
        api.url,
    ]
    result = await check(tmp_path, *args, "--set", f"mqtt.tls.ca_file={pki.ca}")
    tls = result.lines["tls"]
    assert tls["status"] == "fail", result.lines
    assert tls["summary"].startswith("the server does not speak TLS on this port")
    assert "mqtt.tls.enabled: false" in tls["fix"]


async def test_plain_mqtt_to_a_tls_port(
    secure: SecureBroker, api: LocalApi, tmp_path: Path
) -> None:
    """A plain client on a TLS listener: a red line that points at mqtt.tls.enabled."""
    args = ("--mqtt-port", str(secure.password_port), "--api-base-url", api.url)
    result = await check(tmp_path, *args)
    red = [line for line in result.lines.values() if line["status"] == "fail"]
    assert red, result.lines
    assert red[0]["check"] in ("tls", "login")
    assert "mqtt.tls.enabled: true" in red[0]["fix"]


# -- subscriptions refused by the broker's access control -----------------------------------


class DynsecBroker(LocalBroker):
    """mosquitto with the dynamic-security plugin: the bridge's user may subscribe to plant/#
    only, and the plugin refuses other filters in the SUBACK (mosquitto's acl_file would
    grant them and then deliver nothing)."""

    username: ClassVar[str | None] = BRIDGE_USER
    password: ClassVar[str | None] = BRIDGE_PW

    def __init__(self, workdir: Path) -> None:
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", BRIDGE_PW.encode(), salt, 101, 64)
        config = {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": True,
                "subscribe": False,
                "unsubscribe": True,
            },
            "clients": [
                {
                    "username": BRIDGE_USER,
                    "password": base64.b64encode(digest).decode(),
                    "salt": base64.b64encode(salt).decode(),
                    "iterations": 101,
                    "roles": [{"rolename": "reader"}],
                }
            ],
            "groups": [],
            "roles": [
                {
                    "rolename": "reader",
                    "acls": [{"acltype": "subscribePattern", "topic": "plant/#", "allow": True}],
                }
            ],
        }
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "dynamic-security.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        path.chmod(0o600)
        extra = f"allow_anonymous false\nplugin {DYNSEC}\nplugin_opt_config_file {path}\n"
        super().__init__(workdir=workdir, extra_config=extra)


@pytest.mark.skipif(not DYNSEC.exists(), reason="mosquitto's dynamic-security plugin is missing")
@pytest.mark.parametrize(("protocol", "code"), [("v5", "not authorized (0x87)"),
                                                ("v311", "refused (0x80)")])  # fmt: skip
async def test_a_refused_subscription(
    protocol: str, code: str, api: LocalApi, tmp_path: Path
) -> None:
    """A filter the broker refuses is named with its SUBACK reason (v5 0x87, v3.1.1 0x80) and
    the fix; the allowed one is not."""
    password = secret_file(tmp_path / "pw", BRIDGE_PW)
    with DynsecBroker(tmp_path / "broker") as broker:
        args = ["--mqtt-port", str(broker.port), "--set", f"mqtt.username={BRIDGE_USER}"]
        args += ["--set", f"mqtt.password_file={password}", "--set", f"mqtt.protocol={protocol}"]
        result = await check(tmp_path, *args, "--api-base-url", api.url)
    sub = result.lines["subscribe"]
    assert sub["status"] == "fail"
    assert sub["summary"] == "subscriptions: 1 of 2 filter(s) refused"
    assert sub["detail"] == f"tele/+/+: {code}"
    assert sub["fix"] == "allow this user to subscribe to the filter in the broker's access control"
    assert result.code == EX_UNAVAILABLE


# -- the API ---------------------------------------------------------------------------------


async def test_a_wrong_token(broker: LocalBroker, api: LocalApi, tmp_path: Path) -> None:
    """A token the API refuses is the API line (401) with its fix; the token never appears."""
    args = ("--mqtt-port", str(broker.port), "--api-base-url", api.url)
    result = await check(tmp_path, *args, token=WRONG_TOKEN)
    line = result.lines["api"]
    assert line["summary"] == "the API refused the token (401)"
    assert "put a current token from the Metriqo dashboard into api.token_file" in line["fix"]
    assert result.code == EX_UNAVAILABLE


async def test_an_unreachable_api(broker: LocalBroker, tmp_path: Path) -> None:
    """An API port where nothing listens is the API line with its fix."""
    url = f"http://127.0.0.1:{free_port()}/api/v2"
    result = await check(tmp_path, "--mqtt-port", str(broker.port), "--api-base-url", url)
    line = result.lines["api"]
    assert line["summary"] == f"the API at {url} is not reachable"
    assert "refused" in line["detail"]
    assert line["fix"] == "check api.base_url and the network path (firewall, proxy)"


async def test_no_token_is_a_configuration_error(broker: LocalBroker, tmp_path: Path) -> None:
    """Without any token the API line is red and the exit code is 78, as run would exit."""
    args = (
        "--mqtt-port",
        str(broker.port),
        "--api-base-url",
        f"http://127.0.0.1:{free_port()}/api/v2",
    )
    result = await check(tmp_path, *args, token="")
    assert result.lines["api"]["status"] == "fail"
    assert "no API token" in result.lines["api"]["detail"]
    assert result.lines["api"]["fix"] == "set api.token_file (a 0600 file) or METRIQO_BRIDGE_TOKEN"
    assert result.code == EX_CONFIG


async def test_an_invalid_mapping_file(broker: LocalBroker, api: LocalApi, tmp_path: Path) -> None:
    """An invalid mapping file is a red line naming file and line, exit 78; the broker and the
    API are still checked, the subscriptions not."""
    (tmp_path / "topic-mappings.yaml").write_text("version: 1\nrules:\n  - {name: r}\n")
    result = await check(tmp_path, "--mqtt-port", str(broker.port), "--api-base-url", api.url)
    mapping = result.lines["mapping"]
    assert mapping["status"] == "fail"
    assert "topic-mappings.yaml:3" in mapping["detail"]
    assert mapping["fix"].startswith("run: metriqo-bridge check ")
    assert result.status()["login"] == "ok"
    assert result.status()["subscribe"] == "skip"
    assert result.status()["api"] == "ok"
    assert result.code == EX_CONFIG
