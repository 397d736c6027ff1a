"""What the TLS tests share (``test_tls_auth.py``, ``test_secure_broker.py``,
``test_api_tls.py``): a throwaway PKI made with the openssl CLI at test time (nothing private is
committed), the shipped ``mosquitto/secure.conf`` started with only its paths and ports changed,
MQTT clients over TLS, and the check that no secret reaches any output."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from bridge.app import Bridge
from bridge.lab.broker import free_port, mosquitto_binary
from tests.support import REPO, TOKEN
from tests.support.tools import require_tool

SECURE_CONF = REPO / "mosquitto" / "secure.conf"
ACL = REPO / "mosquitto" / "acl"
BRIDGE_USER = "metriqo-bridge"  # the ACL's user, and the CN of the bridge's certificate
GATEWAY_USER = "plant-gateway"


# -- a throwaway PKI -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    """Certificates and keys for one test module (PEM files in ``dir``)."""

    dir: Path
    ca: Path  # the plant's CA: signs the broker, the API and the bridge
    server: Path  # for 127.0.0.1 and localhost
    server_key: Path
    wrong_host: Path  # signed by the plant's CA, but for broker.plant.invalid only
    wrong_host_key: Path
    client: Path  # CN=metriqo-bridge
    client_key: Path
    rogue_ca: Path  # a CA the broker and the bridge do not trust
    rogue_client: Path  # CN=metriqo-bridge, signed by the rogue CA
    rogue_client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


# EC keys: an RSA key costs tens of milliseconds, an EC key almost nothing.
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _new_ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl(
        "req", "-x509", *_NEW_KEY, "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(cert),
        # What Python 3.13+'s strict verification (VERIFY_X509_STRICT) asks of a CA.
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _issue(
    d: Path, name: str, cn: str, ca: tuple[Path, Path], san: str | None
) -> tuple[Path, Path]:
    cert, key, csr = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr"
    _openssl("req", *_NEW_KEY, "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr))
    # A leaf that Python 3.13+'s strict verification accepts: it names its issuer's key.
    lines = ["basicConstraints=CA:FALSE", "authorityKeyIdentifier=keyid,issuer"]
    if san is not None:
        lines.append(f"subjectAltName={san}")
    ext = d / f"{name}.ext"
    ext.write_text("\n".join(lines) + "\n", encoding="utf-8")
    extra = ["-extfile", str(ext)]
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-out", str(cert), *extra,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def make_pki(d: Path) -> Pki:
    """Create a CA, server and client certificates, and a rogue CA, in ``d``."""
    require_tool("openssl", "generates the test certificates")
    d.mkdir(parents=True, exist_ok=True)
    ca = _new_ca(d, "plant-ca")
    rogue = _new_ca(d, "rogue-ca")
    server = _issue(d, "server", "127.0.0.1", ca, "IP:127.0.0.1,DNS:localhost")
    wrong = _issue(d, "wrong-host", "broker.plant.invalid", ca, "DNS:broker.plant.invalid")
    client = _issue(d, "bridge", BRIDGE_USER, ca, None)
    rogue_client = _issue(d, "rogue-bridge", BRIDGE_USER, rogue, None)
    return Pki(d, ca[0], *server, *wrong, *client, rogue[0], *rogue_client)


# -- the shipped secure broker -------------------------------------------------------------


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file made with ``mosquitto_passwd -b -c``, mode 0600."""
    tool = require_tool("mosquitto_passwd", "creates the broker's password file")
    first = True
    for user, password in users.items():
        create = ["-c"] if first else []
        subprocess.run([tool, "-b", *create, str(path), user, password], check=True)
        first = False
    path.chmod(0o600)
    return path


class SecureBroker:
    """mosquitto running the shipped ``mosquitto/secure.conf``, with only its certificate,
    password, ACL and persistence paths and its two listener ports replaced."""

    def __init__(
        self,
        workdir: Path,
        pki: Pki,
        passwords: Path,
        *,
        server_cert: tuple[Path, Path] | None = None,
    ) -> None:
        self.workdir = workdir
        self.cert_port = free_port()  # 8883: client certificate (mTLS)
        self.password_port = free_port()  # 8884: username and password
        cert, key = server_cert or (pki.server, pki.server_key)
        self.replacements = {
            "/etc/mosquitto/certs/ca.pem": str(pki.ca),
            "/etc/mosquitto/certs/server.pem": str(cert),
            "/etc/mosquitto/certs/server.key": str(key),
            "/etc/mosquitto/passwd": str(passwords),
            "/etc/mosquitto/acl": str(ACL),
            "/var/lib/mosquitto/": f"{workdir / 'data'}/",
            # Loopback only: the shipped file listens on every interface.
            "listener 8883\n": f"listener {self.cert_port} 127.0.0.1\n",
            "listener 8884\n": f"listener {self.password_port} 127.0.0.1\n",
        }
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        text = SECURE_CONF.read_text(encoding="utf-8")
        for old, new in self.replacements.items():
            assert old in text, f"mosquitto/secure.conf no longer contains {old!r}"
            text = text.replace(old, new)
        # Started as root, mosquitto switches to the "mosquitto" user, which cannot read the
        # test's keys; keep the current user (the only line not in the shipped file).
        return text + f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"

    def start(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text(), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(conf)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()  # never leave a stray broker behind
            raise

    def _wait_listening(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        for port in (self.cert_port, self.password_port):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log()[-2000:]}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mosquitto did not listen on {port}: {self.log()}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> SecureBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- MQTT clients over TLS -----------------------------------------------------------------


def client_context(
    ca: Path, cert: tuple[Path, Path] | None = None, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A verifying client context, optionally with a client certificate."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


class TlsClient:
    """A paho MQTT v5 client over TLS on its own thread, recording what the broker answers."""

    def __init__(
        self,
        port: int,
        ctx: ssl.SSLContext,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set_context(ctx)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(1000)
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: list[ReasonCode] = []
        self.received: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.wait(lambda: self.connack is not None, "CONNACK")

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: object
    ) -> None:
        with self._cond:
            self.pubacks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _m: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        with self._cond:
            self.subacks.extend(rcs)
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait(self, done: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        """Block until ``done()`` is true, or raise naming ``what``."""
        with self._cond:
            if not self._cond.wait_for(done, timeout):
                raise TimeoutError(f"no {what} from the broker in {timeout} s")

    def publish_all(self, messages: Iterable[tuple[str, bytes]]) -> list[ReasonCode]:
        """Publish at QoS 1 and return the PUBACK reason code of each, in order."""
        mids = []
        for topic, payload in messages:
            info = self.client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish refused by the client: {mqtt.error_string(info.rc)}")
            mids.append(info.mid)
        self.wait(lambda: all(m in self.pubacks for m in mids), "PUBACK", 60)
        return [self.pubacks[m] for m in mids]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def tls_publish(
    port: int, ctx: ssl.SSLContext, messages: list[tuple[str, bytes]], **login: str
) -> list[ReasonCode]:
    """Publish ``messages`` at QoS 1 from a fresh TLS client (off the event loop)."""

    def run() -> list[ReasonCode]:
        pub = TlsClient(port, ctx, f"pub-{time.monotonic_ns()}", **login)
        try:
            assert pub.connack is not None
            assert not pub.connack.is_failure, pub.connack
            return pub.publish_all(messages)
        finally:
            pub.close()

    return await asyncio.to_thread(run)


# -- what the bridge shows -----------------------------------------------------------------


def fetch(url: str) -> tuple[int, str]:
    """GET ``url``; (status, body) also for error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310  # a loopback test URL
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:  # a 503 carries a body; Python 3.14+ warns when it is left open
            return exc.code, exc.read().decode()


async def status_pages(bridge: Bridge) -> dict[str, tuple[int, str]]:
    """The bridge's /readyz and /metrics, as a monitoring system sees them."""
    assert bridge.status is not None
    base = f"http://127.0.0.1:{bridge.status.port}"
    return {p: await asyncio.to_thread(fetch, base + p) for p in ("/readyz", "/metrics")}


def assert_no_secrets(outputs: Iterable[str], *secrets: str) -> None:
    """None of ``secrets`` (and never the API token) occurs in any of ``outputs``."""
    texts = list(outputs)
    assert texts, "nothing captured to check"
    for secret in (TOKEN, *secrets):
        for text in texts:
            assert secret not in text, "a secret leaked into the bridge's output"


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured log line, formatted, with any exception text."""
    return "\n".join(
        f"{r.levelname} {r.name}: {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )


def reconnect_attempts(caplog: pytest.LogCaptureFixture) -> int:
    """How many times the bridge has scheduled a reconnect so far."""
    return sum(1 for r in caplog.records if r.getMessage().startswith("reconnecting to the broker"))


async def wait_attempts(caplog: pytest.LogCaptureFixture, n: int) -> None:
    """Wait until the bridge has retried the broker ``n`` times."""
    async with asyncio.timeout(20):
        while reconnect_attempts(caplog) < n:
            await asyncio.sleep(0.05)


# -- the bridge's TLS settings -------------------------------------------------------------


def mtls_settings(pki: Pki) -> dict[str, str]:
    """Bridge settings for TLS with the bridge's client certificate."""
    return {
        "mqtt.client_id": BRIDGE_USER,
        "mqtt.tls.enabled": "true",
        "mqtt.tls.ca_file": str(pki.ca),
        "mqtt.tls.cert_file": str(pki.client),
        "mqtt.tls.key_file": str(pki.client_key),
    }
