"""``check --connect``'s broker half: one throwaway connection, step by step (DNS, TCP, TLS,
login, one SUBSCRIBE per filter, UNSUBSCRIBE, DISCONNECT), each step a :class:`Finding`.

The probe never uses the bridge's client id: a CONNECT with it would take over a running
bridge's connection (MQTT allows one connection per client id) and, with a clean session,
throw away the session and the messages it queues. It connects as ``<mqtt.client_id>-check-
<random>`` (brokers that allow ids by prefix allow it too) with a clean session that ends with
the connection. In a share group it subscribes the plain filters, never ``$share/...``: a
member of the group, even for a second, would be handed messages meant for the bridges.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bridge.mqtt import probe_packets as pk
from bridge.mqtt.client import tls_context
from bridge.settings import MqttSettings

Status = Literal["ok", "fail", "skip"]

# verify_code values of OpenSSL (X509_V_ERR_*) that mean "issued by a CA we do not trust".
_UNKNOWN_CA = {2, 18, 19, 20, 21, 27}
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")
_TLS_FIX_PORT = (
    "check mqtt.port (TLS listeners are usually on 8883, plain ones on 1883), or set "
    "mqtt.tls.enabled: false for a plain listener"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the checklist.

    Attributes:
        check: a short stable name (``dns``, ``tcp``, ``tls``, ``login``, ``subscribe``, ...).
        status: ``ok``, ``fail`` or ``skip`` (not checked, or not applicable).
        summary: the line itself.
        detail: more of what was found (never a secret).
        fix: what to change, for a failed line.
        config: failed because ``run`` would refuse the configuration itself (exit 78).
    """

    check: str
    status: Status
    summary: str
    detail: str = ""
    fix: str = ""
    config: bool = False


def check_client_id(bridge_id: str) -> str:
    """The probe's client id: the bridge's as a prefix, never the bridge's itself."""
    return f"{bridge_id}-check-{secrets.token_hex(4)}"


def describe_tls_failure(
    exc: BaseException,
    host: str,
    *,
    client_cert: bool,
    who: str = "broker",
    ca_key: str = "mqtt.tls.ca_file",
    host_key: str = "mqtt.host",
) -> tuple[str, str, str]:
    """(summary, detail, fix) for a failed TLS handshake with the ``who`` (broker or API),
    naming which check failed and the setting that fixes it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code, message = exc.verify_code, str(exc.verify_message)
        if code == 10:
            return (
                f"the {who}'s certificate has expired",
                message,
                f"renew the {who}'s certificate",
            )
        if code == 9:
            return (
                f"the {who}'s certificate is not valid yet",
                message,
                f"check the clock of this machine and of the {who}",
            )
        if code in _UNKNOWN_CA:
            return (
                f"the {who}'s certificate is signed by a CA this machine does not trust",
                message,
                f"set {ca_key} to the CA certificate that signed the {who}'s certificate",
            )
        if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            return (
                f"the {who}'s certificate is not for {host}",
                message,
                f"set {host_key} to a name the certificate lists, or have the certificate "
                f"reissued with {host} in its subjectAltName (turning verification off is "
                "not a fix)",
            )
        return (f"the {who}'s certificate was refused", message, "read the detail above")
    reason = str(getattr(exc, "reason", "") or "")
    if "CERTIFICATE_REQUIRED" in reason or ("HANDSHAKE_FAILURE" in reason and not client_cert):
        return (
            "the broker requires a client certificate",
            reason,
            "set mqtt.tls.cert_file and mqtt.tls.key_file to a certificate the broker's CA signed",
        )
    if client_cert and any(
        r in reason for r in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")
    ):
        return (
            "the broker refused the client certificate",
            reason,
            "use a client certificate signed by the CA in the broker's cafile",
        )
    if "CERTIFICATE_EXPIRED" in reason:
        return ("the broker says the client certificate has expired", reason, "renew it")
    if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
        return (
            "this machine and the broker share no TLS version",
            reason,
            "the bridge needs TLS 1.2 or later on the broker",
        )
    if any(r in reason for r in _NOT_TLS) or isinstance(
        exc, ssl.SSLEOFError | ConnectionResetError | asyncio.IncompleteReadError
    ):
        return (
            "the server does not speak TLS on this port (it closed the handshake)",
            reason or type(exc).__name__,
            _TLS_FIX_PORT,
        )
    return ("the TLS handshake failed", reason or str(exc), "read the broker's log")


class _Link:
    """A connection after the TLS handshake: whole packets in, bytes out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, t: float):
        self._reader = reader
        self._writer = writer
        self._timeout = t
        self._buf = b""

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        async with asyncio.timeout(self._timeout):
            await self._writer.drain()

    async def packet(self) -> pk.Packet:
        """The next packet; IncompleteReadError when the broker closed the connection."""
        async with asyncio.timeout(self._timeout):
            while (found := pk.split_packet(self._buf)) is None:
                chunk = await self._reader.read(65536)
                if not chunk:
                    raise asyncio.IncompleteReadError(self._buf, None)
                self._buf += chunk
                if self._buf[:1] in (b"\x15", b"\x16"):
                    raise _TlsReply
        packet, self._buf = found
        return packet

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            async with asyncio.timeout(self._timeout):
                await self._writer.wait_closed()


class _TlsReply(Exception):
    """The broker answered a plain CONNECT with a TLS record: it speaks TLS on this port."""


def _skip(checks: list[tuple[str, str]], why: str) -> list[Finding]:
    return [Finding(check, "skip", f"{what}: not checked ({why})") for check, what in checks]


_AFTER_TCP = [("tls", "TLS"), ("login", "login"), ("subscribe", "subscriptions")]


async def probe_broker(
    s: MqttSettings, password: str | None, filters: list[str], client_id: str
) -> list[Finding]:
    """Check the broker as the bridge would use it; one Finding per step, in order."""
    if client_id == s.client_id:
        raise ValueError("the check must not use the bridge's client id")
    where = f"{s.host}:{s.port}"
    loop = asyncio.get_running_loop()
    t = s.connect_timeout_s
    try:
        async with asyncio.timeout(t):
            infos = await loop.getaddrinfo(s.host, s.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, TimeoutError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else f"no answer in {t:g} s"
        dns = Finding(
            "dns",
            "fail",
            f"the broker's host name {s.host!r} does not resolve",
            str(why),
            f"check mqtt.host; try: getent hosts {s.host}",
        )
        return [dns, *_skip([("tcp", "broker reachable"), *_AFTER_TCP], "no address")]
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    out = [Finding("dns", "ok", f"broker host {s.host} resolves to {', '.join(addresses[:3])}")]
    sock, tcp_error = await _tcp_connect(infos, t)
    if sock is None:
        out.append(_tcp_failure(where, tcp_error, t))
        return out + _skip(_AFTER_TCP, "no connection")
    out.append(Finding("tcp", "ok", f"broker reachable: TCP connection to {where}"))
    return out + await _over_tcp(sock, s, password, filters, client_id)


async def _tcp_connect(
    infos: Sequence[tuple[int, int, int, str, Any]], t: float
) -> tuple[socket.socket | None, BaseException | None]:
    loop = asyncio.get_running_loop()
    error: BaseException | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(t):
                await loop.sock_connect(sock, address)
        except (OSError, TimeoutError) as exc:
            sock.close()
            error = exc
            continue
        return sock, None
    return None, error


def _tcp_failure(where: str, exc: BaseException | None, t: float) -> Finding:
    if isinstance(exc, ConnectionRefusedError):
        return Finding(
            "tcp",
            "fail",
            f"connection to {where} refused: nothing listens there",
            "",
            "start the broker, or check mqtt.host and mqtt.port",
        )
    if isinstance(exc, TimeoutError):
        return Finding(
            "tcp",
            "fail",
            f"no answer from {where} within {t:g} s",
            "",
            "a firewall drops the packets or the host is down; check mqtt.host, mqtt.port, "
            "and mqtt.connect_timeout_s",
        )
    why = getattr(exc, "strerror", None) or str(exc)
    return Finding("tcp", "fail", f"cannot connect to {where}", why, "check the network path")


async def _over_tcp(
    sock: socket.socket, s: MqttSettings, password: str | None, filters: list[str], cid: str
) -> list[Finding]:
    t = s.connect_timeout_s
    client_cert = s.tls.cert_file is not None
    tls = Finding("tls", "skip", "TLS: not used (mqtt.tls.enabled is false)")
    ctx = None
    if s.tls.enabled:
        try:
            ctx = tls_context(s.tls)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            bad = Finding(
                "tls",
                "fail",
                "the TLS files cannot be loaded",
                str(why),
                "check mqtt.tls.ca_file, mqtt.tls.cert_file and mqtt.tls.key_file",
                config=True,
            )
            return [bad, *_skip(_AFTER_TCP[1:], "no TLS")]
    try:
        async with asyncio.timeout(t):
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname=s.host if ctx else None
            )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        sock.close()
        summary, detail, fix = (
            ("TLS handshake timed out", f"no answer in {t:g} s", _TLS_FIX_PORT)
            if isinstance(exc, TimeoutError)
            else describe_tls_failure(exc, s.host, client_cert=client_cert)
        )
        return [Finding("tls", "fail", summary, detail, fix), *_skip(_AFTER_TCP[1:], "no TLS")]
    if ctx is not None:
        verified = "verified" if s.tls.verify else "NOT verified (mqtt.tls.verify: false)"
        tls = Finding("tls", "ok", f"TLS accepted; the broker's certificate is {verified}")
    link = _Link(reader, writer, t)
    try:
        return await _session(link, s=s, password=password, filters=filters, cid=cid, tls=tls)
    finally:
        await link.close()


async def _session(
    link: _Link,
    *,
    s: MqttSettings,
    password: str | None,
    filters: list[str],
    cid: str,
    tls: Finding,
) -> list[Finding]:
    """The TLS line, CONNECT and the subscriptions; a TLS failure found here (an alert, a
    hang-up right after the handshake) replaces the TLS line."""
    v5 = s.protocol == "v5"
    try:
        await link.send(
            pk.connect_packet(
                cid, v5=v5, keepalive_s=s.keepalive_s, username=s.username, password=password
            )
        )
        code = pk.connack_code(await link.packet())
    except _TlsReply:
        bad = Finding(
            "tls",
            "fail",
            "the broker speaks TLS on this port",
            "it answered CONNECT with a TLS record",
            "set mqtt.tls.enabled: true (and mqtt.tls.ca_file), or use the broker's plain port",
        )
        return [bad, *_skip(_AFTER_TCP[1:], "no TLS")]
    except ssl.SSLError as exc:
        # TLS 1.3: the broker checks the client certificate after the client's handshake is
        # done, so its refusal arrives as an alert on the first read.
        summary, detail, fix = describe_tls_failure(
            exc, s.host, client_cert=s.tls.cert_file is not None
        )
        return [Finding("tls", "fail", summary, detail, fix), *_skip(_AFTER_TCP[1:], "no TLS")]
    except (OSError, TimeoutError, asyncio.IncompleteReadError, pk.PacketError) as exc:
        if tls.status == "ok" and isinstance(exc, OSError | asyncio.IncompleteReadError):
            return [_closed_after_handshake(s, exc), *_skip(_AFTER_TCP[1:], "no TLS")]
        closed = "closed the connection" if not isinstance(exc, TimeoutError) else "did not answer"
        fix = "check that mqtt.port is the broker's MQTT port"
        if tls.status == "skip":
            fix += "; a TLS listener drops a plain client like this: set mqtt.tls.enabled: true"
        login = Finding("login", "fail", f"the broker {closed} instead of answering CONNECT",
                        type(exc).__name__, fix)  # fmt: skip
        return [tls, login, *_skip(_AFTER_TCP[2:], "no session")]
    user = f"as {s.username}" if s.username else "without a username"
    if code != 0:
        text, fix = pk.connack_reason(code, v5=v5)
        login = Finding(
            "login",
            "fail",
            f"login refused: {text} (CONNACK reason 0x{code:02X}, MQTT {'5' if v5 else '3.1.1'})",
            f"connected {user} with client id {cid}",
            fix,
        )
        return [tls, login, *_skip(_AFTER_TCP[2:], "not logged in")]
    login = Finding("login", "ok", f"login accepted {user} (check client id {cid})")
    return [tls, login, await _subscriptions(link, filters, v5=v5)]


def _closed_after_handshake(s: MqttSettings, exc: BaseException) -> Finding:
    """A TLS broker that hangs up between the handshake and CONNACK. In TLS 1.3 the broker
    checks the client certificate after the client considers the handshake done; its alert
    often loses the race with the connection reset, so the missing (or refused) certificate
    is inferred, and the line says it is an inference."""
    detail = f"the broker closed the connection after the TLS handshake ({type(exc).__name__})"
    if s.tls.cert_file is None:
        return Finding(
            "tls",
            "fail",
            "the broker most likely requires a client certificate (none is configured)",
            detail,
            "set mqtt.tls.cert_file and mqtt.tls.key_file to a certificate the broker's CA signed",
        )
    return Finding(
        "tls",
        "fail",
        "the broker most likely refused the client certificate",
        detail,
        "use a client certificate signed by the CA in the broker's cafile, for the right user",
    )


async def _subscriptions(link: _Link, filters: list[str], *, v5: bool) -> Finding:
    """One SUBSCRIBE per filter, so a broker that hangs up on one filter is pinned to it."""
    granted: list[str] = []
    refused: list[tuple[str, str, str]] = []
    unchecked: list[str] = []
    alive = True
    for n, topic_filter in enumerate(filters, start=1):
        try:
            await link.send(pk.subscribe_packet(n, topic_filter, v5=v5))
            codes = await _ack(link, n, pk.SUBACK, v5=v5)
        except TimeoutError:
            refused.append((topic_filter, "no SUBACK in time (mqtt.connect_timeout_s)",
                            "the broker is hung or overloaded; read its log"))  # fmt: skip
            unchecked, alive = filters[n:], False
            break
        except (OSError, asyncio.IncompleteReadError, pk.PacketError, ssl.SSLError) as exc:
            refused.append((topic_filter, f"the broker closed the connection on it ({exc})",
                            "the broker refuses this filter; read its log"))  # fmt: skip
            unchecked, alive = filters[n:], False
            break
        reason = pk.suback_reason(codes[0]) if codes else ("no reason code", "")
        if reason is None:
            granted.append(topic_filter)
        else:
            refused.append((topic_filter, reason[0] + f" (0x{codes[0]:02X})", reason[1]))
    if alive:
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError,
                                 pk.PacketError, ssl.SSLError):  # fmt: skip
            if granted:
                await link.send(pk.unsubscribe_packet(len(filters) + 1, granted, v5=v5))
                await _ack(link, len(filters) + 1, pk.UNSUBACK, v5=v5)
            await link.send(pk.disconnect_packet())
    if not filters:
        return Finding("subscribe", "skip", "subscriptions: the mapping file has no rules")
    if not refused:
        return Finding(
            "subscribe",
            "ok",
            f"subscriptions allowed: {len(granted)} filter(s) granted at QoS 1, then unsubscribed",
            ", ".join(granted),
        )
    lines = [f"{f}: {why}" for f, why, _ in refused]
    lines += [f"{f}: not checked (the connection was closed)" for f in unchecked]
    fixes = list(dict.fromkeys(fix for _, _, fix in refused if fix))
    return Finding(
        "subscribe",
        "fail",
        f"subscriptions: {len(refused)} of {len(filters)} filter(s) refused",
        "\n".join(lines),
        "; ".join(fixes),
    )


async def _ack(link: _Link, packet_id: int, kind: int, *, v5: bool) -> list[int]:
    """The reason codes of the SUBACK/UNSUBACK for ``packet_id``, passing over what the broker
    sends meanwhile (v3.1.1 retained messages on a filter just granted)."""
    while True:
        packet = await link.packet()
        if packet.kind == kind:
            return pk.ack_codes(packet, packet_id, kind, v5=v5)
        if packet.kind == pk.DISCONNECT:
            raise pk.PacketError(f"DISCONNECT 0x{pk.disconnect_reason(packet):02X}")
