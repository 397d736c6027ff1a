"""Rows 17, 18, 20 and 23 of the reliability matrix: every configuration error at start.

At start (``python -m bridge run`` as a subprocess, no broker needed: configuration is checked
before anything starts) each broken setting, settings file, mapping file, token file, CA path or
spool path must exit with its documented code (78, or 75 for a locked spool), print one message
naming file, line and key, print no traceback, never echo the token, and create no spool. The
cases run concurrently (one interpreter start costs about a second of CPU), once per session, in
a module fixture; each case still passes or fails on its own. The cases themselves are the table
in :mod:`tests.support.config_errors` and, for the secrets, :mod:`tests.support.secret_cases`.

Known defects are documented as ``xfail(strict=True)`` cases whose reason says what happens.
Errors at hot reload: ``test_config_errors_on_reload.py``.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.errors import EX_CONFIG, EX_TEMPFAIL
from tests.support import REPO, TOKEN
from tests.support.config_errors import (
    DIR,
    GOOD_MAPPING,
    IS_ROOT,
    ROOT_READS_ANYWAY,
    StartCase,
)
from tests.support.config_errors import START_CASES as _CONFIG_CASES
from tests.support.secret_cases import SECRET_CASES

START_CASES = {**_CONFIG_CASES, **SECRET_CASES}

STARTED = "rule(s), broker "  # cli._run logs this once every check has passed


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
    d.chmod(0o755)  # whatever the umask: a group-writable directory would refuse token files
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
        argv += ["--http-port", "0"]
        if not case.own_paths:
            argv += ["--spool-path", f"{d}/spool/bridge.db", "--mapping-file", f"{d}/m.yaml"]
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
    for secret in case.hidden:
        assert secret not in output, output[-3000:]
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
