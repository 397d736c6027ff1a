"""Bridge settings: defaults < settings file < environment < command-line flags.

Environment variables use the prefix ``METRIQO_BRIDGE_`` and ``__`` between section and key
(``METRIQO_BRIDGE_MQTT__HOST``); ``METRIQO_BRIDGE_TOKEN`` and ``METRIQO_BRIDGE_TOKEN_FILE`` are
short forms of ``api.token`` and ``api.token_file``. Every error names where the bad value came
from: ``file:line``, the variable's name, or the flag. pydantic is used only in config loaders.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from bridge.config.yamlfile import KeyPath, LineIndex, format_path, load_yaml_file
from bridge.errors import ConfigError, ConfigErrors

ENV_PREFIX = "METRIQO_BRIDGE_"
_ENV_ALIASES = {"TOKEN": ("api", "token"), "TOKEN_FILE": ("api", "token_file")}
# Read elsewhere: the settings file path, and test failpoints (bridge/failpoints.py).
_ENV_NOT_SETTINGS = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "FAILPOINTS"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    """TLS to the broker."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


class MqttSettings(_Section):
    """The broker connection and session."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    # "{hostname}" is replaced by the host's name: one settings file for every replica.
    client_id: str = Field("metriqo-bridge", min_length=1, max_length=128)
    # Subscribe through the shared subscription $share/<group>/<filter>: the broker hands each
    # message to one bridge of the group (scale-out; see docs/operations/scaling-out.md).
    share_group: str | None = None
    protocol: Literal["v5", "v311"] = "v5"
    session_expiry_s: int = Field(7 * 86400, ge=60, le=0xFFFFFFFF)
    keepalive_s: int = Field(30, ge=5, le=65535)
    receive_maximum: int = Field(1000, ge=1, le=65535)
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: TlsSettings = TlsSettings()
    max_payload_bytes: int = Field(65536, ge=16, le=256 * 1024 * 1024)


class ApiSettings(_Section):
    """The Metriqo API."""

    base_url: str = "https://metriqo.net/api/v2"
    token: SecretStr | None = None
    token_file: Path | None = None
    body: Literal["array", "object"] = "array"
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    total_timeout_s: float = Field(60.0, gt=0)
    requests_per_minute: float = Field(1000.0, gt=0)
    concurrency: int = Field(4, ge=1, le=64)
    retry_min_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(60.0, gt=0)
    allow_http: bool = False
    ca_file: Path | None = None
    # Bridges sharing the organization's budget (requests_per_minute): "static" gives each
    # requests_per_minute / replicas; "adaptive" starts there and lets each probe up to the
    # whole budget, halving on every 429, so together they settle under it.
    replicas: int = Field(1, ge=1, le=1000)
    budget_split: Literal["static", "adaptive"] = "static"


class BatchSettings(_Section):
    """Packing points into requests."""

    max_points: int = Field(100, ge=1, le=100)
    linger_s: float = Field(1.0, ge=0, le=300)
    # Which waiting points go first when there is a backlog: the oldest (the API receives
    # each device's points in time order) or the newest (dashboards stay current while the
    # backlog drains with whatever capacity is left).
    backlog_order: Literal["oldest-first", "live-first"] = "oldest-first"


class SpoolSettings(_Section):
    """The durable spool."""

    path: Path = Path("spool/metriqo-bridge.db")
    max_bytes: int = Field(1 << 30, ge=1 << 20)
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    commit_max_messages: int = Field(5000, ge=1)
    # Wait up to this long after the previous commit began before committing a small batch:
    # every commit costs an fsync and a thread round trip however few messages it holds, so at
    # live rates fewer, larger commits save CPU. A backlog (half the receive window waiting)
    # is committed at once. 0 commits whenever anything waits.
    commit_interval_s: float = Field(0.05, ge=0, le=1.0)
    dedup_window_s: float = Field(900.0, ge=0)
    # At the cap: withhold MQTT acknowledgements (the broker keeps the messages) or delete the
    # oldest waiting points, counted in points_dropped_total{reason="spool_full"}.
    when_full: Literal["back-pressure", "drop-oldest"] = "back-pressure"
    # Disk kept free beside the spool for the deletes that free space when the disk fills.
    reserve_bytes: int = Field(8 << 20, ge=0)


class MappingSettings(_Section):
    """The mapping file."""

    file: Path = Path("topic-mappings.yaml")
    max_future_s: float = Field(86400.0, ge=0)
    reload_interval_s: float = Field(2.0, ge=0)  # 0: reload only on SIGHUP
    coalesce_grace_s: float = Field(2.0, ge=0)  # how long a window stays open for late points


class HttpSettings(_Section):
    """The metrics and health endpoints."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9470, ge=0, le=65535)


class Settings(_Section):
    """All settings."""

    mqtt: MqttSettings = MqttSettings()
    api: ApiSettings = ApiSettings()
    batch: BatchSettings = BatchSettings()
    spool: SpoolSettings = SpoolSettings()
    mapping: MappingSettings = MappingSettings()
    http: HttpSettings = HttpSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text for a terminal or journald, json (one object per line) for log collectors.
    log_format: Literal["text", "json"] = "text"
    stop_timeout_s: float = Field(10.0, gt=0)


def load_settings(
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the layers and validate.

    Args:
        file: a YAML settings file (``--config`` or ``METRIQO_BRIDGE_CONFIG``).
        environ: the environment (defaults to ``os.environ``).
        overrides: ``section.key`` → value from command-line flags.

    Raises:
        ConfigError: naming file and line, variable, or flag of each bad value.
    """
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    origin: dict[KeyPath, str] = {}
    index: LineIndex | None = None
    if file is None and env.get(ENV_PREFIX + "CONFIG"):
        file = Path(env[ENV_PREFIX + "CONFIG"])
    if file is not None:
        data, index = load_yaml_file(file)
        if data is not None and not isinstance(data, dict):
            raise ConfigError("settings file must be a mapping of sections", file=str(file))
        for path, value in _leaves(data or {}):
            _put(merged, path, value)
            origin[path] = f"{file}:{index.line_of(path)}"
            for cut in range(1, len(path)):  # sections too, for errors about a whole section
                origin.setdefault(path[:cut], f"{file}:{index.line_of(path[:cut])}")
    if "LOG_FORMAT" in env:  # the common container convention; the prefixed name wins
        _put(merged, ("log_format",), env["LOG_FORMAT"].strip().lower())
        origin[("log_format",)] = "environment variable LOG_FORMAT"
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_SETTINGS:
            continue
        rest = name[len(ENV_PREFIX) :]
        path = _ENV_ALIASES.get(rest) or tuple(p.lower() for p in rest.split("__"))
        _put(merged, path, value)
        origin[path] = f"environment variable {name}"
    for dotted, value in (overrides or {}).items():
        path = tuple(dotted.split("."))
        _put(merged, path, value)
        origin[path] = f"command-line setting {dotted}"
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigErrors([_error(e, origin) for e in exc.errors()]) from None
    _check(settings, origin)
    if "{hostname}" in settings.mqtt.client_id:
        client_id = settings.mqtt.client_id.replace("{hostname}", socket.gethostname())
        if len(client_id) > 128:
            raise ConfigError(
                "longer than 128 characters once {hostname} is filled in",
                file=origin.get(("mqtt", "client_id"), "defaults"),
                key="mqtt.client_id",
            )
        settings = settings.model_copy(
            update={"mqtt": settings.mqtt.model_copy(update={"client_id": client_id})}
        )
    return settings


def _leaves(data: dict[str, Any], prefix: KeyPath = ()) -> list[tuple[KeyPath, Any]]:
    out: list[tuple[KeyPath, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.extend(_leaves(value, (*prefix, key)))
        else:
            out.append(((*prefix, key), value))
    return out


def _put(tree: dict[str, Any], path: KeyPath, value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(str(part), {})
        if not isinstance(child, dict):
            child = node[str(part)] = {}
        node = child
    node[str(path[-1])] = value


def _error(err: Any, origin: dict[KeyPath, str]) -> ConfigError:
    loc: KeyPath = tuple(err["loc"])
    where = "defaults"
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in origin:
            where = origin[loc[:cut]]
            break
    else:
        # A whole unknown section ("mqqt:"): its origin is that of the values set under it.
        under = [o for path, o in origin.items() if path[: len(loc)] == loc]
        if under:
            where = under[0]
    msg = "unknown setting" if err["type"] == "extra_forbidden" else str(err["msg"])
    # Input values are left out on purpose: the value may be a token or a password.
    return ConfigError(msg, file=where, key=format_path(loc))


def _check(s: Settings, origin: dict[KeyPath, str]) -> None:
    errors: list[ConfigError] = []

    def fail(path: KeyPath, message: str) -> None:
        errors.append(
            ConfigError(message, file=origin.get(path, "defaults"), key=format_path(path))
        )

    url = urlsplit(s.api.base_url)
    if url.scheme not in ("https", "http") or not url.hostname:
        fail(("api", "base_url"), "must be an http(s) URL such as https://metriqo.net/api/v2")
    elif url.scheme == "http" and not (is_loopback(url.hostname) or s.api.allow_http):
        fail(
            ("api", "base_url"),
            "plain http would send the token unencrypted; use https, a loopback address, "
            "or set api.allow_http: true",
        )
    if s.mqtt.reconnect_min_s > s.mqtt.reconnect_max_s:
        fail(("mqtt", "reconnect_min_s"), "must not exceed mqtt.reconnect_max_s")
    tls = s.mqtt.tls
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(tls, key)
        if value is not None and not Path(value).is_file():
            fail(("mqtt", "tls", key), f"file not found: {value}")
    if (tls.cert_file is None) != (tls.key_file is None):
        fail(("mqtt", "tls", "cert_file"), "cert_file and key_file must be given together")
    if s.api.ca_file is not None and not Path(s.api.ca_file).is_file():
        fail(("api", "ca_file"), f"file not found: {s.api.ca_file}")
    group = s.mqtt.share_group
    if group is not None and (not group or any(c in group for c in "/+#")):
        fail(("mqtt", "share_group"), "must be a non-empty name without '/', '+' or '#'")
    host = s.mqtt.host
    if not host or "://" in host or any(c in host for c in "/ \t@?#"):
        fail(("mqtt", "host"), "must be a host name or an IP address, e.g. broker.plant.local")
    problem = _unwritable(s.spool.path)
    if problem:
        fail(("spool", "path"), problem)
    if errors:
        raise ConfigErrors(errors)


def _unwritable(path: Path) -> str | None:
    """Why the spool cannot be created at ``path`` (None if it can, as far as we can tell)."""
    target = path.absolute()
    if target.is_dir():
        return f"{path} is a directory; give the path of the spool file inside it"
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory, so {path} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable (read-only or no permission), so {path} cannot be created"
    return None


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret_file(path: Path, what: str) -> str:
    """Read a token or password file, refusing one that others can read."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"{what} file cannot be read: {exc.strerror}", file=str(path)) from None
    problem = _exposure(st, _in_credentials_directory(path))
    if problem:
        raise ConfigError(f"{what} file is {problem}; run: chmod 600 {path}", file=str(path))
    if not text:
        raise ConfigError(f"{what} file is empty", file=str(path))
    return text


def _in_credentials_directory(path: Path) -> bool:
    """True for a systemd credential (``LoadCredential=``): systemd keeps those in a read-only
    directory private to the service, and newer versions grant the service user read access
    through an ACL on a root-owned 0440 file, which the group check below would refuse."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    return creds is not None and creds != "" and path.resolve().parent == Path(creds).resolve()


def _exposure(st: os.stat_result, credential: bool = False) -> str | None:
    """Why a secret file's permissions let others at it (None if they do not).

    Nothing for others, and nothing writable or executable by the group. Group *read* is
    accepted only when the file's group is one the bridge itself runs in: that is how
    Kubernetes mounts a Secret with ``fsGroup`` (0440, group = the pod's fsGroup) and how
    ``root:metriqo 0640`` files are shared with a service's own group; any other group is
    refused like others."""
    mode = st.st_mode
    if mode & stat.S_IRWXO:
        return "readable by group or others"
    if credential:
        return None
    if mode & (stat.S_IWGRP | stat.S_IXGRP):
        return "writable by its group"
    if mode & stat.S_IRGRP and st.st_gid not in {os.getgid(), os.getegid(), *os.getgroups()}:
        return "readable by group or others"
    return None


def resolve_token(s: Settings) -> str:
    """The API token from ``api.token_file`` (preferred) or ``api.token``."""
    if s.api.token_file is not None:
        return read_secret_file(s.api.token_file, "token")
    if s.api.token is not None and s.api.token.get_secret_value():
        return s.api.token.get_secret_value()
    raise ConfigError(
        "no API token: set METRIQO_BRIDGE_TOKEN_FILE (a 0600 file) or METRIQO_BRIDGE_TOKEN",
        key="api.token_file",
    )


def resolve_mqtt_password(s: Settings) -> str | None:
    """The broker password from ``mqtt.password_file`` or ``mqtt.password``."""
    if s.mqtt.password_file is not None:
        return read_secret_file(s.mqtt.password_file, "MQTT password")
    return s.mqtt.password.get_secret_value() if s.mqtt.password else None


def redacted(s: Settings) -> dict[str, Any]:
    """Settings as a plain dict with every secret replaced, for ``--print-config``."""
    return s.model_dump(mode="json")  # SecretStr dumps as '**********'


def file_key(path: Path) -> tuple[int, int, int, int, int] | None:
    """What identifies a file's current content and permissions (None if it cannot be
    stat'ed): inode, size, mode, mtime and ctime. ctime moves on a ``chmod`` or a ``cp -p``
    that keeps the old mtime, so those count as changes too."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)


class TokenSource:
    """Supplies the API token, re-reading ``api.token_file`` when it changes so a rotated
    token is used without a restart. A file that becomes unreadable keeps the last token."""

    def __init__(self, settings: Settings) -> None:
        self._file = settings.api.token_file
        self._token = resolve_token(settings)
        self._loaded = None if self._file is None else file_key(self._file)
        self._reported = self._loaded

    def __call__(self) -> str:
        if self._file is None:
            return self._token
        key = file_key(self._file)
        if key is not None and key != self._loaded:
            try:
                self._token = read_secret_file(self._file, "token")
                self._loaded = self._reported = key
            except ConfigError as exc:
                # Not marked as loaded: once the user fixes it (say, with chmod 600) the next
                # request picks it up. Logged once per change of the file.
                if key != self._reported:
                    self._reported = key
                    logging.getLogger(__name__).error("token file changed but is unusable: %s", exc)
        return self._token

    def __repr__(self) -> str:
        return "TokenSource(<redacted>)"
