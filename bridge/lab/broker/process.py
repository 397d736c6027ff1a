"""A broker as a child process on a free loopback port, with a data directory of its own: the
part every broker implementation shares (start, wait until it answers MQTT, stop, pause).

A broker is ready when it answers an MQTT CONNECT with a CONNACK that accepts it, not when its
port merely accepts TCP (RabbitMQ listens well before its MQTT plugin accepts clients) and not
after a sleep: on a loaded machine a start takes as long as it takes, up to ``start_timeout``.
Each implementation says how to start it (:meth:`BrokerProcess.command`), which protocol and
credentials its clients use, and which settings the bridge needs to talk to it
(:meth:`BrokerProcess.bridge_settings`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Self

Protocol = Literal["v5", "v311"]


class BrokerUnavailable(RuntimeError):
    """The broker is not installed here, or did not start."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_executable(name: str, *more: str) -> str | None:
    """``name`` on PATH, beside the running Python (a venv's ``bin/``), or one of ``more``."""
    venv_bin = str(Path(sys.executable).parent)
    for candidate in (name, *more):
        found = shutil.which(candidate) or shutil.which(candidate, path=venv_bin)
        if found:
            return found
    return None


def repo_dir(name: str) -> Path | None:
    """A directory of the checkout (``mosquitto/``, ``tests/brokers/aedes``): next to the working
    directory or to the package."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / name).is_dir():
            return base / name
    return None


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session (the readiness probe leaves nothing behind)."""
    flags = 0x02
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    body = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 10) + payload
    return bytes([0x10, len(body)]) + body  # short enough for a one-byte length


def mqtt_accepts(
    port: int, username: str | None, password: str | None, timeout: float = 2.0
) -> bool:
    """True when ``127.0.0.1:port`` answers CONNECT with CONNACK 0 (then DISCONNECT)."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as s,
    ):
        s.sendall(connect_packet(f"ready-probe-{os.getpid()}", username, password))
        answer = b""
        while len(answer) < 4:
            chunk = s.recv(4 - len(answer))
            if not chunk:
                return False
            answer += chunk
        accepted = answer[0] == 0x20 and answer[3] == 0
        if accepted:
            s.sendall(b"\xe0\x00")
        return accepted
    return False


class BrokerProcess:
    """One broker on ``127.0.0.1:<port>``; a context manager, restartable on the same port and
    data directory (for broker-restart scenarios).

    Subclasses set :attr:`name` and :attr:`protocol` and implement :meth:`command`.
    """

    name: ClassVar[str] = "broker"
    protocol: ClassVar[Protocol] = "v311"  # the newest MQTT version it speaks
    username: ClassVar[str | None] = None  # what every client (bridge, publishers) logs in as
    password: ClassVar[str | None] = None
    start_timeout: ClassVar[float] = 30.0
    restartable: ClassVar[bool] = True

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"metriqo-{self.name}-")
            workdir = Path(self._tmp.name)
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    @property
    def host(self) -> str:
        """Loopback address the broker listens on."""
        return "127.0.0.1"

    # -- what each implementation says ------------------------------------------------------

    def command(self) -> list[str]:
        """The argv that starts the broker in the foreground (config files written first).

        Raises:
            BrokerUnavailable: the broker is not installed (the message says how to install it).
        """
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The environment of the broker process."""
        return dict(os.environ)

    def bridge_settings(self) -> dict[str, str]:
        """The bridge's settings (``--set`` form) that this broker needs."""
        out: dict[str, str] = {"mqtt.protocol": self.protocol}
        if self.username is not None:
            out["mqtt.username"] = self.username
        return out

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Start the broker and wait until it accepts an MQTT connection."""
        argv = self.command()
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            self._wait_ready(timeout or self.start_timeout)
        except BaseException:
            self.stop(signal.SIGKILL)  # never leave a stray broker behind (Ctrl-C included)
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            if mqtt_accepts(self.port, self.username, self.password):
                return
            time.sleep(0.1)
        raise BrokerUnavailable(
            f"{self.name} did not accept MQTT on port {self.port} in {timeout} s: {self.log_tail()}"
        )

    def log_tail(self, chars: int = 2000) -> str:
        """The end of what the broker wrote, over all its starts."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop the broker (SIGTERM: a clean stop that saves what it keeps; SIGKILL: a crash)."""
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

    def __enter__(self) -> Self:
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
