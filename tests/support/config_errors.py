"""The start-up configuration errors of the reliability matrix (rows 17, 18 and 20) as a table
(the secrets of row 23 are in :mod:`tests.support.secret_cases`):
each case's files, arguments and environment, and the exit code and messages it must give
(``tests/faults/test_config_errors_at_start.py`` runs them); plus the broken YAML both the
start-up and the hot-reload tests use."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.errors import EX_CONFIG
from tests.support import TOKEN

IS_ROOT = os.geteuid() == 0
ROOT_READS_ANYWAY = "runs as root: chmod 000 does not stop root from reading the file"


GOOD_MAPPING = """\
version: 1
rules:
  - name: env
    topic: "plant/{site}/env"
    device_id: "{site}"
    metrics: {temp: t}
"""
# A "billion laughs": 603 bytes that expand to 9**10 strings once the aliases are resolved.
ALIAS_BOMB = "x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)
SHADOWED = """\
version: 1
rules:
  - name: a
    topic: "plant/{site}/+"
    device_id: "{site}"
    payload: number
    metric: x
  - name: b
    topic: "plant/+/{m}"
    device_id: d
    payload: number
    metric: "{m}"
"""
OVERLAPPING = """\
version: 1
rules:
  - name: a
    topic: "plant/+/env"
    device_id: d
    metrics: {t: t}
  - name: b
    topic: "plant/berlin/+"
    device_id: d
    metrics: {t: t}
"""
DIR = object()  # in StartCase.files: create a directory at that name


def unshare_works() -> bool:
    """True where ``unshare -rm`` gives a user + mount namespace (no root needed)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@dataclass(frozen=True, slots=True)
class StartCase:
    """One start-up scenario. ``{d}`` in any string is the case's own directory.

    ``run`` cases get ``--spool {d}/spool/bridge.db --http-port 0 --mappings {d}/m.yaml``
    first (argparse keeps the last value, so ``args`` can override them); ``{d}/m.yaml`` is
    :data:`GOOD_MAPPING` unless ``files`` says otherwise.
    """

    args: tuple[str, ...] = ()
    files: Mapping[str, str | bytes | object] = field(default_factory=dict)
    modes: Mapping[str, int] = field(default_factory=dict)
    env: Mapping[str, str | None] = field(default_factory=dict)  # None: unset the variable
    code: int = EX_CONFIG
    stderr: tuple[str, ...] = ()  # fragments that must appear in stderr
    stdout: tuple[str, ...] = ()
    command: str = "run"
    spool: str = "{d}/spool/bridge.db"
    starts: bool = False  # a valid configuration: the bridge starts, then gets SIGTERM
    wrap: tuple[str, ...] = ()  # argv prefix, e.g. unshare for a read-only mount
    root_skip: bool = False
    bug: str | None = None  # a known defect: the case is xfail(strict=True) with this reason
    skip: str | None = None
    hidden: tuple[str, ...] = ()  # must appear nowhere in the output (as TOKEN never does)
    own_paths: bool = False  # no --spool/--mappings flags: they would beat the file and env


def _settings_case(text: str, *fragments: str, **changes: Any) -> StartCase:
    """A case whose settings file ``{d}/s.yaml`` holds ``text``."""
    case = StartCase(args=("--config", "{d}/s.yaml"), files={"s.yaml": text}, stderr=fragments)
    return replace(case, **changes)


def _mapping_case(text: object, *fragments: str, **changes: Any) -> StartCase:
    """A case whose mapping file ``{d}/m.yaml`` holds ``text``."""
    return replace(StartCase(files={"m.yaml": text}, stderr=fragments), **changes)


def _token_file_case(content: object | None, *fragments: str, mode: int = 0o600) -> StartCase:
    """A case whose token comes from ``{d}/token`` (None: no such file)."""
    return StartCase(
        files={} if content is None else {"token": content},
        modes={} if content is None else {"token": mode},
        env={"METRIQO_BRIDGE_TOKEN": None, "METRIQO_BRIDGE_TOKEN_FILE": "{d}/token"},
        stderr=fragments,
    )


START_CASES: dict[str, StartCase] = {
    # -- the mapping file
    "mapping-missing": StartCase(
        args=("--mapping-file", "{d}/absent.yaml"),
        stderr=(
            "command-line setting mapping.file: mapping.file: file not found: {d}/absent.yaml",
        ),
    ),
    "mapping-unreadable-0000": StartCase(
        modes={"m.yaml": 0o000},
        stderr=("mapping.file: file is not readable (permission denied): {d}/m.yaml",),
        root_skip=True,
    ),
    "mapping-is-a-directory": _mapping_case(DIR, "mapping.file: is a directory, expected a"),
    "mapping-yaml-syntax": _mapping_case(
        GOOD_MAPPING.replace('topic: "plant/{site}/env"', "topic: plant/{site}/env: x"),
        "{d}/m.yaml:4: YAML syntax error: mapping values are not allowed here",
    ),
    "mapping-yaml-unclosed-quote": _mapping_case(
        GOOD_MAPPING.replace('"{site}"', '"{site}'),
        "{d}/m.yaml:5: YAML syntax error: while scanning a quoted scalar",
    ),
    "mapping-python-tag": _mapping_case(
        GOOD_MAPPING.replace('"{site}"', "!!python/object/apply:os.system ['touch {d}/pwned']"),
        "{d}/m.yaml:5: rules[0].device_id: YAML tag "
        "'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
    ),
    "mapping-alias-bomb": _mapping_case(
        GOOD_MAPPING + ALIAS_BOMB,
        "{d}/m.yaml:8: x1[0]: YAML aliases (*name) are not allowed",
    ),
    "mapping-unknown-key": _mapping_case(
        GOOD_MAPPING.replace("metrics:", "metircs:"),
        "{d}/m.yaml:6: rules[0].metircs: unknown key",
    ),
    "mapping-wrong-type": _mapping_case(
        GOOD_MAPPING + "    coalesce: {window_s: '60'}\n",
        "{d}/m.yaml:7: rules[0].coalesce.window_s: Input should be a valid number",
    ),
    "mapping-out-of-range": _mapping_case(
        GOOD_MAPPING.replace("{temp: t}", "{temp: {path: t, round: 13}}"),
        "{d}/m.yaml:6: rules[0].metrics.temp.round: Input should be less than or equal to 12",
    ),
    "mapping-topic-hash-not-last": _mapping_case(
        GOOD_MAPPING.replace("plant/{site}/env", "a/#/b").replace('"{site}"', "d"),
        "{d}/m.yaml:4: rules[0].topic: '#' is only allowed as the last level",
    ),
    "mapping-topic-plus-with-text": _mapping_case(
        GOOD_MAPPING.replace("plant/{site}/env", "+x").replace('"{site}"', "d"),
        "{d}/m.yaml:4: rules[0].topic: level '+x' mixes wildcard characters with text",
    ),
    "mapping-duplicate-rule-names": _mapping_case(
        GOOD_MAPPING + GOOD_MAPPING.split("rules:\n")[1],
        "{d}/m.yaml:7: rules[1].name: duplicate rule name (also rule 0)",
    ),
    "mapping-empty": _mapping_case("", "{d}/m.yaml: file is empty"),
    "mapping-bidi-in-device-id": _mapping_case(
        GOOD_MAPPING.replace('"{site}"', '"{site}\\u202e"'),
        "{d}/m.yaml:5: rules[0].device_id: device id text '\\u202e' contains U+202E",
    ),
    "mapping-metric-name-over-the-configured-limit": _mapping_case(
        GOOD_MAPPING,
        "{d}/m.yaml:6: rules[0].metrics.temp: metric name has 4 characters of fixed text, "
        "more than 3 (mapping.max_metric_name_length)",
        args=("--set", "mapping.max_metric_name_length=3"),
    ),
    # `check` vs `run` on duplicate and overlapping rules (docs/guide/tuning-loop.md).
    "check-shadowed-rule-warns-exit-0": StartCase(
        command="check",
        args=("{d}/m.yaml",),
        files={"m.yaml": SHADOWED},
        code=0,
        stdout=("warning: {d}/m.yaml:9: rules[1] (b): never matches: rules[0] (a)",),
    ),
    "check-strict-overlapping-rules": StartCase(
        command="check",
        args=("--strict", "{d}/m.yaml"),
        files={"m.yaml": OVERLAPPING},
        stdout=("warning: {d}/m.yaml:8: rules[1] (b): overlaps rules[0] (a)",),
        stderr=("1 warning(s), an error under --strict",),
    ),
    "run-overlapping-rules-starts": StartCase(
        args=("--mqtt-port", "1"), files={"m.yaml": OVERLAPPING}, code=0, starts=True
    ),
    # -- the settings file
    "settings-missing": StartCase(
        args=("--config", "{d}/absent.yaml"),
        stderr=("command-line flag --config: file not found: {d}/absent.yaml",),
    ),
    "settings-unreadable-0000": _settings_case(
        "mqtt: {host: localhost}\n",
        "command-line flag --config: file is not readable (permission denied): {d}/s.yaml",
        modes={"s.yaml": 0o000},
        root_skip=True,
    ),
    "settings-is-a-directory": StartCase(
        args=("--config", "{d}/s.yaml"),
        files={"s.yaml": DIR},
        stderr=("command-line flag --config: is a directory, expected a YAML file: {d}/s.yaml",),
    ),
    "settings-yaml-syntax": _settings_case(
        "mqtt:\n  host: broker: 1883\n",
        "{d}/s.yaml:2: YAML syntax error: mapping values are not allowed here",
    ),
    "settings-python-tag": _settings_case(
        "mqtt:\n  host: !!python/object/apply:os.system ['touch {d}/pwned']\n",
        "{d}/s.yaml:2: mqtt.host: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'",
    ),
    "settings-unknown-key": _settings_case(
        "mqtt:\n  hots: broker.local\n", "{d}/s.yaml:2: mqtt.hots: unknown setting"
    ),
    "settings-unknown-section": _settings_case(
        "mqqt:\n  host: broker.local\n",
        "{d}/s.yaml:1: mqqt: unknown setting",
    ),
    "env-unknown-section": StartCase(
        env={"METRIQO_BRIDGE_MQQT__HOST": "broker.local"},
        stderr=("environment variable METRIQO_BRIDGE_MQQT__HOST: mqqt",),
    ),
    "settings-wrong-type": _settings_case(
        "mqtt:\n  port: eighteen\n", "{d}/s.yaml:2: mqtt.port: Input should be a valid integer"
    ),
    "env-wrong-type": StartCase(
        env={"METRIQO_BRIDGE_MQTT__KEEPALIVE_S": "thirty"},
        stderr=(
            "environment variable METRIQO_BRIDGE_MQTT__KEEPALIVE_S: mqtt.keepalive_s: "
            "Input should be a valid integer",
        ),
    ),
    "settings-token-of-wrong-type-not-echoed": _settings_case(
        f"api:\n  token: [{TOKEN}]\n",
        "{d}/s.yaml:2: api.token: Input should be a valid string",
        env={"METRIQO_BRIDGE_TOKEN": None},  # the variable would override the file
    ),
    "settings-batch-max-points-0": _settings_case(
        "batch:\n  max_points: 0\n",
        "{d}/s.yaml:2: batch.max_points: Input should be greater than or equal to 1",
    ),
    "env-batch-max-points-101": StartCase(
        env={"METRIQO_BRIDGE_BATCH__MAX_POINTS": "101"},
        stderr=(
            "environment variable METRIQO_BRIDGE_BATCH__MAX_POINTS: batch.max_points: "
            "Input should be less than or equal to 100",
        ),
    ),
    "settings-negative-api-timeout": _settings_case(
        "api:\n  connect_timeout_s: -1\n",
        "{d}/s.yaml:2: api.connect_timeout_s: Input should be greater than 0",
    ),
    "env-negative-stop-timeout": StartCase(
        env={"METRIQO_BRIDGE_STOP_TIMEOUT_S": "-1"},
        stderr=("environment variable METRIQO_BRIDGE_STOP_TIMEOUT_S: stop_timeout_s: Input",),
    ),
    # -- the broker
    "broker-port-0": StartCase(
        args=("--mqtt-port", "0"),
        stderr=("command-line setting mqtt.port: mqtt.port: Input should be greater than",),
    ),
    "broker-port-70000": StartCase(
        args=("--mqtt-port", "70000"),
        stderr=("command-line setting mqtt.port: mqtt.port: Input should be less than",),
    ),
    "broker-host-empty": StartCase(
        args=("--set", "mqtt.host=", "--mqtt-port", "1"),
        stderr=("mqtt.host",),
    ),
    "broker-host-is-a-url": StartCase(
        args=("--mqtt-host", "mqtt://broker.local:1883", "--mqtt-port", "1"),
        stderr=("mqtt.host",),
    ),
    "settings-tls-ca-missing": _settings_case(
        "mqtt:\n  tls:\n    enabled: true\n    ca_file: '{d}/ca.pem'\n",
        "{d}/s.yaml:4: mqtt.tls.ca_file: file not found: {d}/ca.pem",
    ),
    "broker-password-file-missing": StartCase(
        args=("--set", "mqtt.password_file={d}/pw"),
        stderr=(
            "command-line setting mqtt.password_file: mqtt.password_file: MQTT password file "
            "not found: {d}/pw",
        ),
    ),
    # -- the API
    "settings-api-http-remote-host": _settings_case(
        "api:\n  base_url: http://metriqo.example/api/v2\n",
        "{d}/s.yaml:2: api.base_url: plain http would send the token unencrypted",
    ),
    "api-ca-missing": StartCase(
        args=("--set", "api.ca_file={d}/ca.pem"),
        stderr=("api.ca_file",),
    ),
    "no-token": StartCase(
        env={"METRIQO_BRIDGE_TOKEN": ""},
        stderr=("api.token_file: no API token: set METRIQO_BRIDGE_TOKEN_FILE",),
    ),
    "token-file-missing": _token_file_case(None, "api.token_file: token file not found: {d}/token"),
    "token-file-empty": _token_file_case("", "api.token_file: token file {d}/token is empty"),
    "token-file-world-readable": _token_file_case(
        TOKEN,
        "api.token_file: token file {d}/token has mode 0644: others can read it; "
        "run: chmod 600 {d}/token",
        mode=0o644,
    ),
    "token-file-is-a-directory": _token_file_case(
        DIR, "api.token_file: token file is a directory: {d}/token", mode=0o700
    ),
    "token-file-error-names-its-setting": StartCase(
        args=("--config", "{d}/s.yaml"),
        stderr=("{d}/s.yaml:2: api.token_file",),
        files={"s.yaml": "api:\n  token_file: '{d}/token'\n", "token": TOKEN},
        modes={"token": 0o644},
        env={"METRIQO_BRIDGE_TOKEN": None},
    ),
    # -- the spool
    "spool-parent-is-a-file": StartCase(
        args=("--spool-path", "{d}/file/bridge.db"),
        files={"file": "not a directory\n"},
        spool="{d}/file/bridge.db",
        stderr=("spool.path",),
    ),
    "spool-on-read-only-mount": StartCase(
        # A private read-only tmpfs over {d}/ro, in a user + mount namespace (root not needed).
        wrap=(
            "unshare",
            "-rm",
            "sh",
            "-c",
            'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"',
            "{d}/ro",
        ),
        files={"ro": DIR},
        args=("--spool-path", "{d}/ro/spool/bridge.db"),
        spool="{d}/ro/spool/bridge.db",
        stderr=("spool.path",),
        skip=None if unshare_works() else "needs unshare -rm for a read-only tmpfs mount",
    ),
}
