"""A live Sparkplug B edge node written by someone else: Eclipse Tahu's JavaScript client (npm
``sparkplug-client``) run by ``tests/peers/sparkplug/edge-node.js``, told what to publish one
command at a time. Every value it publishes it prints; :attr:`TahuEdgeNode.want` is the points
the bridge should deliver for them (the no-loss oracle).

Locally, without node or the packages, a test using it is skipped with the install command;
in CI (``CI=true``) it fails, as :mod:`tests.support.sparkplug_peer` does.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from tests.support.oracle import Point
from tests.support.sparkplug_peer import PEER, node_for

# The rule every peer test maps with: "{node}-{device}" for a device's metrics, the node's own
# under "{node}", "/" in a name → "_", the bdSeq metric sparkplug-client adds left out.
RULE_DEVICE_ID = "{node}-{device}"


class TahuEdgeNode:
    """The Node.js edge node as a subprocess; :meth:`do` runs one command and returns when the
    node says it is done (its messages handed to the socket)."""

    def __init__(
        self,
        port: int,
        node: str,
        *,
        group: str = "plant",
        metrics: list[dict[str, str]] | None = None,
        devices: dict[str, list[dict[str, str]]] | None = None,
        qos: int = 0,
        will_qos: int | None = None,
        start_ms: int | None = None,
    ) -> None:
        self.node = node
        config: dict[str, Any] = {
            "port": port,
            "group": group,
            "node": node,
            "qos": qos,
            "start_ms": start_ms or int(time.time() * 1000) - 600_000,
            "metrics": metrics if metrics is not None else [{"name": "Env/Temp", "type": "Double"}],
            "devices": devices
            if devices is not None
            else {"pump": [{"name": "Level", "type": "Int16"}, {"name": "Flow", "type": "Float"}]},
        }
        if will_qos is not None:
            config["will_qos"] = will_qos
        self.want: set[Point] = set()
        self.published: list[dict[str, Any]] = []
        self.connects = 0
        self.proc = subprocess.Popen(
            [node_for("sparkplug-client"), str(PEER / "edge-node.js"), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PEER,
        )

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the Tahu edge node exited ({self.proc.wait()}): {err[-3000:]}")
        out: dict[str, Any] = json.loads(line)
        if "published" in out:
            p = out["published"]
            self.published.append(p)
            device = self.node if p["device"] is None else f"{self.node}-{p['device']}"
            self.want.add((device, p["metric"].replace("/", "_"), p["timestamp"], p["value"]))
        if "connected" in out:
            self.connects = out["connected"]
        return out

    def wait_connected(self, times: int = 1) -> None:
        """Until the node has made its ``times``-th MQTT connection."""
        while self.connects < times:
            self._line()

    def do(self, command: str, **args: Any) -> None:
        """Run one command (birth, data, skip_seq, stop, vanish; see edge-node.js)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"do": command, **args}) + "\n")
        self.proc.stdin.flush()
        while self._line().get("done") != command:
            pass
        if command in ("stop", "vanish"):
            assert self.proc.wait(timeout=30) == 0

    def close(self) -> None:
        """Kill the node if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
