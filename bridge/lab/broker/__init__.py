"""Throwaway local MQTT brokers, each a child process on free loopback ports with a data
directory of its own: mosquitto (:class:`LocalBroker`, what the demo, bench and most tests use)
and the other implementations the bridge is tested against (``docs/deployment/brokers.md``).

:func:`make_broker` starts none of them; use the result as a context manager, or call
``start``/``stop`` to restart it on the same port and data directory.
"""

from __future__ import annotations

from pathlib import Path

from bridge.lab.broker.aedes import AedesBroker
from bridge.lab.broker.amqtt import AmqttBroker
from bridge.lab.broker.mosquitto import LocalBroker, mosquitto_binary
from bridge.lab.broker.nats import NatsBroker
from bridge.lab.broker.process import BrokerProcess, BrokerUnavailable, free_port
from bridge.lab.broker.rabbitmq import RabbitMqBroker

__all__ = [
    "BROKERS",
    "AedesBroker",
    "AmqttBroker",
    "BrokerProcess",
    "BrokerUnavailable",
    "LocalBroker",
    "NatsBroker",
    "RabbitMqBroker",
    "free_port",
    "make_broker",
    "mosquitto_binary",
]

BROKERS: dict[str, type[BrokerProcess]] = {
    "mosquitto": LocalBroker,
    "nats": NatsBroker,
    "aedes": AedesBroker,
    "rabbitmq": RabbitMqBroker,
    "amqtt": AmqttBroker,
}


def make_broker(name: str, workdir: Path | None = None) -> BrokerProcess:
    """A broker of implementation ``name`` (a key of :data:`BROKERS`), not yet started."""
    try:
        kind = BROKERS[name]
    except KeyError:
        raise ValueError(f"unknown broker {name!r}; one of {', '.join(BROKERS)}") from None
    return kind(workdir=workdir)
