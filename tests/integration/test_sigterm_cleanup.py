"""SIGTERM to a command that starts processes of its own (``demo``, ``bench``): it stops them
before it exits (exit 143), instead of leaving a private mosquitto running. Real processes:
the command, and whatever it started, found through ``/proc/<pid>/task/*/children``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.errors import EX_TERMINATED
from tests.support.tools import require_tool


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the task ended meanwhile
            found.update(int(c) for c in (task / "children").read_text().split())
    return found


def _descendants(pid: int) -> set[int]:
    seen: set[int] = set()
    todo = [pid]
    while todo:
        for child in _children(todo.pop()) - seen:
            seen.add(child)
            todo.append(child)
    return seen


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _look(pid: int, started: dict[int, str]) -> None:
    """Record the descendants of ``pid`` with their command lines, read again each time: a
    child seen between fork and exec still shows its parent's."""
    for child in _descendants(pid):
        cmd = _command(child)
        if cmd:
            started[child] = cmd


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie of ours would be reaped; one of a child is its job)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "backlog", "--messages", "400000", "--no-baselines"],
        ["demo", "--seconds", "120"],
    ],
    ids=["bench", "demo"],
)
def test_sigterm_stops_the_processes_the_command_started(args: list[str]) -> None:
    require_tool("mosquitto", "the command starts a private broker")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a SIGTERM for the command alone, not for its group
    )
    started: dict[int, str] = {}  # pid -> its command line
    try:
        deadline = time.monotonic() + 60
        broker = None
        while broker is None and proc.poll() is None and time.monotonic() < deadline:
            _look(proc.pid, started)
            broker = next((p for p, cmd in started.items() if "mosquitto" in cmd), None)
            time.sleep(0.05)
        if broker is None:
            proc.kill()
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"no broker seen (exit {proc.returncode}): {err.decode()[-2000:]}")
        time.sleep(1.0)  # into the run: the bridge and the traffic are under way
        _look(proc.pid, started)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == EX_TERMINATED, err.decode(errors="replace")[-2000:]
        deadline = time.monotonic() + 10
        while any(_running(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {p: cmd for p, cmd in started.items() if _running(p) and _command(p) == cmd}
        assert left == {}, f"still running after the command exited: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()  # a failure here must not leak the pipe
        for pid, cmd in started.items():
            if _running(pid) and _command(pid) == cmd:  # still the process it started
                os.kill(pid, signal.SIGKILL)
