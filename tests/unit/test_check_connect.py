"""The pure parts of ``check --connect``: the probe's packets, reason codes in words, the API's
answers as checklist lines, the exit code and the text rendering."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from bridge.cli.connect import api_finding, exit_code, mapping_finding, render
from bridge.cli.main import main
from bridge.errors import EX_CONFIG, EX_OK, EX_UNAVAILABLE, EX_USAGE
from bridge.mapping.identifiers import IdentifierLimits
from bridge.mqtt import probe_packets as pk
from bridge.mqtt.probe import Finding, check_client_id, describe_tls_failure
from bridge.sender import ApiAnswer

URL = "https://metriqo.example/api/v2"


def test_connect_is_a_clean_throwaway_session() -> None:
    """CONNECT sets Clean Start and, in v5, no Session Expiry Interval (0: the session ends
    with the connection); the login fields come last, in order."""
    v5 = pk.connect_packet("id-check-1", v5=True, keepalive_s=30, username="u", password="p")
    assert v5[0] == 0x10
    body = v5[2:]
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0x80 | 0x40 | 0x02
    assert body[8:10] == (30).to_bytes(2, "big")
    assert body[10] == 0  # an empty property list: no Session Expiry Interval
    assert body[11:] == b"\x00\x0aid-check-1\x00\x01u\x00\x01p"
    v311 = pk.connect_packet("c", v5=False, keepalive_s=5, username=None, password=None)
    assert v311 == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x05\x00\x01c"


def test_subscribe_asks_for_qos_1_without_retained_messages_in_v5() -> None:
    """SUBSCRIBE asks for QoS 1; in v5 with Retain Handling 2 (no retained messages)."""
    assert pk.subscribe_packet(7, "a/#", v5=True) == b"\x82\x09\x00\x07\x00\x00\x03a/#\x21"
    assert pk.subscribe_packet(7, "a/#", v5=False) == b"\x82\x08\x00\x07\x00\x03a/#\x01"


def test_packets_are_split_whole_and_acks_read_per_version() -> None:
    """A partial packet waits for more bytes; SUBACK codes are read past v5 properties."""
    suback_v5 = b"\x90\x06\x00\x03\x02\x1f\x00\x87"  # a property (reason string, empty)
    assert pk.split_packet(suback_v5[:5]) is None
    packet, rest = pk.split_packet(suback_v5 + b"\xe0") or (None, b"")
    assert packet is not None
    assert rest == b"\xe0"
    assert pk.ack_codes(packet, 3, pk.SUBACK, v5=True) == [0x87]
    v311 = pk.split_packet(b"\x90\x03\x00\x03\x80")
    assert v311 is not None
    assert pk.ack_codes(v311[0], 3, pk.SUBACK, v5=False) == [0x80]
    with pytest.raises(pk.PacketError):
        pk.ack_codes(v311[0], 4, pk.SUBACK, v5=False)
    with pytest.raises(pk.PacketError):
        pk.split_packet(b"\x90\xff\xff\xff\xff\x01")


@pytest.mark.parametrize(
    ("code", "v5", "text"),
    [
        (0x86, True, "bad username or password"),
        (0x87, True, "not authorized"),
        (0x85, True, "client id not valid"),
        (4, False, "bad username or password"),
        (5, False, "not authorized"),
        (2, False, "identifier rejected"),
        (0xEE, True, "refused with reason code 0xEE"),
    ],
)
def test_connack_codes_in_words(code: int, v5: bool, text: str) -> None:
    """Both versions' CONNACK codes have words and a fix; an unknown one shows its number."""
    words, fix = pk.connack_reason(code, v5=v5)
    assert words == text
    assert fix


def test_suback_codes() -> None:
    """QoS 1 and 2 are granted; QoS 0 is refused (messages could be lost); v5 and v3.1.1
    refusals have words."""
    assert pk.suback_reason(1) is None
    assert pk.suback_reason(2) is None
    granted_0 = pk.suback_reason(0)
    assert granted_0 is not None
    assert "QoS 0" in granted_0[0]
    assert pk.suback_reason(0x80) == pk.SUBACK_REFUSED[0x80]
    assert pk.suback_reason(0x87) == pk.SUBACK_REFUSED[0x87]


def test_the_check_never_uses_the_bridges_client_id() -> None:
    """The check's client id has the bridge's as a prefix and is never equal to it."""
    ids = {check_client_id("metriqo-bridge") for _ in range(20)}
    assert "metriqo-bridge" not in ids
    assert all(i.startswith("metriqo-bridge-check-") for i in ids)
    assert len(ids) == 20


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, message)
    exc.verify_code = code
    exc.verify_message = message
    return exc


@pytest.mark.parametrize(
    ("code", "summary", "fix"),
    [
        (10, "the broker's certificate has expired", "renew the broker's certificate"),
        (19, "signed by a CA this machine does not trust", "set mqtt.tls.ca_file"),
        (20, "signed by a CA this machine does not trust", "set mqtt.tls.ca_file"),
        (62, "the broker's certificate is not for mqtt.example", "set mqtt.host"),
        (64, "the broker's certificate is not for mqtt.example", "set mqtt.host"),
    ],
)
def test_certificate_failures_are_told_apart(code: int, summary: str, fix: str) -> None:
    """Expired, unknown CA and name mismatch each get their own words and fix."""
    got, _, got_fix = describe_tls_failure(
        _verify_error(code, "x"), "mqtt.example", client_cert=False
    )
    assert summary in got
    assert got_fix.startswith(fix)


def test_tls_alerts_are_told_apart() -> None:
    """A client certificate required, one refused, and a server not speaking TLS."""
    required = ssl.SSLError(1, "alert")
    required.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert describe_tls_failure(required, "h", client_cert=False)[0] == (
        "the broker requires a client certificate"
    )
    refused = ssl.SSLError(1, "alert")
    refused.reason = "TLSV1_ALERT_UNKNOWN_CA"
    assert (
        "refused the client certificate" in describe_tls_failure(refused, "h", client_cert=True)[0]
    )
    plain = ssl.SSLError(1, "x")
    plain.reason = "WRONG_VERSION_NUMBER"
    assert "does not speak TLS" in describe_tls_failure(plain, "h", client_cert=False)[0]


@pytest.mark.parametrize(
    ("answer", "status", "summary", "fix"),
    [
        (ApiAnswer(200, devices=3), "ok", "token accepted", ""),
        (ApiAnswer(401), "fail", "refused the token (401)", "api.token_file"),
        (ApiAnswer(403), "fail", "refuses access (403)", "issue a token"),
        (ApiAnswer(429, retry_after=12), "fail", "rate limit", "run the check again later"),
        (ApiAnswer(503), "fail", "server error (503)", "Metriqo's side"),
        (ApiAnswer(301, location="https://x/"), "fail", "redirects (301) to https://x/", "final"),
        (ApiAnswer(404), "fail", "no Metriqo API", "must end in /api/v2"),
        (ApiAnswer(None, "connection refused"), "fail", "not reachable", "network path"),
        (ApiAnswer(None, "no name", dns=True), "fail", "does not resolve", "getent hosts"),
        (
            ApiAnswer(None, "x", tls_error=_verify_error(19, "self-signed")),
            "fail",
            "TLS to the API failed: the API's certificate is signed by a CA",
            "set api.ca_file",
        ),
        (
            ApiAnswer(None, "x", tls_error=_verify_error(62, "Hostname mismatch")),
            "fail",
            "the API's certificate is not for metriqo.example",
            "set api.base_url",
        ),
    ],
)
def test_api_answers_as_lines(answer: ApiAnswer, status: str, summary: str, fix: str) -> None:
    """Each kind of API answer is one line with words and, when red, a fix."""
    line = api_finding(answer, URL)
    assert line.status == status
    assert summary in line.summary
    assert fix in line.fix
    if status == "fail":
        assert line.fix


def test_exit_codes() -> None:
    """0 all green (skipped lines included), 69 a red line, 78 when run would refuse the
    configuration itself."""
    ok = Finding("dns", "ok", "x")
    skip = Finding("tls", "skip", "x")
    red = Finding("tcp", "fail", "x")
    config = Finding("api", "fail", "x", config=True)
    assert exit_code([ok, skip]) == EX_OK
    assert exit_code([ok, red]) == EX_UNAVAILABLE
    assert exit_code([red, config]) == EX_CONFIG


def test_render_shows_detail_and_fix_of_red_lines_only() -> None:
    """Green lines are one line; red lines carry their detail and fix; colour only on ask."""
    text = render(
        [
            Finding("dns", "ok", "resolves", "hidden detail"),
            Finding("tcp", "fail", "refused", "errno 111", "start the broker"),
        ]
    )
    assert text == (
        "[ ok ] resolves\n[FAIL] refused\n       errno 111\n       fix: start the broker\n"
        "1 of 2 checks failed: fix the red lines above\n"
    )
    assert "\x1b[31m[FAIL]" in render([Finding("tcp", "fail", "x")], colour=True)


def test_mapping_line(tmp_path: Path) -> None:
    """A valid file gives its filters; an invalid one a red line naming the line, exit 78."""
    good = tmp_path / "m.yaml"
    good.write_text(
        'version: 1\nrules:\n  - {name: r, topic: "a/{d}", device_id: "{d}", metrics: {t: t}}\n',
        encoding="utf-8",
    )
    line, filters = mapping_finding(good, IdentifierLimits(), strict=False)
    assert line.status == "ok"
    assert filters == ["a/+"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - {name: r}\n", encoding="utf-8")
    line, filters = mapping_finding(bad, IdentifierLimits(), strict=False)
    assert line.status == "fail"
    assert line.config
    assert f"{bad}:3" in line.detail
    assert filters == []


def test_json_needs_connect(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``check --json`` without ``--connect`` is a usage error."""
    assert main(["check", "--json", str(tmp_path / "m.yaml")]) == EX_USAGE
    assert "--json needs --connect" in capsys.readouterr().err
