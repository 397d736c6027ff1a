"""``metriqo-bridge backup DEST``: a consistent copy of the spool, safe beside a running bridge
(see :mod:`bridge.spool.backup`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge.cli.command import Subparsers
from bridge.cli.flags import LOCATE_SPOOL, add_settings_flags
from bridge.cli.locate import locate
from bridge.config.pathnames import DEFAULTS, NOT_SHOWN, shown_path
from bridge.errors import EX_FAILURE, EX_NOINPUT, EX_OK, EX_USAGE, SpoolError
from bridge.spool.backup import backup


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "backup",
        help="copy the spool consistently, also beside a running bridge",
        description="Copy the spool with SQLite's online backup, check the copy and rename it "
        "into place, also beside a running bridge. The spool is the running bridge's (from its "
        "runtime file in the state directory), else spool.path. See "
        "docs/operations/upgrades-and-backups.md.",
        epilog="exit codes: 0 copied, 1 the copy failed (DEST untouched), 2 DEST exists "
        "(use --force), 66 no spool at spool.path.",
    )
    add_settings_flags(p, LOCATE_SPOOL, print_config=False)
    p.add_argument("dest", type=Path, help="file to write the copy to")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    dest: Path = args.dest
    located = locate(args)
    for note in located.notes:
        print(f"metriqo-bridge backup: {note}", file=sys.stderr)
    settings = located.settings
    source = settings.spool.path
    if not source.is_file():
        shown = shown_path(source, settings.origins.get("spool.path", DEFAULTS))
        at = shown or "spool.path " + NOT_SHOWN
        print(
            f"metriqo-bridge backup: no spool at {at} and no running bridge in "
            f"{settings.state_dir} (check spool.path or --state-dir)",
            file=sys.stderr,
        )
        return EX_NOINPUT
    if dest.exists() and not args.force:
        print(f"metriqo-bridge backup: {dest} exists (use --force)", file=sys.stderr)
        return EX_USAGE
    try:
        summary = backup(source, dest)
    except SpoolError as exc:
        print(f"metriqo-bridge backup: {exc}", file=sys.stderr)
        return EX_FAILURE
    print(f"backed up {source} to {dest}: {summary}")
    return EX_OK
