"""Row 23 of the reliability matrix (and the permission half of row 20) as start-up cases for
``tests/faults/test_config_errors_at_start.py``: secrets with characters they cannot hold, a
secret pasted into a path setting, and token and password files others could read or replace.

The path settings are found in the settings model (by type, or by a name that says path), not
listed here, so a new one is covered without touching this file.
"""

from __future__ import annotations

import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bridge.config.model import SettingsModel
from tests.support import TOKEN
from tests.support.config_errors import DIR, StartCase, unshare_works

# Keeps a bridge that accepts its configuration away from the machine's own broker (1883) and
# from the network: on the base code several of these cases start instead of exiting 78.
OFFLINE = ("--mqtt-port", "1", "--api-base-url", "http://127.0.0.1:9/api/v2")
# A password that is no token: only the "names nothing on this machine" rule hides it.
PASSWORD = "Tr0ub4dor-and-3-h0rses"
_PATHLIKE = ("file", "path", "dir")
_OWN_PATHS = {"spool.path": "{d}/spool/bridge.db", "mapping.file": "{d}/m.yaml"}
_NOT_SHOWN = "(the value is not shown"


def path_settings(model: type[BaseModel] = SettingsModel, prefix: str = "") -> list[str]:
    """Every setting that holds a path: typed ``Path`` (or ``Path | None``), or named like one
    (``*_file``, ``*_path``, ``*dir``), in the settings model."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.extend(path_settings(annotation, f"{prefix}{name}."))
        elif annotation is Path or Path in typing.get_args(annotation) or name.endswith(_PATHLIKE):
            out.append(prefix + name)
    return out


def env_name(key: str) -> str:
    """The variable that sets ``key``."""
    return "METRIQO_BRIDGE_" + key.upper().replace(".", "__")


def _yaml(key: str, value: str) -> str:
    """A settings file setting ``key`` (on line ``key.count('.') + 1``) and the case's own
    spool and mapping paths."""
    parts = key.split(".")
    text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parts[:-1]))
    text += f"{'  ' * (len(parts) - 1)}{parts[-1]}: '{value}'\n"
    for own, path in _OWN_PATHS.items():
        section, leaf = own.split(".")
        if section != parts[0]:
            text += f"{section}:\n  {leaf}: '{path}'\n"
    return text


def _pasted(key: str, value: str, via: str, *fragments: str) -> StartCase:
    if via == "yaml":
        line = key.count(".") + 1
        return StartCase(
            args=("--config", "{d}/s.yaml", *OFFLINE),
            files={"s.yaml": _yaml(key, value)},
            stderr=(f"{{d}}/s.yaml:{line}: {key}: ", *fragments),
            hidden=(value,),
            own_paths=True,
        )
    env: dict[str, str | None] = {env_name(k): v for k, v in _OWN_PATHS.items()}
    env[env_name(key)] = value
    return StartCase(
        args=OFFLINE,
        env=env,
        stderr=(f"environment variable {env_name(key)}: {key}: ", *fragments),
        hidden=(value,),
        own_paths=True,
    )


def _pasted_cases() -> dict[str, StartCase]:
    cases: dict[str, StartCase] = {}
    for key in path_settings():
        for via in ("yaml", "env"):
            cases[f"token-pasted-into-{key}-{via}"] = _pasted(
                key, TOKEN, via, "this looks like an API token, not a path"
            )
        # The bridge creates the spool and the state directory: any name will do for them.
        if key not in ("spool.path", "state_dir"):
            cases[f"password-pasted-into-{key}-env"] = _pasted(key, PASSWORD, "env", _NOT_SHOWN)
    return cases


def _token_file(
    content: object,
    *fragments: str,
    files: dict[str, object] | None = None,
    modes: dict[str, int] | None = None,
    path: str = "{d}/token",
    **changes: Any,
) -> StartCase:
    """The token from ``path`` (by default ``{d}/token`` holding ``content``, mode 0600); the
    first fragment is what follows ``api.token_file: token file`` in the message."""
    own: dict[str, object] = {} if content is None else {"token": content}
    case = StartCase(
        args=OFFLINE,
        files={**own, **(files or {})},
        modes={**({} if content is None else {"token": 0o600}), **(modes or {})},
        env={"METRIQO_BRIDGE_TOKEN": None, "METRIQO_BRIDGE_TOKEN_FILE": path},
        stderr=tuple(f"api.token_file: token file {f}" for f in fragments[:1]) + fragments[1:],
    )
    return replace(case, **changes)


def _in_directory(mode: int, *fragments: str, **changes: object) -> StartCase:
    """The token in ``{d}/sec/token`` (0600), the directory ``sec`` of ``mode``."""
    return _token_file(
        None,
        *fragments,
        files={"sec": DIR, "sec/token": TOKEN},
        modes={"sec/token": 0o600, "sec": mode},
        path="{d}/sec/token",
        **changes,
    )


_DIR_MESSAGE = "{d}/sec/token: directory {d}/sec has mode %s: %s can write to it, so they could "
_TWO_LINES = (
    "{d}/token: the token holds a line break (U+000A) inside it (the file holds more than one line)"
)

SECRET_CASES: dict[str, StartCase] = {
    **_pasted_cases(),
    # -- a secret in the path of the settings file itself, or where a KEY=VALUE belongs
    "token-as-config-env": StartCase(
        env={"METRIQO_BRIDGE_CONFIG": TOKEN},
        stderr=("environment variable METRIQO_BRIDGE_CONFIG: file not found " + _NOT_SHOWN,),
    ),
    "token-as-config-flag": StartCase(
        args=("--config", TOKEN),
        stderr=("command-line flag --config: file not found " + _NOT_SHOWN,),
    ),
    "token-as-token-file-variable": StartCase(
        env={"METRIQO_BRIDGE_TOKEN_FILE": TOKEN},
        stderr=(
            "environment variable METRIQO_BRIDGE_TOKEN_FILE: api.token_file: this looks like "
            "an API token, not a path",
        ),
    ),
    "token-as-set-item": StartCase(
        args=("--set", TOKEN), stderr=("--set expects KEY=VALUE; an item has no '='",)
    ),
    # -- characters a token or password cannot hold
    "token-file-of-two-lines": _token_file(f"{TOKEN}\nmqk_test_second-line\n", _TWO_LINES),
    "token-file-not-utf8": _token_file(b"mqk_test_\xff\xfe\n", "{d}/token is not UTF-8 text"),
    "token-file-with-a-bom-starts": _token_file(
        b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n", code=0, starts=True
    ),
    "token-variable-with-a-line-break-inside": StartCase(
        args=OFFLINE,
        env={"METRIQO_BRIDGE_TOKEN": TOKEN + "\nmqk_test_second-line"},
        stderr=(
            "environment variable METRIQO_BRIDGE_TOKEN: api.token: the token holds a line "
            "break (U+000A) inside it",
        ),
        hidden=("mqk_test_second-line",),
    ),
    "token-variable-with-a-line-break-at-its-end": StartCase(
        args=OFFLINE,
        env={"METRIQO_BRIDGE_TOKEN": TOKEN + "\n"},
        stderr=("api.token: the token holds a line break (U+000A) at its end",),
    ),
    "token-in-settings-with-a-space": StartCase(
        args=("--config", "{d}/s.yaml", *OFFLINE),
        files={"s.yaml": "api:\n  token: 'mqk_test_half one-half'\n"},
        env={"METRIQO_BRIDGE_TOKEN": None},
        stderr=("{d}/s.yaml:2: api.token: the token holds a space (U+0020) inside it",),
        hidden=("half one",),
    ),
    "password-file-with-a-tab": StartCase(
        args=("--set", "mqtt.password_file={d}/pw", *OFFLINE),
        files={"pw": "Tr0ub4dor\t&3\n"},
        modes={"pw": 0o600},
        stderr=(
            "mqtt.password_file: MQTT password file {d}/pw: the MQTT password holds a tab "
            "(U+0009) inside it",
        ),
        hidden=("Tr0ub4dor",),
    ),
    "password-variable-with-an-escape": StartCase(
        args=OFFLINE,
        env={"METRIQO_BRIDGE_MQTT__PASSWORD": "Tr0ub4dor\x1b[2J"},
        stderr=(
            "environment variable METRIQO_BRIDGE_MQTT__PASSWORD: mqtt.password: the password "
            "holds a control character (U+001B) inside it",
        ),
        hidden=("Tr0ub4dor",),
    ),
    # -- files and directories others could read or replace
    "token-file-0602-others-can-write": _token_file(
        TOKEN,
        "{d}/token has mode 0602: others can write it; run: chmod 600 {d}/token",
        modes={"token": 0o602},
    ),
    "token-file-0660-group-can-write": _token_file(
        TOKEN, "{d}/token has mode 0660: its group can write it", modes={"token": 0o660}
    ),
    "token-directory-0777": _in_directory(
        0o777,
        _DIR_MESSAGE % ("0777", "its group and others"),
        "replace the file; run: chmod go-w {d}/sec (or chmod +t {d}/sec, the sticky bit)",
    ),
    "token-directory-0757-others-can-write": _in_directory(
        0o757, _DIR_MESSAGE % ("0757", "others"), "chmod o-w {d}/sec"
    ),
    "token-directory-0775-group-can-write": _in_directory(
        0o775, _DIR_MESSAGE % ("0775", "its group"), "chmod g-w {d}/sec"
    ),
    "token-directory-above-0777": _token_file(
        None,
        "{d}/open/sec/token: directory {d}/open has mode 0777",
        files={"open": DIR, "open/sec": DIR, "open/sec/token": TOKEN},
        modes={"open/sec/token": 0o600, "open/sec": 0o700, "open": 0o777},
        path="{d}/open/sec/token",
    ),
    "token-directory-1777-sticky-starts": _in_directory(0o1777, code=0, starts=True),
    "token-directory-0777-read-only-mount-starts": _in_directory(
        0o777,
        code=0,
        starts=True,
        # A private read-only bind mount of {d}/sec, in a user + mount namespace.
        wrap=(
            "unshare",
            "-rm",
            "sh",
            "-c",
            'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"',
            "{d}/sec",
        ),
        skip=None if unshare_works() else "needs unshare -rm for a read-only bind mount",
    ),
    "password-file-0602-others-can-write": StartCase(
        args=("--set", "mqtt.password_file={d}/pw", *OFFLINE),
        files={"pw": "Tr0ub4dor-and-3\n"},
        modes={"pw": 0o602},
        stderr=(
            "mqtt.password_file: MQTT password file {d}/pw has mode 0602: others can write it; "
            "run: chmod 600 {d}/pw",
        ),
    ),
    "password-directory-0777": StartCase(
        args=("--set", "mqtt.password_file={d}/sec/pw", *OFFLINE),
        files={"sec": DIR, "sec/pw": "Tr0ub4dor-and-3\n"},
        modes={"sec/pw": 0o600, "sec": 0o777},
        stderr=(
            "mqtt.password_file: MQTT password file {d}/sec/pw: directory {d}/sec has mode "
            "0777: its group and others can write to it",
        ),
    ),
    "password-file-error-names-its-setting": StartCase(
        args=("--config", "{d}/s.yaml", *OFFLINE),
        files={"s.yaml": "mqtt:\n  password_file: '{d}/pw'\n", "pw": "Tr0ub4dor-and-3\n"},
        modes={"pw": 0o644},
        stderr=("{d}/s.yaml:2: mqtt.password_file: MQTT password file {d}/pw has mode 0644",),
    ),
}
