"""The settings flags of every command, and the settings they select: the one table of flag →
setting. A flag is named after its setting (``--spool-path`` sets ``spool.path``), every
command that takes a setting takes it under the same name, and each command shows only the
flags that matter to it (a *scope*, below). The reference pages are generated from this table.

Old spellings (``--mappings``, ``--spool``, ``--api-url``, ``--client-id``) still work, hidden
from ``--help``, and print a one-line deprecation notice.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.config.loader import load_settings
from bridge.errors import ConfigError
from bridge.settings import Settings


@dataclass(frozen=True, slots=True)
class Flag:
    """One settings flag: its name, the setting it sets, its help, and its old spellings."""

    key: str  # the setting, e.g. "spool.path"
    help: str
    metavar: str
    old: tuple[str, ...] = ()  # deprecated spellings, hidden from --help

    @property
    def name(self) -> str:
        """``--spool-path`` for ``spool.path``: always the setting's own name."""
        return "--" + self.key.replace(".", "-").replace("_", "-")

    @property
    def dest(self) -> str:
        """Where argparse keeps the value: ``args.mqtt_host`` for ``--mqtt-host``, as before
        the flags were renamed, so code that reads ``args.mqtt_host`` keeps working."""
        return self.key.replace(".", "_")


# Flag → setting, the single source (each is also reachable as --set KEY=VALUE).
FLAGS: tuple[Flag, ...] = (
    Flag("state_dir", "state directory: default spool, lock, runtime file, alerts ledger", "DIR"),
    Flag("mapping.file", "mapping file", "FILE", old=("--mappings",)),
    Flag("mqtt.host", "broker host", "HOST"),
    Flag("mqtt.port", "broker port", "PORT"),
    Flag("mqtt.client_id", "MQTT client id", "ID", old=("--client-id",)),
    Flag("mqtt.username", "broker user name", "NAME"),
    Flag("mqtt.password_file", "file holding the broker password", "FILE"),
    Flag("api.base_url", "API base URL", "URL", old=("--api-url",)),
    Flag("api.token_file", "file holding the API token", "FILE"),
    Flag("spool.path", "spool database path", "FILE", old=("--spool",)),
    Flag("http.host", "metrics/health address", "HOST"),
    Flag("http.port", "metrics/health port", "PORT"),
    Flag("log_level", "DEBUG, INFO, WARNING or ERROR", "LEVEL"),
    Flag("log_format", "text or json (env also: LOG_FORMAT)", "FORMAT"),
)
_BY_KEY = {flag.key: flag for flag in FLAGS}
# What check, test and explain read when no mapping file is named (run: mapping.file).
DEFAULT_MAPPING_FILE = Path("topic-mappings.yaml")

# Scopes: the settings flags each kind of command shows.
RUN = tuple(flag.key for flag in FLAGS)  # everything: run (and, by default, new commands)
# What finds a running bridge's HTTP endpoint (health).
LOCATE_BRIDGE = ("state_dir", "mqtt.client_id", "http.host", "http.port")
# What finds a bridge's spool (backup, dead-letters).
LOCATE_SPOOL = ("state_dir", "mqtt.client_id", "spool.path")
# What reaches the broker (for commands that connect to it as the bridge would).
BROKER = (
    "mqtt.host",
    "mqtt.port",
    "mqtt.client_id",
    "mqtt.username",
    "mqtt.password_file",
    "log_level",
    "log_format",
)


class _Deprecated(argparse.Action):
    """An old spelling: stores like the new flag, and says once that it is deprecated."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        new = self.metavar  # the new flag's name travels in metavar (help is suppressed)
        print(
            f"metriqo-bridge: {option_string} is deprecated; use {new} (it still works for now)",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_old_spelling(
    p: argparse.ArgumentParser | Any, old: str, new: str, dest: str, *, type: Any = None
) -> None:
    """A hidden, deprecated spelling ``old`` of a command's own option ``new`` (with the same
    ``type``)."""
    # SUPPRESS as default: the first action of a dest sets its default, and it must be the new
    # option's.
    p.add_argument(
        old,
        dest=dest,
        action=_Deprecated,
        metavar=new,
        type=type,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def add_flag(
    p: argparse.ArgumentParser | Any,
    key: str,
    *,
    help_text: str | None = None,
    old: tuple[str, ...] = (),
) -> None:
    """One settings flag (and its hidden old spellings, with ``old`` this command's own) on
    ``p`` (a parser or a group)."""
    flag = _BY_KEY[key]
    text = help_text or flag.help
    p.add_argument(flag.name, dest=flag.dest, metavar=flag.metavar, help=f"{text} ({flag.key})")
    for spelling in (*flag.old, *old):
        add_old_spelling(p, spelling, flag.name, flag.dest)


def add_settings_flags(
    p: argparse.ArgumentParser | Any, keys: Sequence[str] = RUN, *, print_config: bool = True
) -> None:
    """``--config``, the settings flags of ``keys`` (default: all of them, as ``run`` has),
    ``--set`` and (unless ``print_config`` is false) ``--print-config``."""
    p.add_argument("--config", type=Path, help="settings file (YAML); env: METRIQO_BRIDGE_CONFIG")
    for key in keys:
        add_flag(p, key)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting by dotted key, e.g. --set batch.linger_s=0.5 (repeatable)",
    )
    if print_config:
        p.add_argument("--print-config", action="store_true", help="print effective settings, exit")


def add_mapping_file(
    p: argparse.ArgumentParser, *, positional: bool, old: tuple[str, ...] = ()
) -> None:
    """``--mapping-file FILE`` for the commands that read a mapping file on their own (check,
    test, explain); with ``positional``, also the shorthand ``COMMAND FILE`` (one or the
    other). Read it back with :func:`mapping_file`."""
    group = p.add_mutually_exclusive_group()
    add_flag(
        group, "mapping.file", help_text=f"mapping file (default {DEFAULT_MAPPING_FILE})", old=old
    )
    if positional:
        group.add_argument(
            "file", nargs="?", type=Path, metavar="FILE", help="same as --mapping-file FILE"
        )


def mapping_file(args: argparse.Namespace) -> Path:
    """The mapping file ``--mapping-file`` or the positional ``FILE`` named (or the default)."""
    value = getattr(args, _BY_KEY["mapping.file"].dest, None) or getattr(args, "file", None)
    return Path(value) if value is not None else DEFAULT_MAPPING_FILE


def overrides(args: argparse.Namespace) -> dict[str, str]:
    """``section.key`` → value from the flags and ``--set`` items."""
    out: dict[str, str] = {}
    for flag in FLAGS:
        value = getattr(args, flag.dest, None)
        if value is not None:
            out[flag.key] = str(value)
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            # Not echoed: an item without '=' may be a token typed in the wrong place.
            raise ConfigError("--set expects KEY=VALUE; an item has no '='", file="command line")
        out[key.strip()] = value
    return out


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings these flags select (with the file and the environment)."""
    return load_settings(file=getattr(args, "config", None), overrides=overrides(args))
