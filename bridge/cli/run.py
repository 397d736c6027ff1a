"""``metriqo-bridge run`` (the default command): run the bridge until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

import orjson

from bridge import __version__, heap
from bridge.cli.command import Subparsers
from bridge.cli.flags import add_settings_flags, settings_from
from bridge.errors import EX_OK

log = logging.getLogger("bridge")


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "run",
        help="run the bridge (the default)",
        description="Run the bridge: subscribe, map, commit to the spool, acknowledge, deliver. "
        "Stops gracefully on SIGTERM/SIGINT (a second signal forces exit) and reloads the mapping "
        "file on SIGHUP. --print-config prints the effective settings as JSON (secrets shown as "
        "**********) and exits. Settings: docs/reference/configuration.md.",
        epilog="exit codes: 0 stopped gracefully, 1 runtime failure (e.g. a spool write error), "
        "75 the spool is locked by another bridge, 78 configuration error (nothing started).",
    )
    add_settings_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.app import Bridge
    from bridge.config.pathnames import NamedBy
    from bridge.config.secrets import TokenSource, resolve_mqtt_password
    from bridge.event_loop import loop_factory
    from bridge.logs import setup_logging
    from bridge.mapping.identifiers import IdentifierLimits
    from bridge.mapping.loader import load_mappings
    from bridge.metrics import BridgeMetrics
    from bridge.state import legacy_spool, legacy_warning, runtime_path

    settings = settings_from(args)
    loop_name, new_loop = loop_factory(settings.event_loop, settings.origins.get("event_loop"))
    # Upgraded in place from the old relative default: keep the spool that holds the readings.
    legacy = legacy_spool(settings.spool.path, "spool.path" in settings.origins, Path.cwd())
    if legacy is not None:
        new_default = settings.spool.path
        settings = dataclasses.replace(
            settings, spool=dataclasses.replace(settings.spool, path=legacy)
        )
    if args.print_config:
        sys.stdout.write(orjson.dumps(settings.effective, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return EX_OK
    # Everything that can be wrong with the configuration fails here, before the spool opens.
    rules = load_mappings(
        settings.mapping.file,
        IdentifierLimits.of(settings.mapping),
        NamedBy.setting(settings.origins, "mapping.file"),
    )
    metrics = BridgeMetrics()
    refused = metrics.token_unusable.labels("reload")
    token = TokenSource(settings.credentials, on_refused=refused.inc)
    password = resolve_mqtt_password(settings.credentials)
    setup_logging(settings.log_level, settings.log_format)
    if legacy is not None:
        log.warning("%s", legacy_warning(legacy, new_default))
    bridge = Bridge(
        settings,
        rules,
        token,
        mqtt_password=password,
        metrics=metrics,
        mappings_path=settings.mapping.file,
        runtime_file=runtime_path(settings.state_dir, settings.mqtt.client_id),
    )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, bridge.stop)
        loop.add_signal_handler(signal.SIGHUP, bridge.request_reload)
        await bridge.run()

    log.info(
        "metriqo-bridge %s: %d rule(s), broker %s:%s, API %s, spool %s, state directory %s, "
        "event loop %s",
        __version__,
        len(rules),
        settings.mqtt.host,
        settings.mqtt.port,
        settings.sender.base_url,
        settings.spool.path,
        settings.state_dir,
        loop_name,
    )
    heap.settle()  # start-up is done: what it made lives as long as the process
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(serve())
    log.info("stopped")
    return EX_OK
