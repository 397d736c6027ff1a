"""The ``dead-letters list | export | requeue | purge`` commands: the blocking shell around the
pure core in :mod:`bridge.cli.dead_letter_rows`.

It pages through a spool opened with :meth:`~bridge.spool.store.Spool.open_shared`, so it works
beside a running bridge: every requeue or purge chunk is one transaction, and the bridge picks
the change up within about a second (it watches the spool's data version).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bridge.cli.command import Subparsers
from bridge.cli.dead_letter_rows import (
    LIST_LIMIT,
    PAGE,
    NowIgnored,
    Requeue,
    RequeueTally,
    export_line,
    format_counts,
    format_purge,
    format_table,
    format_tally,
    make_filter,
    parse_age,
    parse_time,
    plan_requeue,
    table_cells,
)
from bridge.cli.flags import LOCATE_SPOOL, add_flag, add_settings_flags
from bridge.cli.locate import locate
from bridge.config.pathnames import DEFAULTS, NOT_SHOWN, NamedBy, shown_path
from bridge.errors import EX_FAILURE, EX_NOINPUT, EX_OK, EX_USAGE
from bridge.mapping.identifiers import IdentifierLimits
from bridge.mapping.loader import load_mappings, make_mapper
from bridge.mapping.mapper import Mapper
from bridge.models import DeadLetterRow, Record
from bridge.spool.deadletters import DeadLetterFilter
from bridge.spool.store import Spool


def add_parser(sub: Subparsers) -> None:
    """``dead-letters list|export|requeue|purge`` and their shared settings and filters."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group(
        "which spool (the running bridge's, from its runtime file in the state directory; "
        "else spool.path)"
    )
    add_settings_flags(where, LOCATE_SPOOL, print_config=False)
    which = common.add_argument_group("which dead letters (all given filters must match)")
    which.add_argument(
        "--reason",
        action="append",
        default=[],
        dest="reasons",
        metavar="R",
        help="only this reason, e.g. missing_field or api_rejected (repeatable)",
    )
    which.add_argument(
        "--since",
        type=_time_arg,
        metavar="T",
        help="received at or after T: 2026-11-26T10:00:00Z, 2026-11-26 (UTC) or an age "
        "(30m, 2h, 7d ago)",
    )
    which.add_argument(
        "--until", type=_time_arg, metavar="T", help="received before T (same forms as --since)"
    )
    which.add_argument(
        "--id",
        action="append",
        default=[],
        dest="ids",
        type=_positive_int,
        metavar="N",
        help="only this dead-letter id (repeatable)",
    )
    dl = sub.add_parser(
        "dead-letters",
        help="list, export, requeue or purge dead letters; works beside a running bridge",
        description="Inspect and repair the spool's dead letters: list, export (JSON Lines) "
        "or requeue them after the rule or the device is fixed, or purge them. Safe beside a "
        "running bridge. See docs/operations/dead-letters.md.",
        epilog="exit codes: 0 done (requeue: nothing still fails; purge: also a dry run), 1 "
        "requeue left dead letters that still fail, or a spool or output-file error, 2 a bad "
        "option value (purge: no filter and no --all), 66 no spool at spool.path, 78 the "
        "settings or (requeue) the mapping file are invalid.",
    )
    dl.set_defaults(handler=run)
    cmds = dl.add_subparsers(dest="dl_command", required=True, metavar="COMMAND")
    lst = cmds.add_parser(
        "list", parents=[common], help="a table of matching dead letters and counts per reason"
    )
    lst.add_argument(
        "--limit",
        type=_positive_int,
        default=100,
        metavar="N",
        help="show at most N, oldest first (default: 100)",
    )
    lst.add_argument("--json", action="store_true", help="JSON Lines (as export) instead")
    exp = cmds.add_parser(
        "export", parents=[common], help="JSON Lines, one object per dead letter, bytes intact"
    )
    exp.add_argument("--limit", type=_positive_int, metavar="N", help="at most N, oldest first")
    exp.add_argument(
        "--output", "-o", type=Path, metavar="FILE", help="write to FILE instead of stdout"
    )
    req = cmds.add_parser(
        "requeue",
        parents=[common],
        help="map again with the current mapping file and send what now works; exit 1 if "
        "some still fail",
    )
    add_flag(req, "mapping.file")
    req.add_argument("--limit", type=_positive_int, metavar="N", help="at most N, oldest first")
    req.add_argument(
        "--dry-run", action="store_true", help="report what would happen; write nothing"
    )
    req.add_argument(
        "--drop-ignored",
        action="store_true",
        help="remove dead letters an ignore rule now takes (kept by default)",
    )
    pur = cmds.add_parser(
        "purge",
        parents=[common],
        help="delete matching dead letters; shows what it would delete unless --yes",
    )
    pur.add_argument(
        "--older-than",
        type=_age_arg,
        metavar="AGE",
        help="received more than AGE ago (30m, 12h, 30d, 2w): --until AGE",
    )
    pur.add_argument("--all", action="store_true", help="with no other filter: every dead letter")
    pur.add_argument("--limit", type=_positive_int, metavar="N", help="at most N, oldest first")
    pur.add_argument("--yes", action="store_true", help="delete them (without it: a dry run)")
    pur.add_argument(
        "--dry-run", action="store_true", help="report what would go; delete nothing, even --yes"
    )


def _time_arg(text: str) -> int:
    try:
        return parse_time(text, int(time.time() * 1_000_000))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _age_arg(text: str) -> int:
    try:
        return parse_age(text, int(time.time() * 1_000_000))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def run(args: argparse.Namespace) -> int:
    """``dead-letters list|export|requeue|purge``: settings as for ``run``, spool opened shared.

    Raises:
        ConfigError: the settings or the mapping file are invalid (the CLI exits 78).
    """
    try:
        which = make_filter(args.reasons, args.since, _until(args), args.ids)
    except ValueError as exc:
        print(f"metriqo-bridge: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.dl_command == "purge" and which == DeadLetterFilter() and not args.all:
        print(
            "metriqo-bridge: purge needs a filter (--reason, --older-than, --since, --until, "
            "--id) or --all for every dead letter",
            file=sys.stderr,
        )
        return EX_USAGE
    located = locate(args)
    for note in located.notes:
        print(f"metriqo-bridge: {note}", file=sys.stderr)
    settings = located.settings
    mapper = None
    if args.dl_command == "requeue":
        # Built exactly as the bridge builds it, so a message maps as it would if it came now.
        named_by = NamedBy.setting(settings.origins, "mapping.file")
        limits = IdentifierLimits.of(settings.mapping)
        mapper = make_mapper(
            load_mappings(settings.mapping.file, limits, named_by), settings.mapping
        )
    path = settings.spool.path
    if not path.is_file():
        shown = shown_path(path, settings.origins.get("spool.path", DEFAULTS))
        print(
            f"metriqo-bridge: no spool at {shown or 'spool.path ' + NOT_SHOWN} and no running "
            f"bridge in {settings.state_dir}; give the bridge's state directory (--state-dir) "
            "or point spool.path at its spool (--spool-path, --config or "
            "METRIQO_BRIDGE_SPOOL__PATH)",
            file=sys.stderr,
        )
        return EX_NOINPUT
    spool = Spool(settings.spool)
    spool.open_shared()
    try:
        if mapper is not None:
            return requeue_dead_letters(
                spool,
                which,
                mapper,
                sys.stdout,
                limit=args.limit,
                dry_run=args.dry_run,
                drop_ignored=args.drop_ignored,
            )
        if args.dl_command == "purge":
            return purge_dead_letters(
                spool, which, sys.stdout, limit=args.limit, dry_run=args.dry_run or not args.yes
            )
        if args.dl_command == "list":
            return list_dead_letters(
                spool, which, sys.stdout, sys.stderr, limit=args.limit, as_json=args.json
            )
        return _export(spool, which, args.output, args.limit)
    finally:
        spool.close()


def _until(args: argparse.Namespace) -> int | None:
    """--until, or --older-than (purge); both given: the earlier."""
    older: int | None = getattr(args, "older_than", None)
    until: int | None = args.until
    if older is None or until is None:
        return until if older is None else older
    return min(older, until)


def _export(spool: Spool, which: DeadLetterFilter, output: Path | None, limit: int | None) -> int:
    if output is None:
        n = export_dead_letters(spool, which, sys.stdout, limit=limit)
        sys.stdout.flush()
        print(f"exported {n} dead letter(s)", file=sys.stderr)
        return EX_OK
    try:
        with output.open("w", encoding="utf-8", newline="\n") as fh:
            n = export_dead_letters(spool, which, fh, limit=limit)
    except OSError as exc:
        print(f"metriqo-bridge: {output}: {exc.strerror}", file=sys.stderr)
        return EX_FAILURE
    print(f"exported {n} dead letter(s) to {output}", file=sys.stderr)
    return EX_OK


def pages(
    spool: Spool, which: DeadLetterFilter, *, limit: int | None = None, size: int = PAGE
) -> Iterator[list[DeadLetterRow]]:
    """Matching dead letters in id order, ``size`` at a time, up to ``limit`` in all.

    Only dead letters that existed when the iteration began are visited: one the running
    bridge writes meanwhile (say, a requeued record the API refuses again) is left for the
    next run instead of being chased forever. Rows deleted between pages are simply skipped.
    """
    through = spool.dead_letters.newest_id()
    after = 0
    left = limit
    while left is None or left > 0:
        want = size if left is None else min(size, left)
        window = dataclasses.replace(which, after_id=after, through_id=through)
        rows = spool.dead_letters.find(window, want)
        if not rows:
            return
        yield rows
        after = rows[-1].id
        if left is not None:
            left -= len(rows)


def list_dead_letters(
    spool: Spool,
    which: DeadLetterFilter,
    out: TextIO,
    err: TextIO,
    *,
    limit: int = LIST_LIMIT,
    as_json: bool = False,
) -> int:
    """``dead-letters list``: a table and a count per reason, or JSON Lines with ``--json``
    (the summary then goes to ``err``). Returns the exit code (0)."""
    counts = spool.dead_letters.counts(which)
    shown = 0
    cells: list[tuple[str, ...]] = []
    for page in pages(spool, which, limit=limit):
        shown += len(page)
        if as_json:
            out.writelines(export_line(row) for row in page)
        else:
            cells.extend(table_cells(row) for row in page)
    summary = format_counts(counts, shown)
    if as_json:
        print(summary, file=err)
        return EX_OK
    if cells:
        out.writelines(line + "\n" for line in format_table(cells))
        out.write("\n")
    print(summary, file=out)
    return EX_OK


def export_dead_letters(
    spool: Spool, which: DeadLetterFilter, out: TextIO, *, limit: int | None = None
) -> int:
    """``dead-letters export``: stream JSON Lines to ``out``; returns how many were written."""
    written = 0
    for page in pages(spool, which, limit=limit):
        out.writelines(export_line(row) for row in page)
        written += len(page)
    return written


def requeue_dead_letters(
    spool: Spool,
    which: DeadLetterFilter,
    mapper: Mapper,
    out: TextIO,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    drop_ignored: bool = False,
) -> int:
    """``dead-letters requeue``: one transaction per page of :data:`PAGE` dead letters.

    Returns the exit code: 1 when some dead letters still fail (so scripts notice), else 0.
    """
    tally = RequeueTally()
    for page in pages(spool, which, limit=limit):
        ids: list[int] = []
        records: list[Record] = []
        for row in page:
            outcome = plan_requeue(row, mapper)
            tally.add(row, outcome)
            if isinstance(outcome, Requeue):
                ids.append(row.id)
                records.extend(outcome.records)
            elif isinstance(outcome, NowIgnored) and drop_ignored:
                ids.append(row.id)
        if ids and not dry_run:
            tally.points_stored += spool.dead_letters.requeue(ids, records)
    out.writelines(
        line + "\n" for line in format_tally(tally, dry_run=dry_run, drop_ignored=drop_ignored)
    )
    return EX_FAILURE if tally.failing else EX_OK


def purge_dead_letters(
    spool: Spool,
    which: DeadLetterFilter,
    out: TextIO,
    *,
    limit: int | None = None,
    dry_run: bool = True,
) -> int:
    """``dead-letters purge``: delete the matching dead letters (oldest first, at most
    ``limit``), one transaction per :data:`PAGE`, and print how many went per reason; with
    ``dry_run`` only count them. Returns the exit code (0).

    Only dead letters that existed when it began are visited, as for :func:`pages`.
    """
    counts: Counter[str] = Counter()
    through = spool.dead_letters.newest_id()
    after = 0
    left = limit
    while left is None or left > 0:
        want = PAGE if left is None else min(PAGE, left)
        window = dataclasses.replace(which, after_id=after, through_id=through)
        rows = spool.dead_letters.find_reasons(window, want)
        if not rows:
            break
        if dry_run:
            counts.update(reason for _id, reason in rows)
        else:
            counts.update(spool.dead_letters.purge([row_id for row_id, _reason in rows]))
        after = rows[-1][0]
        if left is not None:
            left -= len(rows)
    out.writelines(line + "\n" for line in format_purge(dict(counts), dry_run=dry_run))
    return EX_OK
