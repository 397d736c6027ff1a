"""The settings flags that ``run``, ``health``, ``backup`` and ``dead-letters`` share, and the
settings they select: the same file, environment and flags give every command the same bridge.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bridge.config.loader import load_settings
from bridge.errors import ConfigError
from bridge.settings import Settings

# Flag → the setting it sets (each is also reachable as --set KEY=VALUE).
_FLAG_KEYS = {
    "mappings": "mapping.file",
    "mqtt_host": "mqtt.host",
    "mqtt_port": "mqtt.port",
    "client_id": "mqtt.client_id",
    "api_url": "api.base_url",
    "spool": "spool.path",
    "http_port": "http.port",
    "log_level": "log_level",
    "log_format": "log_format",
}


def add_settings_flags(p: argparse.ArgumentParser, *, print_config: bool = True) -> None:
    """The flags of ``run``: a settings file, the common settings, ``--set`` and (unless
    ``print_config`` is false) ``--print-config``."""
    p.add_argument("--config", type=Path, help="settings file (YAML); env: METRIQO_BRIDGE_CONFIG")
    p.add_argument("--mappings", metavar="FILE", help="mapping file (mapping.file)")
    p.add_argument("--mqtt-host", help="broker host (mqtt.host)")
    p.add_argument("--mqtt-port", help="broker port (mqtt.port)")
    p.add_argument("--client-id", help="MQTT client id (mqtt.client_id)")
    p.add_argument("--api-url", help="API base URL (api.base_url)")
    p.add_argument("--spool", help="spool database path (spool.path)")
    p.add_argument("--http-port", help="metrics/health port (http.port)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (log_level)")
    p.add_argument("--log-format", help="text or json (log_format; env: LOG_FORMAT)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting by dotted key, e.g. --set batch.linger_s=0.5 (repeatable)",
    )
    if print_config:
        p.add_argument("--print-config", action="store_true", help="print effective settings, exit")


def overrides(args: argparse.Namespace) -> dict[str, str]:
    """``section.key`` → value from the flags and ``--set`` items."""
    out: dict[str, str] = {}
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = str(value)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            # Not echoed: an item without '=' may be a token typed in the wrong place.
            raise ConfigError("--set expects KEY=VALUE; an item has no '='", file="command line")
        out[key.strip()] = value
    return out


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings these flags select (with the file and the environment)."""
    return load_settings(file=args.config, overrides=overrides(args))
