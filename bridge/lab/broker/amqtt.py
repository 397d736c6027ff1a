"""amqtt, the Python asyncio MQTT broker, on a free loopback port, with its session database
(``SessionDBPlugin``, SQLite) in the broker's own directory.

Installed from PyPI with the ``brokers`` extras (``pip install -e '.[brokers]'``). amqtt speaks
MQTT 3.1.1 only. It keeps messages for an offline persistent session only when the client logged
in with a user name (anonymous sessions get nothing queued), so its clients log in as
``bridge``: anonymous logins are refused and any user name is accepted.
"""

from __future__ import annotations

from typing import ClassVar

from bridge.lab.broker.process import BrokerProcess, BrokerUnavailable, Protocol, find_executable

INSTALL_HINT = "amqtt is not installed: pip install -e '.[brokers]'"


class AmqttBroker(BrokerProcess):
    """``amqtt -c <generated config>`` on ``127.0.0.1:<port>``."""

    name: ClassVar[str] = "amqtt"
    protocol: ClassVar[Protocol] = "v311"
    username: ClassVar[str | None] = "bridge"

    def command(self) -> list[str]:
        """``amqtt -c amqtt.yaml``."""
        binary = find_executable("amqtt")
        if binary is None:
            raise BrokerUnavailable(INSTALL_HINT)
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            f"""# generated: a private amqtt broker for one test
listeners:
  default:
    type: tcp
    bind: 127.0.0.1:{self.port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: false
  amqtt.contrib.persistence.SessionDBPlugin:
    connection: "sqlite+aiosqlite:///{self.workdir / "sessions.db"}"
    clear_on_shutdown: false
""",
            encoding="utf-8",
        )
        return [binary, "-c", str(conf)]
