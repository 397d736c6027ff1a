"""aedes, the Node.js MQTT broker, with sessions, queued QoS 1 messages and retained messages in
LevelDB (``aedes-persistence-level``) in the broker's own directory, on a free loopback port.

The broker is ``tests/brokers/aedes/broker.mjs`` in the checkout; its packages are pinned in
``tests/brokers/aedes/package-lock.json`` and installed with ``npm ci --prefix tests/brokers/aedes``
(``.ci/run`` does it). aedes speaks MQTT 3.1.1 only.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from bridge.lab.broker.process import (
    BrokerProcess,
    BrokerUnavailable,
    Protocol,
    find_executable,
    repo_dir,
)

INSTALL_HINT = (
    "aedes is not installed: install Node.js 20 or newer (apt-get install -y nodejs npm), "
    "then run: npm ci --prefix tests/brokers/aedes"
)


class AedesBroker(BrokerProcess):
    """``node tests/brokers/aedes/broker.mjs`` on ``127.0.0.1:<port>``."""

    name: ClassVar[str] = "aedes"
    protocol: ClassVar[Protocol] = "v311"

    def __init__(
        self, port: int | None = None, workdir: Path | None = None, *, queue_limit: int = 42
    ) -> None:
        super().__init__(port, workdir)
        self.queue_limit = queue_limit

    def command(self) -> list[str]:
        """``node broker.mjs --port <port> --data <dir>``."""
        node = find_executable("node", "nodejs")
        project = repo_dir("tests/brokers/aedes")
        if node is None or project is None or not (project / "node_modules/aedes").is_dir():
            raise BrokerUnavailable(INSTALL_HINT)
        return [
            node,
            str(project / "broker.mjs"),
            "--port",
            str(self.port),
            "--data",
            str(self.workdir / "leveldb"),
            "--queue-limit",
            str(self.queue_limit),
        ]
