"""Rows 17, 18 and 20: every configuration error of the reliability matrix, at start and at
hot reload.

At start (``python -m bridge run`` as a subprocess, no broker needed: configuration is checked
before anything starts) each broken setting, settings file, mapping file, token file, CA path or
spool path must exit with its documented code (78, or 75 for a locked spool), print one message
naming file, line and key, print no traceback, never echo the token, and create no spool. The
cases run concurrently (one interpreter start costs about a second of CPU), once per session, in
a module fixture; each case still passes or fails on its own.

At hot reload (an in-process bridge on a real mosquitto, started from a mapping file so the
watcher and ``request_reload`` — what SIGHUP calls — work) each broken mapping file must leave
the previous rules running, count the failure, report it truthfully with file:line: key, and
the next valid file must be accepted.

Known defects are documented as ``xfail(strict=True)`` cases whose reason says what happens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Bridge
from bridge.errors import EX_CONFIG, EX_TEMPFAIL
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.mapping.loader import load_mappings
from bridge.settings import Settings
from tests.conftest import REPO, TOKEN
from tests.integration.harness import Publisher, make_settings, metric, publish, run_bridge

STARTED = "rule(s), broker "  # cli._run logs this once every check has passed
IS_ROOT = os.geteuid() == 0
ROOT_READS_ANYWAY = "runs as root: chmod 000 does not stop root from reading the file"

# -- section A: errors at start ------------------------------------------------------------

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


def _unshare_works() -> bool:
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
        args=("--mappings", "{d}/absent.yaml"), stderr=("{d}/absent.yaml: file not found",)
    ),
    "mapping-unreadable-0000": StartCase(
        modes={"m.yaml": 0o000},
        stderr=("{d}/m.yaml: file is not readable (permission denied)",),
        root_skip=True,
    ),
    "mapping-is-a-directory": _mapping_case(DIR, "{d}/m.yaml: is a directory"),
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
        args=("--config", "{d}/absent.yaml"), stderr=("{d}/absent.yaml: file not found",)
    ),
    "settings-unreadable-0000": _settings_case(
        "mqtt: {host: localhost}\n",
        "{d}/s.yaml: file is not readable (permission denied)",
        modes={"s.yaml": 0o000},
        root_skip=True,
    ),
    "settings-is-a-directory": StartCase(
        args=("--config", "{d}/s.yaml"),
        files={"s.yaml": DIR},
        stderr=("{d}/s.yaml: is a directory",),
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
        stderr=("{d}/pw: MQTT password file not found",),
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
    "token-file-missing": _token_file_case(None, "{d}/token: token file not found"),
    "token-file-empty": _token_file_case("", "{d}/token: token file is empty"),
    "token-file-world-readable": _token_file_case(
        TOKEN, "{d}/token: token file is readable by group or others; run: chmod 600", mode=0o644
    ),
    "token-file-is-a-directory": _token_file_case(
        DIR, "{d}/token: token file cannot be read: Is a directory", mode=0o700
    ),
    "token-file-error-names-its-setting": StartCase(
        args=("--config", "{d}/s.yaml"),
        stderr=("{d}/s.yaml:2: api.token_file",),
        files={"s.yaml": "api:\n  token_file: '{d}/token'\n", "token": TOKEN},
        modes={"token": 0o644},
        env={"METRIQO_BRIDGE_TOKEN": None},
        bug="read_secret_file raises ConfigError(file=<the token file>) without the setting: "
        "'…/token: token file is readable by group or others' does not say that "
        "s.yaml:2 api.token_file (or METRIQO_BRIDGE_TOKEN_FILE) pointed there; the same holds "
        "for mqtt.password_file",
    ),
    # -- the spool
    "spool-parent-is-a-file": StartCase(
        args=("--spool", "{d}/file/bridge.db"),
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
        args=("--spool", "{d}/ro/spool/bridge.db"),
        spool="{d}/ro/spool/bridge.db",
        stderr=("spool.path",),
        skip=None if _unshare_works() else "needs unshare -rm for a read-only tmpfs mount",
    ),
}


def _case_params() -> list[object]:
    params: list[object] = []
    for name, case in START_CASES.items():
        marks: list[pytest.MarkDecorator] = []
        if case.root_skip:
            marks.append(pytest.mark.skipif(IS_ROOT, reason=ROOT_READS_ANYWAY))
        if case.skip:
            marks.append(pytest.mark.skip(reason=case.skip))
        if case.bug:
            marks.append(pytest.mark.xfail(strict=True, reason=case.bug))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@dataclass(frozen=True, slots=True)
class StartResult:
    """What one ``python -m bridge`` run did."""

    workdir: Path
    code: int
    stdout: str
    stderr: str
    started: bool  # it logged its startup line (the configuration was accepted)
    seconds: float


def _subst(text: str, d: Path) -> str:
    return text.replace("{d}", str(d))


def _prepare(case: StartCase, d: Path) -> tuple[list[str], dict[str, str]]:
    d.mkdir(parents=True)
    files: dict[str, str | bytes | object] = {"m.yaml": GOOD_MAPPING, **case.files}
    for name, content in files.items():
        path = d / name
        if content is DIR:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(_subst(content, d), encoding="utf-8")
    for name, mode in case.modes.items():
        (d / name).chmod(mode)
    argv = [_subst(a, d) for a in case.wrap]
    argv += [sys.executable, "-m", "bridge", case.command]
    if case.command == "run":
        argv += ["--spool", f"{d}/spool/bridge.db", "--http-port", "0"]
        argv += ["--mappings", f"{d}/m.yaml"]
    argv += [_subst(a, d) for a in case.args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIQO_BRIDGE_")}
    env["METRIQO_BRIDGE_TOKEN"] = TOKEN
    env["PYTHONPATH"] = str(REPO)
    for key, value in case.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = _subst(value, d)
    return argv, env


def _run_case(case: StartCase, d: Path, grace: float = 3.0, timeout: float = 90.0) -> StartResult:
    """Run one case; a bridge that accepts its configuration is given ``grace`` seconds to fail
    on its own (a late error would show there), then SIGTERM."""
    argv, env = _prepare(case, d)
    out, err = d / "stdout.txt", d / "stderr.txt"
    began = time.monotonic()
    started = False
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(argv, cwd=d, env=env, stdout=fo, stderr=fe)
        try:
            deadline = began + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if not started and STARTED.encode() in err.read_bytes():
                    started = True
                    deadline = min(deadline, time.monotonic() + grace)
                time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    stderr = err.read_text(errors="replace")
    return StartResult(
        workdir=d,
        code=proc.returncode,
        stdout=out.read_text(errors="replace"),
        stderr=stderr,
        started=started or STARTED in stderr,
        seconds=time.monotonic() - began,
    )


@pytest.fixture(scope="module")
def start_results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, StartResult]:
    """Every selected start case, run concurrently (interpreter start-up dominates)."""
    selected = {
        str(item.callspec.params["case_id"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_config_error_at_start"
        and hasattr(item, "callspec")
    }
    runnable = {
        name
        for name in selected
        if not START_CASES[name].skip and not (START_CASES[name].root_skip and IS_ROOT)
    }
    base = tmp_path_factory.mktemp("start")
    workers = max(2, min(6, (os.cpu_count() or 2) + 1))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="case") as pool:
        futures = {
            name: pool.submit(_run_case, START_CASES[name], base / name) for name in runnable
        }
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("case_id", _case_params())
def test_config_error_at_start(case_id: str, start_results: dict[str, StartResult]) -> None:
    """A configuration error exits with its documented code before anything starts, with one
    message naming file:line: key, no traceback, no token in the output and no spool."""
    case = START_CASES[case_id]
    r = start_results[case_id]
    d = r.workdir
    output = r.stdout + r.stderr
    assert "Traceback" not in output, output[-3000:]
    assert TOKEN not in output
    assert r.code == case.code, f"exit {r.code} (started: {r.started})\n{output[-3000:]}"
    for fragment in case.stderr:
        assert _subst(fragment, d) in r.stderr, r.stderr
    for fragment in case.stdout:
        assert _subst(fragment, d) in r.stdout, r.stdout
    assert not (d / "pwned").exists(), "a YAML tag ran a command"
    if case.starts:
        assert r.started, output
        return
    spool = Path(_subst(case.spool, d))
    assert not spool.exists(), f"spool touched: {spool}"
    assert not spool.with_name(spool.name + ".lock").exists()
    if case.command == "run":
        assert not r.started, "the bridge logged its startup line: the error came too late"
        assert not (d / "spool").exists()
    if case.code == EX_CONFIG:
        if case.command == "run":
            assert r.stdout == ""
        assert "metriqo-bridge: configuration error:" in r.stderr or "--strict" in r.stderr


def test_second_instance_on_the_same_spool_exits_75(tmp_path: Path) -> None:
    """A second bridge on a spool another one holds exits 75 naming the holder's pid; the first
    keeps running. (With a broker and API: tests/integration/test_crash.py.)"""
    case = StartCase(args=("--mqtt-port", "1"), code=0, starts=True)
    first_argv, env = _prepare(case, tmp_path / "first")
    spool = tmp_path / "first" / "spool" / "bridge.db"
    lock = spool.with_name(spool.name + ".lock")
    log = tmp_path / "first.log"
    with log.open("wb") as fh:
        first = subprocess.Popen(first_argv, cwd=tmp_path, env=env, stdout=fh, stderr=fh)
    try:
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text() == str(first.pid)):
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        second = subprocess.run(
            [*first_argv, "--http-port", "0"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = second.stdout + second.stderr
        assert second.returncode == EX_TEMPFAIL, output
        assert (
            f"metriqo-bridge: spool {spool} is in use by another metriqo-bridge (pid {first.pid})"
            in second.stderr
        )
        assert "Traceback" not in output
        assert TOKEN not in output
        assert first.poll() is None, "the second instance disturbed the first"
        assert lock.read_text() == str(first.pid)
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert TOKEN not in log.read_text()


# -- section B: errors at hot reload ---------------------------------------------------------

FAILURES = ("metriqo_bridge_config_reloads_total", {"result": "failure"})
SUCCESSES = ("metriqo_bridge_config_reloads_total", {"result": "success"})
LAST_OK = "metriqo_bridge_config_last_reload_successful"


def _generation(k: int) -> str:
    """A valid mapping whose only rule is unique to version ``k``: topic ``gen{k}/...`` maps to
    device ``v{k}-<device>``, so a delivered point tells which version mapped it."""
    return f"""\
version: 1
rules:
  - name: gen{k}
    topic: "gen{k}/{{device}}/{{metric}}"
    device_id: "v{k}-{{device}}"
    payload: number
    metric: "{{metric}}"
"""


def _rewrite(path: Path, text: str | bytes) -> None:
    """Write beside and rename, as editors and ConfigMap updates do."""
    if path.is_dir():
        path.rmdir()
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _to_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _unreadable(path: Path) -> None:
    path.chmod(0o000)


@dataclass(frozen=True, slots=True)
class ReloadCase:
    """A broken mapping file written over the running one; ``expect`` is in the error log
    (``{f}`` = the mapping file's path)."""

    name: str
    apply: Callable[[Path, Path], None]  # (mapping file, marker path for the python tag)
    expect: str


def _text(make: Callable[[str, Path], str | bytes]) -> Callable[[Path, Path], None]:
    return lambda path, marker: _rewrite(path, make(_generation(1), marker))


RELOAD_CASES = [
    ReloadCase(
        "yaml-syntax",
        _text(lambda g, _: g.replace("payload: number", "payload: number: x")),
        "{f}:6: YAML syntax error: mapping values are not allowed here",
    ),
    ReloadCase(
        "python-tag",
        _text(
            lambda g, m: g.replace(
                'device_id: "v1-{device}"',
                f"device_id: !!python/object/apply:os.system ['touch {m}']",
            )
        ),
        "{f}:5: rules[0].device_id: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'",
    ),
    ReloadCase(
        "alias-bomb",
        _text(lambda g, _: g + ALIAS_BOMB),
        "{f}:9: x1[0]: YAML aliases (*name) are not allowed",
    ),
    ReloadCase(
        "unknown-key",
        _text(lambda g, _: g.replace("metric:", "metirc:")),
        "{f}:7: rules[0].metirc: unknown key",
    ),
    ReloadCase(
        "wrong-type",
        _text(lambda g, _: g + "    transform: {scale: '0.5'}\n"),
        "{f}:8: rules[0].transform.scale: Input should be a valid number",
    ),
    ReloadCase(
        "out-of-range",
        _text(lambda g, _: g + "    transform: {round: 13}\n"),
        "{f}:8: rules[0].transform.round: Input should be less than or equal to 12",
    ),
    ReloadCase(
        "topic-hash-not-last",
        _text(lambda g, _: g.replace('"gen1/{device}/{metric}"', '"gen1/#/{metric}"')),
        "{f}:4: rules[0].topic: '#' is only allowed as the last level",
    ),
    ReloadCase(
        "topic-plus-with-text",
        _text(lambda g, _: g.replace('"gen1/{device}/{metric}"', '"gen1/+x/{metric}"')),
        "{f}:4: rules[0].topic: level '+x' mixes wildcard characters with text",
    ),
    ReloadCase(
        "duplicate-rule-names",
        _text(lambda g, _: g + g.split("rules:\n")[1]),
        "{f}:8: rules[1].name: duplicate rule name (also rule 0)",
    ),
    ReloadCase("not-utf8", _text(lambda g, _: b"version: 1\n\xff\n"), "{f}: not UTF-8 text"),
    ReloadCase("empty-file", _text(lambda g, _: ""), "{f}: file is empty"),
    ReloadCase("deleted", lambda path, _: path.unlink(), "{f}: file not found"),
    ReloadCase("replaced-by-a-directory", lambda p, _: _to_directory(p), "{f}: is a directory"),
]
if not IS_ROOT:  # root reads a 0000 file anyway
    RELOAD_CASES.append(
        ReloadCase(
            "unreadable-0000",
            lambda p, _: _unreadable(p),
            "{f}: file is not readable (permission denied)",
        )
    )


@contextlib.asynccontextmanager
async def _bridge_from_file(settings: Settings, path: Path) -> AsyncIterator[Bridge]:
    """An in-process bridge started from the mapping file ``path`` (so it can reload it)."""
    bridge = Bridge(settings, load_mappings(path), lambda: TOKEN, mappings_path=path)
    async with run_bridge(bridge, start_timeout=20, must_keep_running=True) as running:
        yield running


def _sample(bridge: Bridge, name: str, labels: dict[str, str] | None = None) -> float:
    return metric(bridge, name, **(labels or {}))


async def _until_sample(
    bridge: Bridge, sample: tuple[str, dict[str, str]], value: float, what: str
) -> None:
    await _until(lambda: _sample(bridge, *sample) == value, what)


async def _until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _delivered(api: LocalApi, device: str, value: float, timeout: float = 20.0) -> None:
    def arrived() -> bool:
        return any(p.device_id == device and p.value == value for p in api.store.points())

    await _until(arrived, f"point {device}={value} at the API", timeout)


async def _publish_retained(port: int, topic: str, payload: bytes) -> None:
    """A retained QoS 1 message: delivered whenever the bridge's new subscription lands."""

    def run() -> None:
        pub = Publisher(port, client_id=f"retained-{time.monotonic_ns()}")
        try:
            info = pub.client.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(10)
            assert info.is_published()
        finally:
            pub.close()

    await asyncio.to_thread(run)


def _last_reload_error(caplog: pytest.LogCaptureFixture) -> str:
    errors = [r for r in caplog.records if r.name == "bridge.reload" and r.levelno >= logging.ERROR]
    assert errors, "no reload error was logged"
    return errors[-1].getMessage()


async def test_broken_mapping_reloads_keep_the_old_rules_and_the_next_valid_file_wins(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """For each broken mapping file (request_reload, i.e. SIGHUP): the bridge keeps running the
    previous rules, counts the failure, sets config_last_reload_successful 0, logs file:line:
    key; then a valid file is applied at once (success counted, gauge 1, new rule in effect)."""
    caplog.set_level(logging.INFO, logger="bridge")
    path = tmp_path / "topic-mappings.yaml"
    marker = tmp_path / "pwned"
    path.write_text(_generation(0), encoding="utf-8")
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"mapping.reload_interval_s": "0"}
    )
    async with _bridge_from_file(settings, path) as bridge:
        for k, case in enumerate(RELOAD_CASES):
            failures = _sample(bridge, *FAILURES)
            successes = _sample(bridge, *SUCCESSES)
            caplog.clear()
            case.apply(path, marker)
            bridge.request_reload()
            await _until_sample(bridge, FAILURES, failures + 1, f"failed reload ({case.name})")
            assert _sample(bridge, LAST_OK) == 0, case.name
            assert _sample(bridge, *SUCCESSES) == successes, case.name
            message = _last_reload_error(caplog)
            assert f"reload of {path} failed; still running the previous mapping" in message
            assert case.expect.replace("{f}", str(path)) in message, (case.name, message)

            # The previous generation's rule still maps (its device prefix proves which rule).
            await publish(broker.port, [(f"gen{k}/d{k}/m", b"%d.5" % k)])
            await _delivered(api, f"v{k}-d{k}", k + 0.5)

            # The next valid file is applied: success counted, gauge back to 1, new rule live.
            _rewrite(path, _generation(k + 1))
            bridge.request_reload()
            await _until_sample(bridge, SUCCESSES, successes + 1, f"valid reload after {case.name}")
            assert _sample(bridge, LAST_OK) == 1, case.name
            assert _sample(bridge, *FAILURES) == failures + 1, case.name
            await _publish_retained(broker.port, f"gen{k + 1}/n{k}/m", b"%d.25" % k)
            await _delivered(api, f"v{k + 1}-n{k}", k + 0.25)
    assert not marker.exists(), "a YAML tag ran a command"
    assert TOKEN not in caplog.text


async def test_watcher_refuses_broken_saves_and_applies_the_next_good_one(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without SIGHUP, the file watcher alone: a broken save, then a deleted file, are each
    refused and counted while the old rule keeps mapping; the next good save is applied."""
    caplog.set_level(logging.INFO, logger="bridge")
    path = tmp_path / "topic-mappings.yaml"
    path.write_text(_generation(0), encoding="utf-8")
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"mapping.reload_interval_s": "0.1"}
    )
    async with _bridge_from_file(settings, path) as bridge:
        _rewrite(path, _generation(1).replace("metric:", "metirc:"))
        await _until_sample(bridge, FAILURES, 1, "the watcher's failed reload")
        assert f"{path}:7: rules[0].metirc: unknown key" in _last_reload_error(caplog)
        path.unlink()
        await _until_sample(bridge, FAILURES, 2, "the deleted file noticed")
        assert f"{path}: file not found" in _last_reload_error(caplog)
        assert _sample(bridge, LAST_OK) == 0
        await publish(broker.port, [("gen0/d/m", b"1.5")])
        await _delivered(api, "v0-d", 1.5)
        _rewrite(path, _generation(1))
        await _until_sample(bridge, SUCCESSES, 1, "the good save applied")
        assert _sample(bridge, LAST_OK) == 1
        await _publish_retained(broker.port, "gen1/d/m", b"2.5")
        await _delivered(api, "v1-d", 2.5)
    assert _sample(bridge, *FAILURES) == 2
    assert TOKEN not in caplog.text
