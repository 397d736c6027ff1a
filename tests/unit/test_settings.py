"""Unit tests of settings loading: layer precedence, error provenance and secret hygiene."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from bridge.config.loader import load_settings
from bridge.config.secrets import (
    TokenSource,
    is_loopback,
    read_secret_file,
    resolve_mqtt_password,
    resolve_token,
)
from bridge.errors import ConfigError, ConfigErrors
from bridge.settings import Settings
from bridge.state import default_state_dir

# Made-up secrets: each must never appear in an error message or a dump.
SECRET = "mqk_live_7f3d2a9b1c4e8f60aa55"
PASSWORD = "broker-pw-1c0ffee"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write ``text`` to ``path`` with permissions ``mode``."""
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def load_error(
    tmp_path: Path,
    file_text: str | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
) -> ConfigError:
    """The ConfigError raised for these layers (file written as settings.yaml)."""
    file = write(tmp_path / "settings.yaml", file_text) if file_text is not None else None
    with pytest.raises(ConfigError) as info:
        load_settings(file=file, environ=environ or {}, overrides=overrides)
    return info.value


def everything_said(err: ConfigError) -> str:
    """All text an error exposes: str, repr and every field of every sub-error."""
    parts = [str(err), repr(err)]
    for e in err.errors if isinstance(err, ConfigErrors) else [err]:
        parts += [str(e), repr(e), e.detail, e.key, str(e.file), repr(e.args)]
    return "\n".join(parts)


def test_defaults_apply_without_any_layer() -> None:
    """With no file, environment or flags the documented defaults are used."""
    s = load_settings(environ={})
    # The state directory depends on the user (root or not); the spool defaults inside it.
    state_dir = default_state_dir({}, os.geteuid(), Path.home())
    spool = dataclasses.replace(Settings().spool, path=state_dir / "spool.db")
    assert s == dataclasses.replace(Settings(), state_dir=state_dir, spool=spool)
    assert (s.mqtt.host, s.mqtt.port, s.delivery.max_points) == ("127.0.0.1", 1883, 100)
    assert s.sender.base_url.startswith("https://")


def test_precedence_is_defaults_then_file_then_env_then_flags(tmp_path: Path) -> None:
    """Each layer overrides the one before it key by key; untouched keys keep lower layers."""
    file = write(
        tmp_path / "settings.yaml",
        "mqtt:\n  host: file-host\n  port: 1884\n  keepalive_s: 40\nbatch:\n  linger_s: 2.5\n",
    )
    s = load_settings(
        file=file,
        environ={
            "METRIQO_BRIDGE_MQTT__PORT": "1885",
            "METRIQO_BRIDGE_MQTT__KEEPALIVE_S": "50",
            "METRIQO_BRIDGE_LOG_LEVEL": "DEBUG",
            "UNRELATED": "ignored",
        },
        overrides={"mqtt.port": "1886"},
    )
    assert s.mqtt.port == 1886  # flag beats env beats file
    assert s.mqtt.keepalive_s == 50  # env beats file
    assert s.mqtt.host == "file-host"  # file beats default
    assert s.delivery.linger_s == 2.5
    assert s.log_level == "DEBUG"
    assert s.mqtt.client_id == "metriqo-bridge"  # default


def test_config_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    """METRIQO_BRIDGE_CONFIG selects the settings file when no file argument is given."""
    file = write(tmp_path / "s.yaml", "http:\n  port: 9999\n")
    s = load_settings(environ={"METRIQO_BRIDGE_CONFIG": str(file)})
    assert s.http.port == 9999


def test_nested_env_keys_use_double_underscore(tmp_path: Path) -> None:
    """METRIQO_BRIDGE_MQTT__TLS__ENABLED sets mqtt.tls.enabled."""
    s = load_settings(environ={"METRIQO_BRIDGE_MQTT__TLS__ENABLED": "true"})
    assert s.mqtt.tls.enabled is True


def test_token_and_token_file_aliases(tmp_path: Path) -> None:
    """METRIQO_BRIDGE_TOKEN and _TOKEN_FILE set api.token and api.token_file."""
    token_file = write(tmp_path / "token", SECRET + "\n")
    s = load_settings(environ={"METRIQO_BRIDGE_TOKEN": SECRET})
    assert s.credentials.api_token is not None
    assert s.credentials.api_token.reveal() == SECRET
    assert resolve_token(s.credentials) == SECRET
    s = load_settings(environ={"METRIQO_BRIDGE_TOKEN_FILE": str(token_file)})
    assert s.credentials.api_token_file == token_file
    assert resolve_token(s.credentials) == SECRET


def test_token_file_is_preferred_over_token(tmp_path: Path) -> None:
    """When both are set the token file wins."""
    token_file = write(tmp_path / "token", "from-file")
    s = load_settings(
        environ={"METRIQO_BRIDGE_TOKEN": SECRET, "METRIQO_BRIDGE_TOKEN_FILE": str(token_file)}
    )
    assert resolve_token(s.credentials) == "from-file"


def test_missing_token_is_a_config_error() -> None:
    """Without token or token file resolve_token raises ConfigError naming the variables."""
    with pytest.raises(ConfigError, match="METRIQO_BRIDGE_TOKEN_FILE"):
        resolve_token(load_settings(environ={}).credentials)


def test_env_error_names_the_variable(tmp_path: Path) -> None:
    """A bad value from the environment is reported with the variable's name and key path."""
    err = load_error(tmp_path, environ={"METRIQO_BRIDGE_MQTT__PORT": "70000"})
    assert "environment variable METRIQO_BRIDGE_MQTT__PORT: mqtt.port: " in str(err)


def test_file_error_names_file_and_line(tmp_path: Path) -> None:
    """A bad value from the settings file is reported as file:line with the key path."""
    err = load_error(tmp_path, "mqtt:\n  host: h\n  port: 0\n")
    assert f"{tmp_path / 'settings.yaml'}:3: mqtt.port: " in str(err)


def test_flag_error_names_the_flag(tmp_path: Path) -> None:
    """A bad value from a command-line flag is reported with the flag's name."""
    err = load_error(tmp_path, overrides={"batch.max_points": "101"})
    assert "command-line setting batch.max_points: batch.max_points: " in str(err)


def test_unknown_settings_are_refused_with_their_origin(tmp_path: Path) -> None:
    """Unknown keys from file and environment are all reported, each with its origin."""
    err = load_error(tmp_path, "mqtt:\n  hots: x\n", environ={"METRIQO_BRIDGE_API__TOKN": "value"})
    assert isinstance(err, ConfigErrors)
    message = str(err)
    assert f"{tmp_path / 'settings.yaml'}:2: mqtt.hots: unknown setting" in message
    assert "environment variable METRIQO_BRIDGE_API__TOKN: api.tokn: unknown setting" in message


def test_settings_file_must_be_a_mapping(tmp_path: Path) -> None:
    """A settings file holding a list is refused naming the file."""
    err = load_error(tmp_path, "- a\n- b\n")
    assert str(tmp_path / "settings.yaml") in str(err)
    assert "mapping" in str(err)


def test_settings_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A YAML syntax error in the settings file names the file and line."""
    err = load_error(tmp_path, "mqtt:\n  host: [x\n  port: 1\n")
    assert f"{tmp_path / 'settings.yaml'}:3: YAML syntax error" in str(err)


@pytest.mark.parametrize(
    ("environ", "overrides", "file_text"),
    [
        ({"METRIQO_BRIDGE_MQTT__PORT": SECRET}, None, None),
        ({"METRIQO_BRIDGE_API__CONCURRENCY": SECRET}, None, None),
        ({"METRIQO_BRIDGE_API__ALLOW_HTTP": SECRET}, None, None),
        ({"METRIQO_BRIDGE_LOG_LEVEL": SECRET}, None, None),
        ({"METRIQO_BRIDGE_API": SECRET}, None, None),
        ({"METRIQO_BRIDGE_MQTT__PROTOCOL": SECRET}, None, None),
        ({}, {"mqtt.keepalive_s": SECRET}, None),
        ({}, {"api.body": SECRET}, None),
        ({}, None, f"api:\n  requests_per_minute: {SECRET}\n"),
        ({}, None, f"mqtt:\n  password: [{SECRET}]\n"),
        ({}, None, f"api:\n  token: {{nested: {SECRET}}}\n"),
        ({"METRIQO_BRIDGE_API__BASE_URL": f"http://user:{SECRET}@metriqo.net"}, None, None),
        ({"METRIQO_BRIDGE_API__BASE_URL": SECRET}, None, None),
    ],
)
def test_errors_never_contain_the_rejected_value(
    tmp_path: Path,
    environ: dict[str, str],
    overrides: dict[str, str] | None,
    file_text: str | None,
) -> None:
    """A token-like value in a wrong-typed field never appears in the error text."""
    err = load_error(tmp_path, file_text, environ, overrides)
    assert SECRET not in everything_said(err)


def test_errors_do_not_leak_a_valid_token_set_alongside(tmp_path: Path) -> None:
    """An error elsewhere does not print the (valid) token that is also configured."""
    err = load_error(
        tmp_path,
        environ={"METRIQO_BRIDGE_TOKEN": SECRET, "METRIQO_BRIDGE_MQTT__PASSWORD": PASSWORD},
        overrides={"mqtt.port": "0"},
    )
    said = everything_said(err)
    assert SECRET not in said
    assert PASSWORD not in said


@pytest.mark.parametrize(
    "url",
    ["http://metriqo.net/api/v2", "http://10.0.0.5:8080/api", "http://127.0.0.1.nip.io/api"],
)
def test_plain_http_to_a_remote_host_is_refused(tmp_path: Path, url: str) -> None:
    """An http:// API URL to a non-loopback host is refused, naming where it was set."""
    err = load_error(tmp_path, environ={"METRIQO_BRIDGE_API__BASE_URL": url})
    message = str(err)
    assert "environment variable METRIQO_BRIDGE_API__BASE_URL: api.base_url: plain http" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/api/v2",
        "http://localhost/api",
        "http://[::1]:9000/",
        "http://127.9.9.9",
    ],
)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    """An http:// URL to a loopback address is accepted (local test servers)."""
    s = load_settings(environ={"METRIQO_BRIDGE_API__BASE_URL": url})
    assert s.sender.base_url == url


def test_plain_http_can_be_allowed_explicitly() -> None:
    """api.allow_http: true accepts a remote http:// URL."""
    s = load_settings(
        environ={},
        overrides={"api.base_url": "http://gateway.plant/api", "api.allow_http": "true"},
    )
    assert s.sender.base_url == "http://gateway.plant/api"


@pytest.mark.parametrize("url", ["ftp://metriqo.net/api", "metriqo.net/api", "https://"])
def test_non_http_urls_are_refused(tmp_path: Path, url: str) -> None:
    """A base_url that is not an http(s) URL with a host is refused."""
    err = load_error(tmp_path, overrides={"api.base_url": url})
    assert "command-line setting api.base_url: api.base_url: must be an http(s) URL" in str(err)


def test_cross_field_checks_name_their_origin(tmp_path: Path) -> None:
    """Semantic checks (reconnect bounds, TLS files) report all problems with their origin."""
    err = load_error(
        tmp_path,
        "mqtt:\n  reconnect_min_s: 60\n  tls:\n    cert_file: /nonexistent/cert.pem\n",
    )
    assert isinstance(err, ConfigErrors)
    message = str(err)
    file = tmp_path / "settings.yaml"
    assert f"{file}:2: mqtt.reconnect_min_s: must not exceed" in message
    assert f"{file}:4: mqtt.tls.cert_file: file not found" in message
    assert "cert_file and key_file must be given together" in message


def test_is_loopback() -> None:
    """localhost and loopback IPs are loopback; other names and addresses are not."""
    assert is_loopback("localhost")
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("localhost.example.com")
    assert not is_loopback("metriqo.net")


FOREIGN_GID = 54321  # a group this test process is not in


@pytest.mark.parametrize(
    ("mode", "foreign_group"),
    [
        (0o644, False),
        (0o604, False),
        (0o700 | 0o004, False),
        (0o660, False),  # group-writable, even by the bridge's own group
        (0o610, False),
        (0o640, True),  # readable by a group the bridge is not in
        (0o440, True),
    ],
)
def test_read_secret_file_refuses_files_others_can_read(
    tmp_path: Path, mode: int, foreign_group: bool
) -> None:
    """A secret file open to others, writable by its group, or readable by a group the bridge
    is not in is refused with a chmod hint."""
    path = write(tmp_path / "token", SECRET, mode)
    if foreign_group:
        if os.geteuid() != 0:
            pytest.skip("giving a file to another group needs root")
        assert FOREIGN_GID not in {os.getgid(), *os.getgroups()}
        os.chown(path, -1, FOREIGN_GID)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        read_secret_file(path, "token")
    assert SECRET not in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_read_secret_file_accepts_owner_only_files(tmp_path: Path, mode: int) -> None:
    """A 0600 (or 0400) secret file is read, surrounding whitespace removed."""
    path = write(tmp_path / "token", f"  {SECRET}\n", mode)
    assert read_secret_file(path, "token") == SECRET


@pytest.mark.parametrize("mode", [0o640, 0o440])
def test_read_secret_file_accepts_group_read_by_the_bridges_own_group(
    tmp_path: Path, mode: int
) -> None:
    """Kubernetes mounts a Secret with fsGroup as 0440 owned by the pod's group; a file only
    the bridge's own group may read is accepted."""
    path = write(tmp_path / "token", f"{SECRET}\n", mode)
    os.chown(path, -1, os.getegid())
    assert read_secret_file(path, "token") == SECRET


def test_read_secret_file_refuses_missing_and_empty_files(tmp_path: Path) -> None:
    """A missing or blank secret file is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="token file not found"):
        read_secret_file(tmp_path / "absent", "token")
    with pytest.raises(ConfigError, match="token file is empty"):
        read_secret_file(write(tmp_path / "blank", " \n"), "token")


def test_mqtt_password_comes_from_file_or_setting(tmp_path: Path) -> None:
    """The broker password is read from password_file when set, else from mqtt.password."""
    assert resolve_mqtt_password(load_settings(environ={}).credentials) is None
    s = load_settings(environ={"METRIQO_BRIDGE_MQTT__PASSWORD": PASSWORD})
    assert resolve_mqtt_password(s.credentials) == PASSWORD
    pw_file = write(tmp_path / "pw", "from-file\n")
    s = load_settings(environ={"METRIQO_BRIDGE_MQTT__PASSWORD_FILE": str(pw_file)})
    assert resolve_mqtt_password(s.credentials) == "from-file"


def test_effective_settings_hide_the_token_and_password() -> None:
    """The effective settings (--print-config) replace the token and password and never
    contain their values; neither do the settings' repr and str."""
    s = load_settings(
        environ={"METRIQO_BRIDGE_TOKEN": SECRET, "METRIQO_BRIDGE_MQTT__PASSWORD": PASSWORD}
    )
    out = s.effective
    dumped = json.dumps(out)
    assert SECRET not in dumped
    assert PASSWORD not in dumped
    assert out["api"]["token"] == "**********"
    assert out["mqtt"]["password"] == "**********"
    assert out["mqtt"]["port"] == 1883
    assert SECRET not in repr(s)
    assert SECRET not in str(s)


def test_token_source_picks_up_a_rotated_file_even_when_only_its_mode_is_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new token file first refused for its mode is used once the user runs chmod 600, which
    leaves the mtime alone; the refusal is logged once, never with the token."""
    token_file = write(tmp_path / "token", SECRET + "\n")
    source = TokenSource(
        load_settings(environ={"METRIQO_BRIDGE_TOKEN_FILE": str(token_file)}).credentials
    )
    assert source() == SECRET
    new = write(tmp_path / "token.new", "mqk_live_rotated_0042\n", mode=0o644)
    stamp = token_file.stat().st_mtime_ns
    os.utime(new, ns=(stamp, stamp))  # as `cp -p` would: the old file's mtime
    new.rename(token_file)
    assert source() == SECRET  # group/world-readable: refused, the old token stays
    assert source() == SECRET
    token_file.chmod(0o600)
    assert source() == "mqk_live_rotated_0042"
    refusals = [r for r in caplog.records if "unusable" in r.getMessage()]
    assert len(refusals) == 1
    assert "mqk_live" not in caplog.text


def test_log_format_from_log_format_or_the_prefixed_variable() -> None:
    """LOG_FORMAT (the container convention) sets log_format; the prefixed variable wins; a bad
    value names the variable it came from."""
    assert load_settings(environ={}).log_format == "text"
    assert load_settings(environ={"LOG_FORMAT": "JSON"}).log_format == "json"
    both = {"LOG_FORMAT": "json", "METRIQO_BRIDGE_LOG_FORMAT": "text"}
    assert load_settings(environ=both).log_format == "text"
    with pytest.raises(ConfigError, match="environment variable LOG_FORMAT"):
        load_settings(environ={"LOG_FORMAT": "yaml"})


def test_a_systemd_credential_is_accepted_with_group_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newer systemd hands a credential over as a root-owned 0440 file with an ACL in a
    directory private to the service; inside $CREDENTIALS_DIRECTORY group-read is accepted,
    others-read is still refused, and the same file elsewhere is refused."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o500)
    path = write(creds / "metriqo-token", SECRET, 0o440)
    outside = write(tmp_path / "token", SECRET, 0o440)
    if os.geteuid() == 0:
        os.chown(path, -1, FOREIGN_GID)
        os.chown(outside, -1, FOREIGN_GID)
        with pytest.raises(ConfigError, match=r"its group \(.*\) can read it, and the bridge"):
            read_secret_file(outside, "token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret_file(path, "token") == SECRET
    path.chmod(0o444)
    with pytest.raises(ConfigError, match="mode 0444: others can read it"):
        read_secret_file(path, "token")


@pytest.mark.parametrize("group", ["", "a/b", "g+", "#"])
def test_share_group_must_be_a_plain_name(group: str) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.share_group"):
        load_settings(environ={"METRIQO_BRIDGE_MQTT__SHARE_GROUP": group})


def test_client_id_takes_the_hostname_so_replicas_can_share_one_file() -> None:
    import socket

    s = load_settings(environ={"METRIQO_BRIDGE_MQTT__CLIENT_ID": "metriqo-{hostname}"})
    assert s.mqtt.client_id == f"metriqo-{socket.gethostname()}"
    with pytest.raises(ConfigError, match="128 characters"):
        load_settings(environ={"METRIQO_BRIDGE_MQTT__CLIENT_ID": "x" * 120 + "{hostname}"})


def test_payload_cap_reaches_both_the_wire_and_the_mapper() -> None:
    """mqtt.max_payload_bytes is cut into the MQTT section (the wire streams larger payloads
    past) and the mapping section (the mapper dead-letters them as too_large)."""
    s = load_settings(environ={}, overrides={"mqtt.max_payload_bytes": "1000"})
    assert s.mqtt.max_payload_bytes == s.mapping.max_payload_bytes == 1000


def test_max_packet_size_must_leave_room_for_every_payload_the_bridge_accepts() -> None:
    """A Maximum Packet Size the broker would apply to payloads under the cap (plus the largest
    header) is refused: those messages would vanish without a trace."""
    s = load_settings(environ={}, overrides={"mqtt.max_packet_size": "1000000"})
    assert s.mqtt.max_packet_size == 1_000_000
    with pytest.raises(ConfigError, match=r"mqtt\.max_packet_size: must be at least"):
        load_settings(
            environ={},
            overrides={"mqtt.max_payload_bytes": "1048576", "mqtt.max_packet_size": "1100000"},
        )
