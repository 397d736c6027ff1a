"""A private RabbitMQ node with the MQTT plugin, on free loopback ports, with its own node name,
data and log directories, configuration and Erlang cookie.

Never the machine's RabbitMQ service: the node gets its own ``RABBITMQ_NODENAME``, AMQP,
distribution and MQTT ports, ``RABBITMQ_MNESIA_BASE``/``LOG_BASE``, configuration files and a
``HOME`` holding a cookie of its own, and it runs without epmd (``-start_epmd false
-erl_epmd_port``), so it neither starts nor registers with the machine's. It is stopped by its
own pid only. Debian's ``/usr/sbin/rabbitmq-server`` switches to the ``rabbitmq`` user when run
as root, so the script behind it is started directly.

RabbitMQ 3.10's MQTT plugin speaks MQTT 3.1.1 only (v5 came with 3.13); a session is a durable
queue, ``mqtt.prefetch`` (default 10) is the window of unacknowledged messages per client.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import ClassVar

from bridge.lab.broker.process import BrokerProcess, BrokerUnavailable, Protocol, free_port

INSTALL_HINT = (
    "RabbitMQ is not installed: apt-get install -y rabbitmq-server (the tests start a private "
    "node of their own and never use the machine's service)"
)
_DEBIAN_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def rabbitmq_script() -> str:
    """The script that starts a node in the foreground as the current user."""
    if _DEBIAN_SCRIPT.is_file():
        return str(_DEBIAN_SCRIPT)
    found = shutil.which("rabbitmq-server")
    if found is None or found.startswith("/usr/sbin/"):  # Debian's wrapper: su rabbitmq
        raise BrokerUnavailable(INSTALL_HINT)
    return found


class RabbitMqBroker(BrokerProcess):
    """A RabbitMQ node named ``metriqo-test-<port>@localhost`` with MQTT on ``<port>``."""

    name: ClassVar[str] = "rabbitmq"
    protocol: ClassVar[Protocol] = "v311"
    start_timeout: ClassVar[float] = 90.0  # an Erlang VM and a plugin, on a busy machine

    def __init__(
        self, port: int | None = None, workdir: Path | None = None, *, prefetch: int = 10
    ) -> None:
        super().__init__(port, workdir)
        self.prefetch = prefetch
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.node = f"metriqo-test-{self.port}@localhost"
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16), encoding="ascii")
            cookie.chmod(0o600)

    def command(self) -> list[str]:
        """The node's start script, after writing its configuration."""
        script = rabbitmq_script()
        (self.workdir / "rabbitmq.conf").write_text(
            "# generated: a private RabbitMQ node for one test\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            f"mqtt.prefetch = {self.prefetch}\n"
            "loopback_users = none\n"
            "log.console = true\n"
            "log.console.level = warning\n"
            "log.file = false\n",
            encoding="utf-8",
        )
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n", encoding="utf-8")
        (self.workdir / "rabbitmq-env.conf").touch()  # not /etc/rabbitmq/rabbitmq-env.conf
        return [script]

    def environment(self) -> dict[str, str]:
        """Nothing of the machine's RabbitMQ settings; everything of this node's own."""
        w = self.workdir
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(w / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
            # exec the VM in place of the script: the pid we hold is the node's own
            "RUNNING_UNDER_SYSTEMD": "1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                f"-start_epmd false -erl_epmd_port {self.dist_port}"
            ),
        }
