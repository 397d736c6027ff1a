"""The systemd unit (deploy/systemd/metriqo-bridge.service): systemd accepts it, its sandbox is
as tight as reviewed, and the bridge works under exactly the command line, environment, state
directory and credential that the unit gives it.

No service manager runs in the test environment, so :class:`ServiceRun` does what systemd does
when it starts the unit: it expands the specifiers to temporary directories, creates the state
directory, copies the token into a credentials directory as a 0400 file, applies ``UMask=``,
``NoNewPrivileges=`` and ``MemoryDenyWriteExecute=`` (the kernel's own MDWE, Linux 6.3+), and
executes ``ExecStart=`` with the service environment. The only rewrite is the install prefix
``/opt/metriqo-bridge``, which becomes the virtual environment running the tests. What takes
systemd itself to set up (the dynamic user id, the read-only file system, the system-call
filter, namespaces, address families) is not emulated: ``systemd-analyze`` checks the unit asks
for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker, free_port
from tests.support import TOKEN
from tests.support.deploy import DEPLOY
from tests.support.harness import TEST_MAPPINGS, env_messages, publish
from tests.support.tools import require_tool

UNIT_FILE = DEPLOY / "systemd" / "metriqo-bridge.service"
EXAMPLE_SETTINGS = DEPLOY / "systemd" / "bridge.yaml"
UNIT_NAME = UNIT_FILE.name
INSTALL_PREFIX = "/opt/metriqo-bridge"
VENV = Path(sys.executable).parent.parent  # the environment running the tests
ENV_ONLY = TEST_MAPPINGS[: TEST_MAPPINGS.index("  - name: plain")]
EX_CONFIG = 78
EX_TEMPFAIL = 75

# Checks of `systemd-analyze security` the unit fails on purpose, and why. Anything else showing
# up with a non-zero exposure is a weakened sandbox.
ACCEPTED_EXPOSURES = {
    # The bridge's job is network I/O: TCP to the broker and the API, a loopback listener for
    # metrics; asyncio's self-pipe and the resolver use local sockets.
    "PrivateNetwork=": "talks to the broker and the API",
    "RestrictAddressFamilies=~AF_(INET|INET6)": "talks to the broker and the API",
    "RestrictAddressFamilies=~AF_UNIX": "asyncio's self-pipe, the resolver",
    # Broker and API addresses differ per site; an allow list belongs in a local drop-in.
    "IPAddressDeny=": "broker and API addresses are per site",
    # The venv and Python live in the host file system.
    "RootDirectory=/RootImage=": "runs from the host's /opt and /usr",
    # ProcSubset=pid would hide /proc/stat, which the process_* metrics need (boot time).
    "ProcSubset=": "process_* metrics read /proc/stat",
    # Read access to the RTC is what ProtectClock=yes leaves.
    "DeviceAllow=": "ProtectClock=yes keeps char-rtc readable",
}
# The score with only the accepted exposures is 1.1 (systemd 252); 1.2 leaves room for rounding
# differences between systemd versions, not for another weakened check (those fail above).
MAX_EXPOSURE = 1.2

# The launcher: systemd's own work between fork and exec, for the settings Python can apply.
_LAUNCHER = r"""
import ctypes, errno, os, sys
umask, no_new_privs, mdwe, *argv = sys.argv[1:]
os.umask(int(umask, 8))
libc = ctypes.CDLL(None, use_errno=True)
if no_new_privs == "yes" and libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit("launcher: PR_SET_NO_NEW_PRIVS failed")
# PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: no writable+executable memory, inherited across exec.
if mdwe == "yes" and libc.prctl(65, 1, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
    sys.exit("launcher: PR_SET_MDWE failed")
os.execv(argv[0], argv)
"""


@dataclass(frozen=True, slots=True)
class Unit:
    """A unit file as systemd reads it: sections of ``Key=value`` lines, keys may repeat."""

    sections: dict[str, list[tuple[str, str]]]

    @classmethod
    def read(cls, path: Path) -> Unit:
        """Parse ``path``; continuation lines are refused (the emulation does not join them)."""
        sections: dict[str, list[tuple[str, str]]] = {}
        current: list[tuple[str, str]] | None = None
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            assert not line.endswith("\\"), f"{path}:{number}: continuation lines"
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
                continue
            assert current is not None, f"{path}:{number}: setting outside a section"
            key, sep, value = line.partition("=")
            assert sep, f"{path}:{number}: not Key=value"
            current.append((key.strip(), value.strip()))
        return cls(sections)

    def values(self, key: str, section: str = "Service") -> list[str]:
        """Every value of ``key``, in order."""
        return [v for k, v in self.sections.get(section, []) if k == key]

    def value(self, key: str, section: str = "Service") -> str:
        """The value of a key that must appear exactly once."""
        found = self.values(key, section)
        assert len(found) == 1, f"{key}= appears {len(found)} times in [{section}]"
        return found[0]


def expand_specifiers(text: str, specifiers: Mapping[str, str]) -> str:
    """Replace ``%X`` as systemd does; a specifier the test does not emulate fails the test."""

    def one(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter == "%":
            return "%"
        if letter not in specifiers:
            pytest.fail(f"the unit uses %{letter}, which this test does not emulate yet")
        return specifiers[letter]

    return re.sub(r"%(.)", one, text)


class ServiceRun:
    """One start of the unit, emulated under ``root`` (see the module docstring)."""

    def __init__(self, unit: Unit, root: Path) -> None:
        self.unit = unit
        self.etc = root / "etc"
        self.state = root / "var-lib"
        self.runtime = root / "run"
        self.credentials = self.runtime / "credentials" / UNIT_NAME
        self.config_dir = self.etc / "metriqo-bridge"
        self.log_path = root / "journal.log"
        self.specifiers = {
            "E": str(self.etc),
            "S": str(self.state),
            "t": str(self.runtime),
            "d": str(self.credentials),
            "n": UNIT_NAME,
        }
        for d in (self.config_dir, self.state, self.runtime):
            d.mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self._spawned: list[subprocess.Popen[bytes]] = []

    def expand(self, text: str) -> str:
        """``text`` with the specifiers of this run expanded."""
        return expand_specifiers(text, self.specifiers)

    def argv(self) -> list[str]:
        """ExecStart= split into words, with only the install prefix moved to the venv."""
        line = self.expand(self.unit.value("ExecStart"))
        assert line[0] not in "-@:+!", "ExecStart= prefixes are not emulated"
        assert "$" not in line, "variables in ExecStart= are not emulated"
        argv = shlex.split(line)
        assert argv[0].startswith(INSTALL_PREFIX + "/"), argv[0]
        argv[0] = str(VENV) + argv[0][len(INSTALL_PREFIX) :]
        return argv

    def environment(self) -> dict[str, str]:
        """What systemd passes to a DynamicUser= service, plus the unit's Environment= lines."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
            "USER": "metriqo-bridge",  # the dynamic user is named after the unit
            "LOGNAME": "metriqo-bridge",
            "HOME": "/",
            "SHELL": "/usr/sbin/nologin",
            "INVOCATION_ID": os.urandom(16).hex(),
            "STATE_DIRECTORY": str(self.state / self.unit.value("StateDirectory")),
            "CREDENTIALS_DIRECTORY": str(self.credentials),
        }
        for line in self.unit.values("Environment"):
            for assignment in shlex.split(self.expand(line)):
                name, sep, value = assignment.partition("=")
                assert sep, f"Environment={line}: not NAME=value"
                env[name] = value
        return env

    def prepare(self) -> None:
        """Create the state directory and the credentials, as systemd does before ExecStart."""
        mode = int(self.unit.value("StateDirectoryMode"), 8)
        (self.state / self.unit.value("StateDirectory")).mkdir(mode=mode, exist_ok=True)
        if self.credentials.exists():
            return  # a restart: systemd keeps the directory while the unit is active
        self.credentials.mkdir(parents=True, mode=0o700)
        for entry in self.unit.values("LoadCredential"):
            name, _, source = self.expand(entry).partition(":")
            target = self.credentials / name
            target.write_bytes(Path(source).read_bytes())
            target.chmod(0o400)
            # The service's user cannot read the root-only original; here it is simply gone,
            # so the bridge can only be using the copy.
            Path(source).unlink()
        self.credentials.chmod(0o500)  # systemd remounts it read-only

    def spawn(self, *extra_args: str, capture: bool = False) -> subprocess.Popen[bytes]:
        """Start ExecStart= (plus ``extra_args``); its output goes to :attr:`log_path` (the
        journal), or to pipes with ``capture``."""
        self.prepare()
        launcher = [
            sys.executable,
            "-c",
            _LAUNCHER,
            self.unit.value("UMask"),
            self.unit.value("NoNewPrivileges"),
            self.unit.value("MemoryDenyWriteExecute"),
        ]
        with self.log_path.open("ab") as log, open(os.devnull, "rb") as stdin:
            proc = subprocess.Popen(
                [*launcher, *self.argv(), *extra_args],
                env=self.environment(),
                cwd="/",  # systemd's default WorkingDirectory=
                stdin=stdin,
                stdout=subprocess.PIPE if capture else log,
                stderr=subprocess.PIPE if capture else subprocess.STDOUT,
                start_new_session=True,
            )
        self._spawned.append(proc)
        return proc

    def start(self) -> subprocess.Popen[bytes]:
        """Start the service's main process (``$MAINPID``)."""
        self.proc = self.spawn()
        return self.proc

    def reload(self) -> None:
        """Run ExecReload= with $MAINPID set, as ``systemctl reload`` does."""
        assert self.proc is not None
        line = self.unit.value("ExecReload").replace("$MAINPID", str(self.proc.pid))
        assert "$" not in line
        subprocess.run(shlex.split(line), check=True, timeout=10)

    def journal(self) -> str:
        """Everything the service wrote."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL whatever is left (cleanup after a failed assertion)."""
        for proc in self._spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def write_settings(run: ServiceRun, broker_port: int, api_url: str, http_port: int) -> None:
    """The example bridge.yaml, pointed at the test broker, API and mapping file."""
    settings: dict[str, Any] = yaml.safe_load(EXAMPLE_SETTINGS.read_text(encoding="utf-8"))
    settings["mqtt"].update(port=broker_port, client_id="bridge-under-systemd")
    settings["api"].update(base_url=api_url, retry_max_s=1)
    settings["mapping"].update(
        file=str(run.config_dir / "topic-mappings.yaml"),
        reload_interval_s=0,  # only SIGHUP reloads: a reload seen below is ExecReload's doing
    )
    settings["http"]["port"] = http_port
    settings["batch"] = {"linger_s": 0.2}
    (run.config_dir / "bridge.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")


def write_secret(path: Path, text: str) -> None:
    """Write a root-only file, as an operator installs /etc/metriqo-bridge/token."""
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(0o600)


def scrape(port: int, path: str) -> tuple[int, str]:
    """Status and body of a GET on the bridge's loopback HTTP port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:  # a 503 carries a body; Python 3.14+ warns when it is left open
            return exc.code, exc.read().decode()


def sample(text: str, name: str) -> float:
    """One sample from a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_until_ready(run: ServiceRun, port: int) -> None:
    """Wait for /readyz = 200; fail with the journal if the service exits first."""
    assert run.proc is not None
    async with asyncio.timeout(30):
        while True:
            if run.proc.poll() is not None:
                pytest.fail(f"exited with {run.proc.returncode}:\n{run.journal()}")
            with contextlib.suppress(OSError):
                status, _ = await asyncio.to_thread(scrape, port, "/readyz")
                if status == 200:
                    return
            await asyncio.sleep(0.1)


async def wait_for_sample(run: ServiceRun, port: int, name: str, value: float) -> None:
    """Wait until the bridge's /metrics shows ``name`` at ``value``; fail with the journal if
    the service exits first."""
    assert run.proc is not None
    async with asyncio.timeout(20):
        while True:
            if run.proc.poll() is not None:
                pytest.fail(f"exited with {run.proc.returncode}:\n{run.journal()}")
            with contextlib.suppress(OSError):
                if sample((await asyncio.to_thread(scrape, port, "/metrics"))[1], name) == value:
                    return
            await asyncio.sleep(0.1)


@pytest.fixture
def unit() -> Unit:
    """The unit file under test."""
    return Unit.read(UNIT_FILE)


@pytest.fixture
def service(unit: Unit, tmp_path: Path) -> Iterator[ServiceRun]:
    """A fresh emulated host for the unit; the bridge is killed if a test leaves it running."""
    run = ServiceRun(unit, tmp_path / "host")
    try:
        yield run
    finally:
        run.kill()
        with contextlib.suppress(FileNotFoundError):
            run.credentials.chmod(0o700)  # let pytest remove it


def test_systemd_verify_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing about the unit (its ExecStart moved to the venv,
    every other line as shipped)."""
    analyze = require_tool("systemd-analyze", "checks the unit file as systemd parses it")
    lines = UNIT_FILE.read_text(encoding="utf-8").splitlines(keepends=True)
    moved = [
        line.replace(f"={INSTALL_PREFIX}/", f"={VENV}/", 1)
        if line.startswith("ExecStart=")
        else line
        for line in lines
    ]
    assert sum(a != b for a, b in zip(lines, moved, strict=True)) == 1
    copy = tmp_path / UNIT_NAME
    copy.write_text("".join(moved), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    about_unit = [line for line in output.splitlines() if UNIT_NAME in line or str(copy) in line]
    assert result.returncode == 0, output
    assert about_unit == [], output


def test_security_exposure_stays_within_the_reviewed_budget() -> None:
    """`systemd-analyze security --offline` finds only the accepted exposures, and the overall
    score is at most MAX_EXPOSURE."""
    analyze = require_tool("systemd-analyze", "scores the unit's sandbox")
    usage = subprocess.run(
        [analyze, "security", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    if "--offline" not in usage.stdout:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    base = [analyze, "security", "--offline=true", "--no-pager"]
    table = subprocess.run(
        [*base, "--json=short", str(UNIT_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    exposed = {c["name"]: c["description"] for c in json.loads(table.stdout) if c["exposure"]}
    unexpected = {name: why for name, why in exposed.items() if name not in ACCEPTED_EXPOSURES}
    assert unexpected == {}
    # --threshold counts in tenths; the command fails when the score is above it.
    text = subprocess.run(
        [*base, f"--threshold={round(MAX_EXPOSURE * 10)}", str(UNIT_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", text.stdout)
    assert score is not None, text.stdout + text.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE
    assert text.returncode == 0, text.stdout + text.stderr


def test_unit_keeps_the_settings_the_score_cannot_see(unit: Unit) -> None:
    """The directives DynamicUser= implies (and so hides from the score), and the restart and
    stop policy, are set as reviewed."""
    expected = {
        "Type": "exec",
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "RestrictSUIDSGID": "yes",
        "RemoveIPC": "yes",
        "MemoryDenyWriteExecute": "yes",
        "UMask": "0077",
        "Restart": "on-failure",
        "RestartPreventExitStatus": str(EX_CONFIG),
        "KillMode": "mixed",
    }
    assert {key: unit.value(key) for key in expected} == expected
    # 75 (another bridge holds the spool lock) is temporary: systemd must keep retrying.
    assert str(EX_TEMPFAIL) not in unit.value("RestartPreventExitStatus").split()
    # The bridge's own graceful-stop budget (stop_timeout_s, 10 s) fits inside systemd's.
    assert int(unit.value("TimeoutStopSec")) > 10
    assert unit.values("After", "Unit") == ["network-online.target", "mosquitto.service"]
    assert "mosquitto.service" not in " ".join(
        unit.values("Wants", "Unit") + unit.values("Requires", "Unit")
    )


async def test_bridge_runs_as_the_unit_starts_it(
    service: ServiceRun, broker: LocalBroker, api: LocalApi
) -> None:
    """Under the unit's argv, environment, state directory and 0400 credential the bridge
    becomes ready, delivers, reloads the mapping on ExecReload, refuses a second instance with
    75, stops with 0 on SIGTERM within TimeoutStopSec, and never prints the token."""
    http_port = free_port()
    write_settings(service, broker.port, api.url, http_port)
    (service.config_dir / "topic-mappings.yaml").write_text(ENV_ONLY, encoding="utf-8")
    write_secret(service.config_dir / "token", TOKEN)
    token_path = service.credentials / "metriqo-token"
    spool = service.state / "metriqo-bridge" / "spool.db"

    service.start()
    await wait_until_ready(service, http_port)
    assert token_path.stat().st_mode & 0o777 == 0o400
    shown = service.spawn("--print-config", capture=True)
    shown_out, shown_err = await asyncio.to_thread(shown.communicate, None, 30)
    assert shown.returncode == 0, shown_err
    effective = json.loads(shown_out)
    assert effective["api"]["token_file"] == str(token_path)
    assert effective["spool"]["path"] == str(spool)

    start_ms = int(time.time() * 1000) - 10
    await publish(broker.port, env_messages(3, start_ms))
    await api.store.wait_for_points(12, 20)

    reloads = 'metriqo_bridge_config_reloads_total{result="success"}'
    (service.config_dir / "topic-mappings.yaml").write_text(TEST_MAPPINGS, encoding="utf-8")
    await asyncio.to_thread(service.reload)
    await wait_for_sample(service, http_port, reloads, 1)
    await wait_until_ready(service, http_port)  # the new rule's subscription is acknowledged
    await publish(broker.port, [("tele/m7/volts", b"230.5")])
    await api.store.wait_for_points(13, 20)
    assert ("m7", "volts", 230.5) in {(p.device_id, p.metric, p.value) for p in api.store.points()}

    second = service.spawn()  # the same unit started twice: same spool, same port
    assert await asyncio.to_thread(second.wait, 30) == EX_TEMPFAIL

    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)
    stop_budget = float(service.unit.value("TimeoutStopSec"))
    assert await asyncio.to_thread(service.proc.wait, stop_budget) == 0

    assert spool.stat().st_mode & 0o077 == 0  # UMask=0077 reached the files the bridge made
    journal = service.journal()
    assert "stopped" in journal
    assert TOKEN not in journal
    assert TOKEN.encode() not in shown_out + shown_err


def test_broken_configuration_exits_with_the_status_systemd_does_not_restart(
    service: ServiceRun,
) -> None:
    """A broken mapping file makes the bridge exit with RestartPreventExitStatus (78), naming
    file and line, without printing the token."""
    write_settings(service, free_port(), "http://127.0.0.1:9", free_port())
    mapping = service.config_dir / "topic-mappings.yaml"
    mapping.write_text(ENV_ONLY.replace("metrics:", "metircs:"), encoding="utf-8")
    write_secret(service.config_dir / "token", TOKEN)

    proc = service.start()
    status = proc.wait(30)

    assert status == EX_CONFIG
    assert str(status) in service.unit.value("RestartPreventExitStatus").split()
    journal = service.journal()
    assert f"{mapping}:" in journal
    assert "metircs" in journal
    assert TOKEN not in journal
