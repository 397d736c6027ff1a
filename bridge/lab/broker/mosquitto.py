"""A throwaway local mosquitto on a free loopback port (demo, tests, benchmarks).

Uses the installed ``mosquitto`` binary and the project's ``mosquitto/mosquitto.conf`` (its copy
shipped in the package, so an installed wheel finds it from any directory), adding a loopback
listener and a private persistence directory. Without those settings mosquitto 2 refuses every
client that has no password.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import ClassVar

from bridge.lab.broker.process import (
    BrokerProcess,
    BrokerUnavailable,
    Protocol,
    find_executable,
)
from bridge.lab.examples import MOSQUITTO_CONF

INSTALL_HINT = (
    "mosquitto is not installed. On Debian/Ubuntu: sudo apt-get update && "
    "sudo apt-get install -y mosquitto mosquitto-clients ; on macOS: brew install mosquitto"
)


def mosquitto_binary() -> str:
    """Path of the mosquitto binary, or raise with an install hint."""
    found = find_executable("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
    if found is None:
        raise BrokerUnavailable(INSTALL_HINT)
    return found


class LocalBroker(BrokerProcess):
    """mosquitto on ``127.0.0.1:<port>`` with the project's settings plus ``extra_config``."""

    name: ClassVar[str] = "mosquitto"
    protocol: ClassVar[Protocol] = "v5"
    start_timeout: ClassVar[float] = 10.0

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        extra_config: str = "",
    ) -> None:
        super().__init__(port, workdir)
        self.extra_config = extra_config

    def _write_config(self) -> Path:
        base = MOSQUITTO_CONF.read_text(encoding="utf-8")
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

    def command(self) -> list[str]:
        """``mosquitto -c <generated config>``."""
        return [mosquitto_binary(), "-c", str(self._write_config())]
