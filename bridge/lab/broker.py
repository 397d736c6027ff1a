"""Start a throwaway local mosquitto on a free loopback port (demo, tests, benchmarks).

Uses the installed ``mosquitto`` binary and the settings in the project's ``mosquitto/``
directory, adding a loopback listener and a private persistence directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

INSTALL_HINT = (
    "mosquitto is not installed. On Debian/Ubuntu: sudo apt-get update && "
    "sudo apt-get install -y mosquitto mosquitto-clients ; on macOS: brew install mosquitto"
)


class BrokerUnavailable(RuntimeError):
    """The mosquitto binary is missing or the broker did not start."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_config_dir() -> Path | None:
    """The project's ``mosquitto/`` directory: next to the working dir or the package."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "mosquitto" / "mosquitto.conf"
        if candidate.is_file():
            return candidate.parent
    return None


def mosquitto_binary() -> str:
    """Path of the mosquitto binary, or raise with an install hint."""
    for name in ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        found = shutil.which(name)
        if found:
            return found
    raise BrokerUnavailable(INSTALL_HINT)


class LocalBroker:
    """A mosquitto process on ``127.0.0.1:<port>``; a context manager, restartable on the same
    port and data directory (for broker-restart scenarios)."""

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        extra_config: str = "",
    ) -> None:
        self.port = port or free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="metriqo-mosquitto-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def host(self) -> str:
        """Loopback address the broker listens on."""
        return "127.0.0.1"

    def _write_config(self) -> Path:
        base = ""
        conf_dir = find_config_dir()
        if conf_dir is not None:
            base = (conf_dir / "mosquitto.conf").read_text(encoding="utf-8")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "mosquitto.conf"
        # Started as root, mosquitto switches to the "mosquitto" user, which cannot write our
        # private persistence directory; keep the current user instead.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        path.write_text(
            f"{base}\n# generated\nlistener {self.port} 127.0.0.1\n"
            f"persistence_location {data}/\n{user}{self.extra_config}\n",
            encoding="utf-8",
        )
        return path

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts connections."""
        binary = mosquitto_binary()
        conf = self._write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        try:
            self._wait_listening(timeout)
        except BaseException:
            self.stop(signal.SIGKILL)  # never leave a stray broker behind (Ctrl-C included)
            raise

    def _wait_listening(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise BrokerUnavailable(f"mosquitto exited with {self.proc.returncode}: {tail}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise BrokerUnavailable(f"mosquitto did not listen on port {self.port} in {timeout} s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM saves its persistence file; SIGKILL does not)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: a hung broker."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
