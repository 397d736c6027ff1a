"""The ``metriqo-bridge`` command line: one module per command, a dispatch table here.

Each command module registers its parser and sets ``handler``; :func:`main` parses, calls the
handler and turns the error hierarchy into the exit codes of :mod:`bridge.errors`. ``run`` is
the default when no command is given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from bridge import __version__
from bridge.cli import (
    alerts,
    backup,
    bench,
    check,
    dead_letters,
    demo,
    devices,
    discover,
    explain,
    health,
    mapping_tests,
    recipes,
    run,
    schema,
    simulate_api,
    simulate_sensors,
    soak,
    tap,
    verify,
)
from bridge.cli.command import Command, Handler
from bridge.errors import (
    EX_CONFIG,
    EX_FAILURE,
    EX_INTERRUPTED,
    EX_OK,
    EX_TEMPFAIL,
    EX_TERMINATED,
    EX_UNAVAILABLE,
    BrokerError,
    ConfigError,
    ConfigErrors,
    SpoolError,
    SpoolLocked,
    SpoolTooNew,
    Terminated,
)
from bridge.logs import json_line, requested_format
from bridge.spool.schema import SCHEMA_VERSION

# In the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    run,
    mapping_tests,
    check,
    explain,
    recipes,
    alerts,
    discover,
    tap,
    schema,
    simulate_api,
    dead_letters,
    devices,
    verify,
    health,
    backup,
    simulate_sensors,
    bench,
    soak,
    demo,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the CLI reference and tests)."""
    parser = argparse.ArgumentParser(
        prog="metriqo-bridge",
        description="Bridge MQTT sensor topics to the Metriqo telemetry API without data loss.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_line(),
        help="show the version and the spool layout version it reads and writes, then exit",
    )
    sub = parser.add_subparsers(dest="command")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def version_line() -> str:
    """``metriqo-bridge 0.1.0 (spool layout 5)``: the installed version (from the git tag it was
    built at) and the spool layout it writes. A spool of a lower layout is migrated when opened;
    one of a higher layout is refused, untouched (docs/operations/upgrades-and-backups.md)."""
    return f"metriqo-bridge {__version__} (spool layout {SCHEMA_VERSION})"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metriqo-bridge`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "run")
    args = build_parser().parse_args(args_list)
    handler: Handler = args.handler
    previous = _raise_on_sigterm()
    try:
        return handler(args)
    except ConfigError as exc:
        _report_config_error(exc)
        return EX_CONFIG
    except BrokerError as exc:
        print(f"metriqo-bridge: broker: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except SpoolTooNew as exc:
        print(f"metriqo-bridge: spool error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except SpoolLocked as exc:
        print(f"metriqo-bridge: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except SpoolError as exc:
        print(f"metriqo-bridge: spool error: {exc}", file=sys.stderr)
        return EX_FAILURE
    except Terminated:
        return EX_TERMINATED
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()  # "| head" closed the pipe: stop quietly, as other tools do
        return EX_OK
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm() -> signal.Handlers | Callable[..., object] | int | None:
    """SIGTERM raises :class:`Terminated` from here on (the default would end the process at
    once, leaving the broker and bridge processes of ``demo``, ``bench`` or ``soak`` running);
    ``run`` and the simulators install their own handlers while their loop runs. Returns the
    handler to restore (None off the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminated)


def _terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def _report_config_error(exc: ConfigError) -> None:
    """Text for a terminal (each error with the excerpt of its line); with LOG_FORMAT=json one
    JSON line per error with file, line, column and key as fields, so a log collector shows
    why a container exits 78."""
    if requested_format() != "json":
        print(f"metriqo-bridge: configuration error:\n{exc}", file=sys.stderr)
        return
    for err in exc.errors if isinstance(exc, ConfigErrors) else [exc]:
        line = json_line(
            "ERROR",
            f"configuration error: {err.headline}",
            file=err.file,
            line=err.line,
            column=err.column,
            key=err.key,
            error=err.detail,
        )
        print(line, file=sys.stderr)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
