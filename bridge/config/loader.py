"""Loading the settings: defaults < settings file < environment < command-line flags.

Environment variables use the prefix ``METRIQO_BRIDGE_`` and ``__`` between section and key
(``METRIQO_BRIDGE_MQTT__HOST``); ``METRIQO_BRIDGE_TOKEN`` and ``METRIQO_BRIDGE_TOKEN_FILE`` are
short forms of ``api.token`` and ``api.token_file``. Every error names where the bad value came
from: ``file:line``, the variable's name, or the flag.

The merged layers are validated by :class:`~bridge.config.model.SettingsModel` and then cut into
the frozen runtime sections of :mod:`bridge.settings`, once; nothing past this module sees a
pydantic object.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr, ValidationError

from bridge import settings as rt
from bridge.config.model import SettingsModel
from bridge.config.pathnames import (
    DEFAULTS,
    NOT_SHOWN,
    NamedBy,
    about_path,
    looks_like_token,
    shown_path,
)
from bridge.config.secrets import is_loopback, secret_text_problem
from bridge.config.suggest import closest, keys_at, setting_paths
from bridge.config.yamlfile import KeyPath, LineIndex, format_path, load_yaml_file
from bridge.errors import ConfigError, ConfigErrors
from bridge.mqtt.wire import HEAD_ROOM as PACKET_HEAD_ROOM
from bridge.state import SPOOL_NAME, default_state_dir

ENV_PREFIX = "METRIQO_BRIDGE_"
_ENV_ALIASES = {"TOKEN": ("api", "token"), "TOKEN_FILE": ("api", "token_file")}
# Read elsewhere: the settings file path, and test failpoints (bridge/failpoints.py).
_ENV_NOT_SETTINGS = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "FAILPOINTS"})
_CREDENTIAL_KEYS = frozenset({"api.token", "api.token_file", "mqtt.password", "mqtt.password_file"})


def load_settings(
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> rt.Settings:
    """Merge the layers, validate, and cut the result into the runtime sections.

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
    named_by = NamedBy("command-line flag --config")
    index: LineIndex | None = None
    if file is None and env.get(ENV_PREFIX + "CONFIG"):
        file = Path(env[ENV_PREFIX + "CONFIG"])
        named_by = NamedBy(f"environment variable {ENV_PREFIX}CONFIG")
    if file is not None:
        data, index = load_yaml_file(file, named_by, masked=True)
        if data is not None and not isinstance(data, dict):
            raise ConfigError("settings file must be a mapping of sections", file=str(file))
        _from_file(data or {}, file, index, merged, origin)
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
        model = SettingsModel.model_validate(merged)
    except ValidationError as exc:
        raise ConfigErrors([_error(e, origin, index) for e in exc.errors()]) from None
    model = _place(model, env)
    _check(model, origin)
    if "{hostname}" in model.mqtt.client_id:
        client_id = model.mqtt.client_id.replace("{hostname}", socket.gethostname())
        if len(client_id) > 128:
            raise ConfigError(
                "longer than 128 characters once {hostname} is filled in",
                file=origin.get(("mqtt", "client_id"), "defaults"),
                key="mqtt.client_id",
            )
        model = model.model_copy(
            update={"mqtt": model.mqtt.model_copy(update={"client_id": client_id})}
        )
    return _cut(model, {format_path(path): where for path, where in origin.items()})


def _place(m: SettingsModel, env: Mapping[str, str]) -> SettingsModel:
    """Absolute ``state_dir`` and ``spool.path`` (the spool inside the state directory unless
    set), so no command's result depends on the directory it was started from by accident."""
    state_dir = _absolute(m.state_dir or default_state_dir(env, os.geteuid(), Path.home()))
    spool = _absolute(m.spool.path or state_dir / SPOOL_NAME)
    return m.model_copy(
        update={"state_dir": state_dir, "spool": m.spool.model_copy(update={"path": spool})}
    )


def _absolute(path: Path) -> Path:
    """``path`` made absolute, unless it is a token (or a value with control characters)
    pasted into a path setting: that stays as given, so the checks recognise and refuse it."""
    if looks_like_token(path) or secret_text_problem(str(path), spaces=False) is not None:
        return path
    return path.absolute()


def default_settings() -> rt.Settings:
    """The settings when nothing is configured (no file, no environment, no flags)."""
    return load_settings(environ={})


def _cut(m: SettingsModel, origins: dict[str, str]) -> rt.Settings:
    """One frozen section per component, from the user's sections (``api`` and ``batch``
    feed the sender and delivery; ``spool`` the store and the group commit). ``origins``:
    dotted key → where it was set."""
    mq, api, batch, spool = m.mqtt, m.api, m.batch, m.spool
    return rt.Settings(
        mqtt=rt.MqttSettings(
            host=mq.host,
            port=mq.port,
            client_id=mq.client_id,
            share_group=mq.share_group,
            protocol=mq.protocol,
            session_expiry_s=mq.session_expiry_s,
            keepalive_s=mq.keepalive_s,
            receive_maximum=mq.receive_maximum,
            connect_timeout_s=mq.connect_timeout_s,
            reconnect_min_s=mq.reconnect_min_s,
            reconnect_max_s=mq.reconnect_max_s,
            username=mq.username,
            tls=rt.TlsSettings(**mq.tls.model_dump()),
            max_payload_bytes=mq.max_payload_bytes,
            max_packet_size=mq.max_packet_size,
        ),
        sender=rt.SenderSettings(
            base_url=api.base_url,
            body=api.body,
            connect_timeout_s=api.connect_timeout_s,
            read_timeout_s=api.read_timeout_s,
            total_timeout_s=api.total_timeout_s,
            ca_file=api.ca_file,
        ),
        delivery=rt.DeliverySettings(
            max_points=batch.max_points,
            linger_s=batch.linger_s,
            order=batch.backlog_order,
            concurrency=api.concurrency,
            requests_per_minute=api.requests_per_minute,
            replicas=api.replicas,
            adaptive=api.budget_split == "adaptive",
            retry_min_s=api.retry_min_s,
            retry_max_s=api.retry_max_s,
            single_object=api.body == "object",
            audit_queries_per_minute=api.audit_queries_per_minute,
        ),
        spool=rt.SpoolSettings(
            path=spool.path or Path(SPOOL_NAME),  # never None: _place set it
            max_bytes=spool.max_bytes,
            synchronous=spool.synchronous,
            dedup_window_s=spool.dedup_window_s,
            when_full=spool.when_full,
            reserve_bytes=spool.reserve_bytes,
            fair_share=spool.fair_share,
            fair_share_at=spool.fair_share_at,
            held_max_bytes=spool.held_max_bytes,
            audit_retention_s=spool.audit_retention_s,
            audit_max_rows=spool.audit_max_rows,
            max_delivered_devices=spool.max_delivered_devices,
        ),
        dead_letters=rt.DeadLetterSettings(**m.dead_letters.model_dump()),
        commit=rt.CommitSettings(
            max_messages=spool.commit_max_messages,
            interval_s=spool.commit_interval_s,
            spacing=spool.commit_spacing,
            backlog=max(1, mq.receive_maximum // 2),
        ),
        mapping=rt.MappingSettings(
            file=m.mapping.file,
            max_payload_bytes=mq.max_payload_bytes,
            max_future_s=m.mapping.max_future_s,
            reload_interval_s=m.mapping.reload_interval_s,
            coalesce_grace_s=m.mapping.coalesce_grace_s,
            max_device_id_length=m.mapping.max_device_id_length,
            max_metric_name_length=m.mapping.max_metric_name_length,
            sparkplug_park_max_age_s=m.mapping.sparkplug_park_max_age_s,
            sparkplug_park_max_messages=m.mapping.sparkplug_park_max_messages,
            sparkplug_park_max_bytes=m.mapping.sparkplug_park_max_bytes,
        ),
        http=rt.HttpSettings(**m.http.model_dump()),
        sparkplug=rt.SparkplugSettings(**m.sparkplug.model_dump()),
        credentials=rt.Credentials(
            api_token=_secret(api.token),
            api_token_file=api.token_file,
            mqtt_password=_secret(mq.password),
            mqtt_password_file=mq.password_file,
            origins={k: v for k, v in origins.items() if k in _CREDENTIAL_KEYS},
        ),
        log_level=m.log_level,
        log_format=m.log_format,
        stop_timeout_s=m.stop_timeout_s,
        state_dir=m.state_dir or Path(),  # never None: _place set it
        log_progress_s=m.log_progress_s,
        event_loop=m.event_loop,
        effective=m.model_dump(mode="json"),  # SecretStr dumps as '**********'
        origins=origins,
    )


def _secret(value: SecretStr | None) -> rt.Secret | None:
    return None if value is None else rt.Secret(value.get_secret_value())


def _from_file(
    data: dict[str, Any],
    file: Path,
    index: LineIndex,
    merged: dict[str, Any],
    origin: dict[KeyPath, str],
) -> None:
    for path, value in _leaves(data):
        _put(merged, path, value)
        origin[path] = f"{file}:{index.line_of(path)}"
        for cut in range(1, len(path)):  # sections too, for errors about a whole section
            origin.setdefault(path[:cut], f"{file}:{index.line_of(path[:cut])}")


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


def _error(err: Any, origin: dict[KeyPath, str], index: LineIndex | None) -> ConfigError:
    loc: KeyPath = tuple(err["loc"])
    where = "defaults"
    found: KeyPath = ()
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in origin:
            where, found = origin[loc[:cut]], loc[:cut]
            break
    else:
        # A whole unknown section ("mqqt:"): its origin is that of the values set under it.
        under = [(o, path) for path, o in origin.items() if path[: len(loc)] == loc]
        if under:
            where, found = under[0]
    unknown = err["type"] == "extra_forbidden"
    msg = "unknown setting" + _suggestion(loc, where) if unknown else str(err["msg"])
    # Input values are left out on purpose: the value may be a token or a password. A note on
    # what YAML 1.1 made of the value quotes it: only for a setting that cannot be a secret.
    if index is not None and found in index.notes and format_path(loc) not in _CREDENTIAL_KEYS:
        msg = f"{msg}; {index.notes[found]}"
    if index is not None and where.startswith(f"{index.file}:") and found:
        column = index.column_of(found, value=not unknown)
        return index.at(index.line_of(found), column, msg, format_path(loc))
    return ConfigError(msg, file=where, key=format_path(loc))


def _suggestion(loc: KeyPath, where: str) -> str:
    """``; did you mean …?`` in the form the unknown setting was written in: a variable's
    name, a ``--set`` key, or a key of the file's section (names only, never a value)."""
    paths = setting_paths(SettingsModel)
    if where.startswith("environment variable "):
        written = where.rsplit(" ", 1)[-1]
        names = [ENV_PREFIX + "__".join(p).upper() for p in paths]
        names += [ENV_PREFIX + alias for alias in _ENV_ALIASES]
        # METRIQO_BRIDGE_MQTT_HOST: one underscore where the section ends.
        same = [n for n in names if n.replace("__", "_") == written.replace("__", "_")]
        match = same[0] if same else closest(written, names)
    elif where.startswith("command-line setting "):
        match = closest(".".join(map(str, loc)), [".".join(p) for p in paths])
    else:
        match = closest(str(loc[-1]), keys_at(SettingsModel, loc[:-1]))
        if match is not None:
            match = ".".join([*map(str, loc[:-1]), match])
        else:  # a key of another section ("host:" at the top)
            elsewhere = [".".join(p) for p in paths if p[-1] == str(loc[-1]).lower()]
            match = elsewhere[0] if elsewhere else None
    return f"; did you mean {match}?" if match else ""


def _check(s: SettingsModel, origin: dict[KeyPath, str]) -> None:
    """What the types cannot say: URL schemes, files that must exist, names brokers refuse."""
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
    if s.mqtt.max_packet_size < s.mqtt.max_payload_bytes + PACKET_HEAD_ROOM:
        fail(
            ("mqtt", "max_packet_size"),
            f"must be at least mqtt.max_payload_bytes + {PACKET_HEAD_ROOM} (the largest topic "
            "and properties): the broker would silently drop messages the bridge accepts",
        )
    _check_secrets(s, fail)
    misplaced = _check_paths(s, origin, fail)
    tls = s.mqtt.tls
    for path in (
        ("mqtt", "tls", "ca_file"),
        ("mqtt", "tls", "cert_file"),
        ("mqtt", "tls", "key_file"),
        ("api", "ca_file"),
    ):
        value = _value(s, path)
        if isinstance(value, Path) and path not in misplaced:
            problem = _not_a_file(value)
            if problem:
                fail(path, about_path(problem, value, origin.get(path, DEFAULTS)))
    if (tls.cert_file is None) != (tls.key_file is None):
        fail(("mqtt", "tls", "cert_file"), "cert_file and key_file must be given together")
    group = s.mqtt.share_group
    if group is not None and (not group or any(c in group for c in "/+#")):
        fail(("mqtt", "share_group"), "must be a non-empty name without '/', '+' or '#'")
    host = s.mqtt.host
    if not host or "://" in host or any(c in host for c in "/ \t@?#"):
        fail(("mqtt", "host"), "must be a host name or an IP address, e.g. broker.plant.local")
    spool = s.spool.path or Path(SPOOL_NAME)  # absolute by now: _place
    shown = shown_path(spool, origin.get(("spool", "path"), DEFAULTS))
    problem = None if ("spool", "path") in misplaced else _unwritable(spool, shown)
    if problem:
        fail(("spool", "path"), problem)
    state_dir = s.state_dir
    is_file = state_dir is not None and state_dir.exists() and not state_dir.is_dir()
    if is_file and state_dir is not None and ("state_dir",) not in misplaced:
        fail(("state_dir",), about_path("not a directory", state_dir, DEFAULTS))
    if errors:
        raise ConfigErrors(errors)


def path_settings(model: type[BaseModel] = SettingsModel, prefix: KeyPath = ()) -> list[KeyPath]:
    """Every setting whose value is a path (``Path`` or ``Path | None``), found in the model so
    that a new one is covered by the checks below (and by their tests) without a list to keep."""
    out: list[KeyPath] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(path_settings(annotation, (*prefix, name)))
        elif annotation is Path or Path in get_args(annotation):
            out.append((*prefix, name))
    return out


def _value(s: SettingsModel, path: KeyPath) -> Any:
    node: Any = s
    for part in path:
        node = getattr(node, str(part))
    return node


def _check_paths(s: SettingsModel, origin: dict[KeyPath, str], fail: Any) -> set[KeyPath]:
    """A token pasted into a path setting, or a path with a control character in it (a line
    break from a Secret or ConfigMap value): refused without echoing the value. Returns the
    settings refused, so nothing else reports them again."""
    refused: set[KeyPath] = set()
    for path in path_settings():
        value = _value(s, path)
        if value is None:
            continue
        if looks_like_token(value):
            fail(
                path,
                "this looks like an API token, not a path (the value is not shown); write the "
                "token into a file only the bridge can read and give that file's path, or set "
                "METRIQO_BRIDGE_TOKEN",
            )
            refused.add(path)
            continue
        bad = secret_text_problem(str(value), spaces=False)
        if bad is not None:
            fail(path, f"the path holds {bad}; a path has no control characters {NOT_SHOWN}")
            refused.add(path)
    return refused


def _check_secrets(s: SettingsModel, fail: Any) -> None:
    """A token or password set directly, with a character it cannot hold (a line break from
    ``kubectl create secret --from-file``, a stray space): refused, never echoed. (Their files
    are read, and checked the same way, by :mod:`bridge.config.secrets`.)"""
    for path, value, what in (
        (("api", "token"), s.api.token, "token"),
        (("mqtt", "password"), s.mqtt.password, "password"),
    ):
        if value is None:
            continue
        bad = secret_text_problem(value.get_secret_value(), header=what == "token")
        if bad is not None:
            fail(
                path,
                f"the {what} holds {bad}; a {what} has no whitespace, control or invisible "
                "characters",
            )


def _not_a_file(path: Path) -> str | None:
    if not path.exists():
        return "file not found"
    if path.is_dir():
        return "is a directory, expected a file"
    return None


def _unwritable(path: Path, shown: str | None) -> str | None:
    """Why the spool cannot be created at ``path`` (None if it can, as far as we can tell);
    ``shown``: the path as the message may show it (None: not at all)."""
    target = path.absolute()
    if target.is_dir():
        return f"{shown or 'it'} is a directory; give the path of the spool file inside it"
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        if shown is None:
            return f"part of its directory is a file, so it cannot be created {NOT_SHOWN}"
        return f"{parent} is not a directory, so {shown} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        if shown is None:
            return f"its directory is not writable (read-only or no permission) {NOT_SHOWN}"
        return (
            f"{parent} is not writable (read-only or no permission), so {shown} cannot be created"
        )
    return None
