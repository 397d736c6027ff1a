"""Failpoints: parsing, inert when unset, crash by SIGKILL at the N-th hit, wired into the code."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import failpoints
from bridge.config.loader import load_settings
from bridge.errors import EX_CONFIG, ConfigError
from bridge.failpoints import ENV_VAR, POINTS, Failpoint
from tests.support import REPO, TOKEN


@pytest.fixture(autouse=True)
def _disarmed() -> Iterator[None]:
    failpoints.arm({})
    yield
    failpoints.arm({})


def test_parse_names_actions_and_counts() -> None:
    """Items parse to failpoints; @N defaults to 1; spaces around items are allowed."""
    got = failpoints.parse(
        "after_commit_before_puback:crash@3, after_2xx_before_delete:crash,"
        "after_receive_before_commit:delay(0.25)@7"
    )
    assert got == {
        "after_commit_before_puback": Failpoint("after_commit_before_puback", "crash", 3),
        "after_2xx_before_delete": Failpoint("after_2xx_before_delete", "crash", 1),
        "after_receive_before_commit": Failpoint("after_receive_before_commit", "delay", 7, 0.25),
    }
    assert str(got["after_receive_before_commit"]) == "after_receive_before_commit:delay(0.25)@7"


@pytest.mark.parametrize("spec", ["", "   "])
def test_blank_spec_arms_nothing(spec: str) -> None:
    """An empty variable is the same as an unset one."""
    assert failpoints.parse(spec) == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("after_commit_before_puback", "expected name:crash"),
        ("after_commit_before_puback:", "expected name:crash"),
        ("after_commit_before_puback:panic", "expected name:crash"),
        ("after_commit_before_puback:crash@", "expected name:crash"),
        ("after_commit_before_puback:crash@x", "expected name:crash"),
        ("after_commit_before_puback:crash@-1", "expected name:crash"),
        ("after_commit_before_puback:crash@2@3", "expected name:crash"),
        ("after_commit_before_puback:crash@0", "@N counts from 1"),
        ("after_commit_before_puback:delay", "expected name:crash"),
        ("after_commit_before_puback:delay()", "delay needs a number"),
        ("after_commit_before_puback:delay(abc)", "delay needs a number"),
        ("after_commit_before_puback:delay(-1)", "delay needs a number"),
        ("after_commit_before_puback:delay(nan)", "delay needs a number"),
        ("after_commit_before_puback:delay(inf)", "delay needs a number"),
        ("after_commit_before_puback:crash,", "item 2 '': expected"),
        ("after_commit_before_puback:crash;after_2xx_before_delete:crash", "expected name:crash"),
        ("After_Commit_Before_Puback:crash", "expected name:crash"),
        ("after_commit_before_pubak:crash@3", "unknown failpoint 'after_commit_before_pubak'"),
        ("after_spool_commit:crash", "unknown failpoint 'after_spool_commit'"),
        (
            "after_2xx_before_delete:crash@1,after_2xx_before_delete:crash@2",
            "item 2: failpoint 'after_2xx_before_delete' given twice",
        ),
    ],
)
def test_bad_specs_are_config_errors_naming_the_variable_and_known_points(
    spec: str, message: str
) -> None:
    """A typo is a ConfigError at start (never a silently disabled failpoint)."""
    with pytest.raises(ConfigError) as info:
        failpoints.parse(spec)
    text = str(info.value)
    assert message in text
    assert ENV_VAR in text
    assert all(name in text for name in POINTS)


def test_arm_from_env_reads_only_its_variable_and_logs_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Arming logs one WARNING naming every armed point; unset disarms again."""
    with caplog.at_level("WARNING", logger="bridge.failpoints"):
        armed = failpoints.arm_from_env({ENV_VAR: "after_2xx_before_delete:crash@4"})
    assert armed == [Failpoint("after_2xx_before_delete", "crash", 4)]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "after_2xx_before_delete:crash@4" in caplog.text
    caplog.clear()
    assert failpoints.arm_from_env({}) == []
    assert failpoints._armed == {}
    assert not caplog.records


def test_hit_is_inert_when_nothing_is_armed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unarmed, hit() never gets past its first check, whatever the name."""

    def fail(name: str) -> None:
        raise AssertionError(f"_reach({name!r}) called while disarmed")

    monkeypatch.setattr(failpoints, "_reach", fail)
    failpoints.arm_from_env({})
    for name in [*POINTS, "not_a_point"]:
        for _ in range(1000):
            failpoints.hit(name)


def test_delay_stalls_only_the_nth_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    """delay(S)@N sleeps S seconds on the N-th hit of its point only; other points are free."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    failpoints.arm(failpoints.parse("after_receive_before_commit:delay(0.5)@3"))
    for _ in range(5):
        failpoints.hit("after_receive_before_commit")
        failpoints.hit("after_commit_before_puback")
    assert slept == [0.5]


_CRASH_SCRIPT = """
import atexit, os, sys
from bridge import failpoints
atexit.register(lambda: print("atexit ran", flush=True))
sys.stdout.write("buffered and never flushed\\n")
failpoints.arm_from_env()
try:
    for i in range(1, 6):
        os.write(1, b"hit %d\\n" % i)
        failpoints.hit("after_commit_before_puback")
        failpoints.hit("after_receive_before_commit")
finally:
    os.write(1, b"finally ran\\n")
"""


def _run_script(spec: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("METRIQO_BRIDGE_") and k != "PYTHONUNBUFFERED"
    }
    env[ENV_VAR] = spec
    return subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_crash_kills_by_sigkill_at_the_nth_hit_without_any_cleanup() -> None:
    """crash@3 dies by SIGKILL on the 3rd hit: no finally, no atexit, no stdio flush."""
    result = _run_script("after_commit_before_puback:crash@3")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == "hit 1\nhit 2\nhit 3\n"
    assert result.stderr.endswith("failpoint after_commit_before_puback:crash@3: crash (SIGKILL)\n")


def test_unreached_count_never_crashes() -> None:
    """A point armed for a hit that never comes leaves the process alone."""
    result = _run_script("after_commit_before_puback:crash@6")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "atexit ran"


def test_bad_variable_stops_the_bridge_with_exit_78_before_the_spool(tmp_path: Path) -> None:
    """`metriqo-bridge run` with a typo in the variable exits 78 naming it; no spool is made."""
    mappings = tmp_path / "m.yaml"
    mappings.write_text(
        "version: 1\nrules:\n  - name: x\n    topic: a/{d}\n    device_id: '{d}'\n"
        "    payload: number\n    metric: m\n",
        encoding="utf-8",
    )
    spool = tmp_path / "spool" / "bridge.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIQO_BRIDGE_")}
    env["METRIQO_BRIDGE_TOKEN"] = TOKEN
    env[ENV_VAR] = "after_comit_before_puback:crash@3"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "bridge", "run", "--mapping-file", str(mappings)),
            *("--spool-path", str(spool), "--mqtt-port", "1", "--set", "http.enabled=false"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == EX_CONFIG, result.stderr
    assert f"environment {ENV_VAR}: item 1: unknown failpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not spool.parent.exists()


def test_the_variable_is_not_taken_for_a_setting() -> None:
    """Settings read METRIQO_BRIDGE_* as settings; the failpoint variable is left alone."""
    settings = load_settings(
        environ={ENV_VAR: "after_2xx_before_delete:crash", "METRIQO_BRIDGE_TOKEN": TOKEN}
    )
    assert not hasattr(settings, "failpoints")


def test_every_point_has_exactly_one_hook_and_every_hook_a_known_point() -> None:
    """Each name in POINTS is hit at exactly one place in bridge/, and no hook uses another."""
    hooks: dict[str, list[str]] = {}
    for path in sorted((REPO / "bridge").rglob("*.py")):
        for name in re.findall(r'failpoints\.hit\("([^"]*)"\)', path.read_text(encoding="utf-8")):
            hooks.setdefault(name, []).append(path.name)
    assert sorted(hooks) == sorted(POINTS)
    assert all(len(files) == 1 for files in hooks.values()), hooks
