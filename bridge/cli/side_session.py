"""What ``discover`` and ``tap`` share: the flags that bound a look at the broker and the side
session they open under their own client id (:mod:`bridge.mqtt.side`)."""

from __future__ import annotations

import argparse

from bridge.cli.flags import BROKER, add_settings_flags, settings_from
from bridge.settings import Settings


def add_side_flags(
    p: argparse.ArgumentParser, *, seconds: float, messages: int, keys: tuple[str, ...] = ()
) -> None:
    """The flags of the settings that reach the broker (TLS through ``--config``/``--set``),
    those of ``keys``, and the listening bounds."""
    add_settings_flags(p, BROKER + keys, print_config=False)
    p.add_argument(
        "--filter",
        dest="filters",
        action="append",
        metavar="FILTER",
        help="MQTT topic filter to subscribe to at QoS 0 (repeatable)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=seconds,
        help=f"listen this long (default {seconds:g})",
    )
    p.add_argument(
        "--messages",
        type=int,
        default=messages,
        help=f"stop after this many messages, whichever comes first (default {messages}; 0: "
        "no limit)",
    )
    p.add_argument(
        "--side-client-id",
        metavar="ID",
        help="client id of the side session (default: a fresh mqb-<command>-<random>; never "
        "the bridge's mqtt.client_id)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def side_settings(args: argparse.Namespace) -> tuple[Settings, str | None, str]:
    """The settings, the broker password and the side session's client id."""
    from bridge.config.secrets import resolve_mqtt_password
    from bridge.mqtt.side import side_client_id

    settings = settings_from(args)
    password = resolve_mqtt_password(settings.credentials)
    client_id = args.side_client_id or side_client_id(args.command)
    return settings, password, client_id
