"""How ``health``, ``backup`` and ``dead-letters`` find the bridge they are about: the same
settings as ``run`` (file, environment, flags), corrected by the running bridge's runtime file
in the state directory (:mod:`bridge.state`).

The runtime file wins over the settings file, the environment and the defaults: the bridge may
have been started with flags this command was not given, and the file says what it actually
uses. Only what is given on this command's own command line wins over the runtime file.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bridge.cli.flags import settings_from
from bridge.errors import ConfigError
from bridge.settings import Settings
from bridge.state import (
    RUN_DIR,
    RuntimeInfo,
    legacy_spool,
    legacy_warning,
    pick,
    read_runtimes,
)


@dataclass(frozen=True, slots=True)
class Located:
    """The settings to use, the running bridge they came from (if one was found), and notes
    for stderr (a legacy spool in use)."""

    settings: Settings
    bridge: RuntimeInfo | None
    notes: tuple[str, ...] = ()


def _on_command_line(settings: Settings, key: str) -> bool:
    return settings.origins.get(key, "").startswith("command-line")


def locate(args: argparse.Namespace) -> Located:
    """The settings of ``args``, pointed at the running bridge where its runtime file says so.

    Raises:
        ConfigError: the settings are invalid.
        ConfigError: also when several bridges share the state directory and no client id
            picks one (the message lists their client ids).
    """
    settings = settings_from(args)
    client_id = settings.mqtt.client_id if "mqtt.client_id" in settings.origins else None
    chosen = pick(read_runtimes(settings.state_dir), client_id)
    if isinstance(chosen, str):
        raise ConfigError(chosen, file=str(settings.state_dir / RUN_DIR), key="mqtt.client_id")
    if chosen is None:
        return _without_bridge(settings)
    spool, http, mapping = settings.spool, settings.http, settings.mapping
    if not _on_command_line(settings, "spool.path"):
        spool = dataclasses.replace(spool, path=Path(chosen.spool_path))
    if not _on_command_line(settings, "mapping.file"):
        mapping = dataclasses.replace(mapping, file=Path(chosen.mapping_file))
    if not (_on_command_line(settings, "http.host") or _on_command_line(settings, "http.port")):
        http = dataclasses.replace(
            http, enabled=chosen.http_enabled, host=chosen.http_host, port=chosen.http_port
        )
    located = dataclasses.replace(settings, spool=spool, http=http, mapping=mapping)
    return Located(located, chosen)


def _without_bridge(settings: Settings) -> Located:
    """No running bridge: the settings alone, with the old default spool if it is still the
    one in use (see :func:`bridge.state.legacy_spool`)."""
    old = legacy_spool(settings.spool.path, "spool.path" in settings.origins, Path.cwd())
    if old is None:
        return Located(settings, None)
    spool = dataclasses.replace(settings.spool, path=old)
    note = legacy_warning(old, settings.spool.path)
    return Located(dataclasses.replace(settings, spool=spool), None, (note,))
