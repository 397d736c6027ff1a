"""The broker matrix: which implementations the scenarios run on, what each one was measured to
do (the table in docs/deployment/brokers.md), and starting one for a test.

mosquitto, NATS and aedes run everywhere (``.ci/run`` installs what they need; locally a missing
one skips, under ``CI=true`` it fails). RabbitMQ and amqtt carry the ``other_brokers`` marker and
run only when named in ``METRIQO_TEST_BROKERS`` (``rabbitmq,amqtt`` or ``all``): a private
RabbitMQ node takes ~10 s per start, and amqtt needs the ``brokers`` extras.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.lab.broker import BROKERS, BrokerProcess, BrokerUnavailable, make_broker

CI_BROKERS = ("mosquitto", "nats", "aedes")
OTHER_BROKERS = ("rabbitmq", "amqtt")
SELECT_ENV = "METRIQO_TEST_BROKERS"


@dataclass(frozen=True, slots=True)
class Facts:
    """What one broker does, as tests/brokers/test_broker_facts.py measures it (v3.1.1 clients,
    the fixture's settings)."""

    v5: bool  # accepts an MQTT v5 CONNECT
    window: int | None  # unacknowledged QoS 1 messages it sends one client (None: no limit)
    redelivered: (
        str  # unacknowledged messages after a reconnect: "at once", "after ack_wait", "never"
    )
    dup_flag: bool  # redelivered messages carry DUP=1
    shared_subscriptions: bool  # $share/<group>/<filter> delivers
    max_payload_2mib: bool  # a 2 MiB payload is accepted and delivered
    loses_on_broker_restart: bool  # queued QoS 1 messages are gone after a clean restart
    loses_unacked: bool  # drops what a client did not acknowledge in time (amqtt: 5 s)
    holds_back: bool = False  # sends some messages only at the client's next reconnect


FACTS: dict[str, Facts] = {
    "mosquitto": Facts(
        v5=True,
        window=1000,  # max_inflight_messages in mosquitto/mosquitto.conf (default 20)
        redelivered="at once",
        dup_flag=True,
        shared_subscriptions=True,
        max_payload_2mib=True,
        loses_on_broker_restart=False,
        loses_unacked=False,
    ),
    "nats": Facts(
        v5=False,
        window=1024,  # mqtt.max_ack_pending
        redelivered="after ack_wait",
        dup_flag=True,
        shared_subscriptions=False,
        max_payload_2mib=True,
        loses_on_broker_restart=False,
        loses_unacked=False,
    ),
    "aedes": Facts(
        v5=False,
        window=None,
        redelivered="at once",
        dup_flag=False,
        shared_subscriptions=False,
        max_payload_2mib=True,
        loses_on_broker_restart=False,
        loses_unacked=False,
        # aedes-persistence-level: a message whose enqueue has not reached LevelDB when aedes
        # sends it fails 'no such packet' and waits in the store for the next reconnect.
        holds_back=True,
    ),
    "rabbitmq": Facts(
        v5=False,
        window=10,  # mqtt.prefetch
        redelivered="at once",
        dup_flag=True,
        shared_subscriptions=False,
        max_payload_2mib=True,
        loses_on_broker_restart=False,
        loses_unacked=False,
    ),
    "amqtt": Facts(
        v5=False,
        window=None,
        redelivered="never",
        dup_flag=False,
        shared_subscriptions=False,
        max_payload_2mib=True,
        loses_on_broker_restart=True,
        loses_unacked=True,
    ),
}
assert set(FACTS) == set(BROKERS) == set(CI_BROKERS + OTHER_BROKERS)


def broker_params(names: tuple[str, ...] = CI_BROKERS + OTHER_BROKERS) -> list[object]:
    """``pytest.param`` per broker, the ones CI does not run marked ``other_brokers``."""
    return [
        pytest.param(n, id=n, marks=[pytest.mark.other_brokers] if n in OTHER_BROKERS else [])
        for n in names
    ]


def _selected(name: str) -> bool:
    wanted = {w.strip() for w in os.environ.get(SELECT_ENV, "").split(",") if w.strip()}
    return name in CI_BROKERS or name in wanted or "all" in wanted


def open_broker(name: str, workdir: Path) -> Iterator[BrokerProcess]:
    """Start broker ``name`` for one test (a fixture body); skip a broker that is not selected
    or, outside CI, not installed."""
    if not _selected(name):
        pytest.skip(
            f"{name} runs only when selected: {SELECT_ENV}={name} .venv/bin/python -m pytest "
            "tests/brokers (docs/deployment/brokers.md)"
        )
    broker = make_broker(name, workdir)
    try:
        broker.command()  # raises when it is not installed; a failed start fails the test
    except BrokerUnavailable as exc:
        if os.environ.get("CI") == "true" or name in OTHER_BROKERS:
            pytest.fail(f"{exc}")  # CI installs it; an explicitly selected broker must run
        pytest.skip(f"{exc}")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
