"""Running the bridge and an MQTT publisher on this machine: for ``bench`` and ``soak``, and for
the tests that drive a real bridge process.

:class:`BridgeProcess` runs ``python -m bridge run`` as a child process (so it can be killed, and
its CPU time, memory and open files are its own, read from ``/proc``); :class:`Publisher`
publishes at QoS 1 and waits for the broker's acknowledgements: given messages
(:meth:`Publisher.publish_all`), or numbered 4-metric JSON messages, each identified by its
timestamp (:meth:`Publisher.run`). :class:`ProcessPublisher` is the latter in a process of its
own.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bridge.lab.broker import free_port

BENCH_MAPPINGS = """\
version: 1
rules:
  - name: bench
    topic: "bench/{device}/env"
    device_id: "{device}"
    metrics: {temp: temp, rh: rh, kw: power.kw, hz: power.hz}
    timestamp: {field: ts, format: epoch_ms}
"""
METRICS_PER_MESSAGE = 4
_UNACKED = 2000  # publishes in flight at most: paho's queue stays small


def message_payload(index: int, base_ms: int) -> bytes:
    """Message ``index``: its timestamp ``base_ms + index`` identifies it (one per ms)."""
    return b'{"temp": %d.25, "rh": %d, "power": {"kw": %d.5, "hz": 50}, "ts": %d}' % (
        index % 1000,
        index % 100,
        index % 7,
        base_ms + index,
    )


def message_index_ms(timestamp: str) -> int:
    """The epoch milliseconds of an API timestamp: ``base_ms + index`` of the message that
    carried it (see :func:`message_payload`)."""
    return round(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


class BridgeProcess:
    """The bridge as a child process, with its CPU time, RSS and open files from /proc.

    Settings go on the command line (``--set key=value``), the token through the environment
    (``ps`` shows a command line). Each :meth:`start` writes its output to a file of its own in
    ``workdir`` (:attr:`outputs`); :meth:`log` is all of them, in order.
    """

    def __init__(
        self,
        workdir: Path,
        settings: dict[str, str],
        token: str,
        *,
        env: dict[str, str] | None = None,
        mappings: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        """``mappings``: the text of a mapping file to write into ``workdir`` and run with
        (``mapping.file``); ``cwd``: where the process runs (default: this one's)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.mappings: Path | None = None
        if mappings is not None:
            self.mappings = workdir / "mappings.yaml"
            self.mappings.write_text(mappings, encoding="utf-8")
            settings = {**settings, "mapping.file": str(self.mappings)}
        self.http_port = free_port()
        self.settings = {**settings, "http.port": str(self.http_port)}
        self._token = token
        self._env = env or {}
        self._cwd = cwd
        self.outputs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        # A command that runs the bridge and becomes it (exec), e.g. ``taskset -c 0``.
        self.prefix: list[str] = []

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        """Start it with the current :attr:`settings`; its output goes to a new file in
        :attr:`outputs`."""
        args = [*self.prefix, sys.executable, "-m", "bridge", "run"]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={value}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("METRIQO_BRIDGE_")}
        env.update(self._env)
        env.update(extra_env or {})
        env["METRIQO_BRIDGE_TOKEN"] = self._token  # never on the command line: ps shows it
        out = self.workdir / f"bridge-{len(self.outputs)}.log"
        self.outputs.append(out)
        with out.open("ab") as fh:
            self.proc = subprocess.Popen(
                args, cwd=self._cwd, env=env, stdout=fh, stderr=subprocess.STDOUT
            )

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    # A bridge that fails to start exits, and that ends the wait at once; the limit only
    # bounds a hang. It is generous because a bridge loading a long mapping file on a machine
    # busy with other work was seen to take over 30 s to answer at all (1,000 rules beside a
    # CPU hog and benchmarks on 2 cores).
    START_TIMEOUT_S = 120.0

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait for ``/readyz`` to answer 200 (connected and subscribed)."""
        self._wait_for("/readyz", "ready", timeout)

    def wait_alive(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait for ``/healthz`` (the bridge is up, whether or not it is connected)."""
        self._wait_for("/healthz", "alive", timeout)

    def _wait_for(self, path: str, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with self._get(path) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as not_yet:
                # A 503 (not ready yet) carries a body; Python 3.14+ warns when it is left open.
                not_yet.close()
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"bridge not {what} after {timeout} s:\n{self.log()[-2000:]}")

    def _get(self, path: str) -> http.client.HTTPResponse:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        response: http.client.HTTPResponse = urllib.request.urlopen(url, timeout=2)
        return response

    def metric(self, name: str) -> float:
        """One unlabelled sample from ``/metrics`` (NaN if absent).

        Raises:
            OSError: the bridge does not answer.
        """
        with self._get("/metrics") as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return math.nan

    def spool_points(self) -> float:
        """Points waiting in the spool."""
        return self.metric("metriqo_bridge_spool_points")

    def cpu_and_rss(self) -> tuple[float, int]:
        """CPU seconds used so far and the peak resident set (bytes)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        return cpu, self._status_kb("VmHWM:") * 1024  # the peak, kept by the kernel

    def write_bytes(self) -> int:
        """Bytes the process has sent to the storage layer so far (``write_bytes`` of
        ``/proc/<pid>/io``: pages it dirtied, counted once each until written back; the
        filesystem's own journal comes on top)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
        return 0

    def rss_now(self) -> int:
        """The resident set now (bytes)."""
        return self._status_kb("VmRSS:") * 1024

    def open_files(self) -> int:
        """Open file descriptors now."""
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def _status_kb(self, key: str) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
        return 0

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        """
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM and wait (SIGKILL after 60 s); the exit code, or -1 if never started.

        With a LocalApi still up, ``await api.settle()`` next, before reading its store or
        leaving it: a connection the bridge opened as it died can still wait in the kernel's
        queue. Read without settling, the store may lack a request the server is about to
        take in; left without settling, Python 3.11's ``Server.close()`` can come between
        that connection's accept and its transport's setup, and the half-built transport is
        then never closed (a ResourceWarning when the garbage collector finds it).
        """
        if self.proc is None or self.proc.poll() is not None:
            return -1 if self.proc is None else self.proc.returncode
        try:
            return self.terminate(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def close(self) -> None:
        """Make sure the process is gone (SIGKILL if it still runs)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        """Everything the process wrote so far, over all its starts."""
        return "\n".join(p.read_text(errors="replace") for p in self.outputs if p.exists())


class Publisher:
    """QoS 1 publisher on paho's own thread, paced to a rate, at most 2,000 publishes
    unacknowledged.

    :meth:`publish_all` sends given messages; :meth:`run` sends ``messages`` numbered sensor
    messages (:func:`message_payload`, from ``devices`` devices) and keeps each one's publish
    time in :attr:`published_at`. paho reconnects by itself and re-sends what the broker has
    not acknowledged, so a broker restart in the middle delays messages but does not lose them.
    Both count acknowledgements on :attr:`client`: publish nothing else on it meanwhile.
    """

    def __init__(
        self,
        port: int,
        messages: int = 0,
        base_ms: int = 0,
        devices: int = 20,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        protocol: str = "v5",
    ) -> None:
        """``protocol``: ``v5`` or ``v311`` (for a broker that speaks only MQTT 3.1.1)."""
        self.published_at = [0.0] * messages
        self.acked = 0
        self._messages = messages
        self._base_ms = base_ms
        self._devices = devices
        self._stop = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"metriqo-pub-{os.getpid()}",
            protocol=mqtt.MQTTv311 if protocol == "v311" else mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self._acked = threading.Semaphore(0)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, *_args: object) -> None:
        self.acked += 1
        self._acked.release()

    def publish_all(
        self, messages: Iterable[tuple[str, bytes]], rate: float | None = None, timeout: float = 60
    ) -> int:
        """Publish ``(topic, payload)`` messages (at ``rate`` per second, or as fast as
        acknowledged), then wait until the broker acknowledged all of them; how many there were
        (fewer if :meth:`stop` ended it early, without waiting).

        Raises:
            TimeoutError: the broker acknowledged nothing for ``timeout`` seconds.
            RuntimeError: paho refused a publish (other than for a lost connection).
        """
        return self._publish(messages, rate, timeout)

    def run(self, rate: float | None, ack_timeout: float = 60.0) -> None:
        """Publish every numbered message (see :meth:`publish_all`), keeping its publish time.

        Raises:
            TimeoutError: the broker acknowledged nothing for ``ack_timeout`` seconds.
        """
        self._publish(self._numbered(), rate, ack_timeout, self.published_at)

    def _numbered(self) -> Iterator[tuple[str, bytes]]:
        for i in range(self._messages):
            yield f"bench/d{i % self._devices:03d}/env", message_payload(i, self._base_ms)

    def _publish(
        self,
        messages: Iterable[tuple[str, bytes]],
        rate: float | None,
        ack_timeout: float,
        published_at: list[float] | None = None,
    ) -> int:
        start = time.monotonic()
        sent = 0
        for i, (topic, payload) in enumerate(messages):
            if self._stop.is_set():
                return sent
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if i >= _UNACKED and not self._acked.acquire(timeout=ack_timeout):
                raise TimeoutError("the broker stopped acknowledging publishes")
            if published_at is not None:
                published_at[i] = time.time()
            info = self.client.publish(topic, payload, qos=1)
            # Without a connection paho keeps the message and sends it once reconnected.
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                raise RuntimeError(f"publish refused by the client: {mqtt.error_string(info.rc)}")
            sent += 1
        for _ in range(min(_UNACKED, sent)):
            if not self._acked.acquire(timeout=ack_timeout):
                raise TimeoutError("the broker stopped acknowledging publishes")
        return sent

    def stop(self) -> None:
        """Stop publishing early (``run`` and ``publish_all`` return)."""
        self._stop.set()

    def close(self) -> None:
        """Disconnect and stop paho's thread."""
        self.client.disconnect()  # first: loop_stop() on a connected client waits ~1 s
        self.client.loop_stop()


class ProcessPublisher:
    """:class:`Publisher`'s numbered messages from a process of its own, with the same :meth:`run`,
    :meth:`stop`, :meth:`close`, :attr:`published_at` and :attr:`acked`.

    On two cores, a publisher thread shares the bench process's interpreter lock with the
    local API server and cannot hold 5,000 msg/s; in its own process it can. Publish times come
    back through a file when it ends (also when stopped early).
    """

    def __init__(self, port: int, messages: int, base_ms: int, devices: int = 20) -> None:
        self.published_at = [0.0] * messages
        self.acked = 0
        self._cmd = [
            sys.executable,
            "-m",
            "bridge.lab.localrun",
            str(port),
            str(messages),
            str(base_ms),
            str(devices),
        ]
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def run(self, rate: float | None, ack_timeout: float = 60.0) -> None:
        """Publish every message (see :meth:`Publisher.run`) and wait for the process.

        Raises:
            TimeoutError: the publisher process failed (its stderr says why).
        """
        with tempfile.TemporaryDirectory(prefix="metriqo-pub-") as tmp:
            out = Path(tmp) / "published_at"
            cmd = [*self._cmd, str(rate or 0), str(ack_timeout), str(out)]
            self._proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
            if self._stopped:
                self._proc.send_signal(signal.SIGTERM)
            _, err = self._proc.communicate()
            times = array("d")
            with contextlib.suppress(OSError):
                times.frombytes(out.read_bytes())
            self.published_at[: len(times)] = times
            self.acked = sum(1 for t in times if t > 0)
            if self._proc.returncode != 0 and not self._stopped:
                raise TimeoutError(f"publisher process failed: {err.decode(errors='replace')}")

    def stop(self) -> None:
        """Stop publishing early (``run`` returns)."""
        self._stopped = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Make sure the process is gone."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)


def _publish_main(argv: list[str]) -> int:
    """``python -m bridge.lab.localrun PORT MESSAGES BASE_MS DEVICES RATE ACK_TIMEOUT OUT``."""
    port, messages, base_ms, devices = (int(a) for a in argv[:4])
    rate, ack_timeout, out = float(argv[4]) or None, float(argv[5]), Path(argv[6])
    publisher = Publisher(port, messages, base_ms, devices)
    signal.signal(signal.SIGTERM, lambda *_: publisher.stop())
    try:
        publisher.run(rate, ack_timeout)
    finally:
        publisher.close()
        out.write_bytes(array("d", publisher.published_at).tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(_publish_main(sys.argv[1:]))
