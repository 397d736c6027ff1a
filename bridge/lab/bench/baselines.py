"""Baselines for ``bench backlog``: how fast clients that do nothing with the messages drain the
same backlog from the same broker.

- a bare paho-mqtt client in its own process (persistent session, QoS 1, acknowledged by paho
  itself, the bridge's receive maximum): the ceiling for a Python MQTT client, since the bridge
  uses the same library;
- ``mosquitto_sub`` when it is installed: the ceiling for a C client.

Each has its own persistent session, subscribed before the backlog is published, so the broker
queues the very same messages for it as for the bridge. The drains run one after another, after
the bridge's, so they do not compete with it or each other for the CPU.

Run as ``python -m bridge.lab.bench.baselines`` this module is the paho client itself; the bench
starts it and reads one JSON line from its output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PAHO = "paho-mqtt"
MOSQUITTO_SUB = "mosquitto_sub"


@dataclass(frozen=True, slots=True)
class Baseline:
    """One client's drain of the backlog.

    Attributes:
        client: ``paho-mqtt`` or ``mosquitto_sub``.
        messages_expected: the backlog queued for its session.
        messages_received: what it got before it finished or timed out.
        seconds: from connecting (paho) or starting (mosquitto_sub) to the last message.
        messages_per_s: ``messages_received / seconds``.
        complete: every queued message arrived.
        detail: why not, when it did not complete.
    """

    client: str
    messages_expected: int
    messages_received: int
    seconds: float
    messages_per_s: float
    complete: bool
    detail: str = ""


def make_baseline(
    client: str, expected: int, received: int, seconds: float, detail: str = ""
) -> Baseline:
    """A :class:`Baseline` with its rate and completeness worked out."""
    rate = round(received / seconds, 1) if seconds > 0 else 0.0
    complete = received >= expected
    if not complete and not detail:
        detail = f"{received} of {expected} messages arrived"
    return Baseline(client, expected, received, round(seconds, 3), rate, complete, detail)


@dataclass(frozen=True, slots=True)
class BaselineClients:
    """Where the baseline clients connect and how, matching the bridge's session settings."""

    port: int
    topic: str
    protocol: str  # "v5" | "v311"
    session_expiry_s: int = 3600
    receive_maximum: int = 1000
    client_prefix: str = "metriqo-bench-baseline"

    @property
    def paho_id(self) -> str:
        """The paho client's id (its session on the broker)."""
        return f"{self.client_prefix}-paho"

    @property
    def sub_id(self) -> str:
        """The mosquitto_sub client's id."""
        return f"{self.client_prefix}-sub"

    @staticmethod
    def mosquitto_sub() -> str | None:
        """Path of mosquitto_sub, or None when it is not installed."""
        return shutil.which(MOSQUITTO_SUB)

    def prepare(self, timeout: float = 30.0) -> list[str]:
        """Create and subscribe every baseline session; the names of the clients prepared."""
        prepared = [PAHO]
        self._paho("prepare", 0, timeout)
        exe = self.mosquitto_sub()
        if exe is not None:
            subprocess.run(
                [*self._sub_args(exe), "-E"],
                check=True,
                timeout=timeout,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            prepared.append(MOSQUITTO_SUB)
        return prepared

    def drain_paho(self, messages: int, timeout: float) -> Baseline:
        """Let the paho client drain its session; the client times itself."""
        try:
            out = self._paho("drain", messages, timeout)
        except (subprocess.SubprocessError, OSError) as exc:
            return make_baseline(PAHO, messages, 0, 0.0, f"the paho client failed: {exc}")
        result = json.loads(out.strip().splitlines()[-1])
        return make_baseline(PAHO, messages, int(result["received"]), float(result["seconds"]))

    def drain_mosquitto_sub(self, messages: int, timeout: float, workdir: Path) -> Baseline | None:
        """Let mosquitto_sub drain its session, timed from start to exit; None if not installed.

        Its output goes to a file whose lines are counted afterwards: a bench payload holds no
        newline, so one line is one message, and reading a pipe would cost the bench CPU while
        the drain runs.
        """
        exe = self.mosquitto_sub()
        if exe is None:
            return None
        sink = workdir / "mosquitto_sub.out"
        detail = ""
        with sink.open("wb") as fh:
            start = time.monotonic()
            try:
                subprocess.run(
                    [*self._sub_args(exe), "-C", str(messages)],
                    check=True,
                    timeout=timeout,
                    stdout=fh,
                    stderr=subprocess.PIPE,
                )
            except subprocess.TimeoutExpired:
                detail = f"timed out after {timeout:.0f} s"
            except subprocess.CalledProcessError as exc:
                detail = f"exited with {exc.returncode}: {exc.stderr!r}"
            seconds = time.monotonic() - start
        with sink.open("rb") as fh:
            received = sum(1 for _line in fh)
        return make_baseline(MOSQUITTO_SUB, messages, received, seconds, detail)

    def _sub_args(self, exe: str) -> list[str]:
        args = [exe, "-h", "127.0.0.1", "-p", str(self.port), "-c", "-i", self.sub_id]
        args += ["-q", "1", "-t", self.topic]
        if self.protocol == "v5":
            args += ["-V", "mqttv5", "-x", str(self.session_expiry_s)]
        else:
            args += ["-V", "mqttv311"]
        return args

    def _paho(self, action: str, messages: int, timeout: float) -> str:
        args = [
            sys.executable,
            "-m",
            "bridge.lab.bench.baselines",
            action,
            "--port",
            str(self.port),
        ]
        args += ["--client-id", self.paho_id, "--topic", self.topic, "--protocol", self.protocol]
        args += ["--messages", str(messages), "--timeout", str(timeout)]
        args += ["--session-expiry", str(self.session_expiry_s)]
        args += ["--receive-maximum", str(self.receive_maximum)]
        done = subprocess.run(
            args, check=True, timeout=timeout + 30, capture_output=True, text=True
        )
        return done.stdout


# -- the paho client (in its own process) ---------------------------------------------------------


def _connect(args: argparse.Namespace) -> mqtt.Client:
    if args.protocol == "v5":
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5
        )
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = args.session_expiry
        props.ReceiveMaximum = args.receive_maximum
        client.connect("127.0.0.1", args.port, 30, clean_start=False, properties=props)
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=args.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        client.connect("127.0.0.1", args.port, 30)
    return client


def _prepare(args: argparse.Namespace) -> None:
    subscribed = threading.Event()
    client = _connect(args)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.loop_start()
    client.subscribe(args.topic, qos=1)
    ok = subscribed.wait(args.timeout)
    client.disconnect()
    client.loop_stop()
    if not ok:
        raise SystemExit("no SUBACK from the broker")


def _drain(args: argparse.Namespace) -> None:
    done = threading.Event()
    received = 0
    last = 0.0

    def on_message(*_args: object) -> None:
        nonlocal received, last
        received += 1
        if received >= args.messages:
            last = time.monotonic()
            done.set()

    start = time.monotonic()
    client = _connect(args)
    client.on_message = on_message
    client.loop_start()
    if not done.wait(args.timeout):
        last = time.monotonic()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"received": received, "seconds": last - start}))


def main(argv: list[str] | None = None) -> None:
    """The paho baseline client: ``prepare`` its session or ``drain`` it."""
    parser = argparse.ArgumentParser(prog="python -m bridge.lab.bench.baselines")
    parser.add_argument("action", choices=["prepare", "drain"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--protocol", choices=["v5", "v311"], default="v5")
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--session-expiry", type=int, default=3600)
    parser.add_argument("--receive-maximum", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.action == "prepare":
        _prepare(args)
    else:
        _drain(args)


if __name__ == "__main__":
    main()
