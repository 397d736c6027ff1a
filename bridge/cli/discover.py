"""``metriqo-bridge discover``: sample the broker under a side session, show the topic tree and
its patterns, and draft a mapping file (with tests) from what was seen."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bridge.cli.command import Subparsers
from bridge.cli.side_session import add_side_flags, side_settings
from bridge.errors import EX_FAILURE, EX_OK, EX_USAGE


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "discover",
        help="sample the broker and draft a mapping file from what it carries",
        description="Listen to the broker (the mqtt.* settings of run) under a side session of "
        "its own (own client id, clean and non-persistent, QoS 0; never the bridge's session) "
        "and show the topic tree with message rates and payload kinds, the topic patterns, and "
        "known device conventions. --write drafts a mapping file with tests from real samples; "
        "--against reports what an existing mapping file would miss or dead-letter. See "
        "docs/guide/discover-and-tap.md.",
        epilog="exit codes: 0 done, 1 the draft would not pass check --strict or test (or nothing "
        "was seen to draft from), 2 bad "
        "options (e.g. --write to an existing file without --force), 69 the broker cannot be "
        "reached or refuses, 78 configuration error.",
    )
    add_side_flags(p, seconds=30.0, messages=100_000)
    p.add_argument(
        "--write", type=Path, metavar="FILE", help="write a draft mapping file with tests"
    )
    p.add_argument("--force", action="store_true", help="let --write replace an existing file")
    p.add_argument(
        "--against",
        type=Path,
        metavar="FILE",
        help="report what this mapping file would miss or dead-letter, per pattern",
    )
    p.add_argument(
        "--max-topics",
        type=int,
        default=5000,
        help="topics kept (default 5000); messages of further topics are only counted",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.mapping.loader import load_mappings, make_mapper
    from bridge.mqtt.side import SideSession
    from bridge.survey.against import Against
    from bridge.survey.drafts import recipe_filters, recipe_uses
    from bridge.survey.patterns import group_topics
    from bridge.survey.topics import Survey

    if args.write is not None and args.write.exists() and not args.force:
        print(
            f"metriqo-bridge discover: {args.write} exists; add --force to replace it",
            file=sys.stderr,
        )
        return EX_USAGE
    if args.max_topics < 1 or args.seconds <= 0:
        print(
            "metriqo-bridge discover: --max-topics and --seconds must be positive", file=sys.stderr
        )
        return EX_USAGE
    settings, password, client_id = side_settings(args)
    against = None
    survey = Survey(args.max_topics)
    if args.against is not None:
        against = Against(make_mapper(load_mappings(args.against), settings.mapping), survey)
    filters = args.filters or ["#"]
    where = f"{settings.mqtt.host}:{settings.mqtt.port}"
    if not args.json:
        print(
            f"discover: listening on {where} to {', '.join(filters)} as {client_id} for "
            f"{args.seconds:g} s or {args.messages} messages",
            file=sys.stderr,
            flush=True,
        )
    listened = _listen(
        SideSession(settings.mqtt, password, filters, client_id=client_id), args, survey, against
    )
    seconds = survey.seconds()
    patterns = group_topics(
        [t for t in survey.topics.values() if t.recipe is None],
        recipe_filters(recipe_uses(survey)),
    )
    extra: dict[str, Any] = {
        "broker": where,
        "client_id": client_id,
        "filters": filters,
        **listened,
    }
    lines = _summary(survey, where=where, client_id=client_id, listened=listened)
    code = EX_OK
    if args.write is not None and not survey.topics:
        lines += ["", f"draft: nothing was seen, so {args.write} was not written"]
        code = EX_FAILURE
    elif args.write is not None:
        problems = _write_draft(args.write, survey, where, extra, lines)
        code = EX_FAILURE if problems else EX_OK
    if against is not None:
        _report_against(
            args.against, against, patterns=patterns, survey=survey, extra=extra, lines=lines
        )
    if args.json:
        from bridge.survey.report import survey_json

        body = survey_json(survey, seconds, patterns, extra)
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        from bridge.survey.report import pattern_lines, topic_tree

        out = [*lines[:1], "topics:", *topic_tree(survey, seconds), "patterns:"]
        out += pattern_lines(patterns, survey, seconds)
        print("\n".join(out + lines[1:]))
    return code


def _listen(session: Any, args: argparse.Namespace, survey: Any, against: Any) -> dict[str, Any]:
    """Survey the messages of the side session; what could not be surveyed is counted."""
    started = time.monotonic()
    with session:
        try:
            for m in session.messages(seconds=args.seconds, limit=args.messages):
                survey.observe(m.topic, m.payload, m.received_us, m.retained)
                if against is not None:
                    against.observe(m.topic, m.payload, m.received_us)
        except KeyboardInterrupt:
            pass  # Ctrl-C ends the listening early; what was seen is still reported
        survey.duration_s = time.monotonic() - started
        return {
            "overflow": session.overflow,
            "unread_after_end": session.unread,
            "refused_filters": list(session.refused_filters),
        }


def _write_draft(
    path: Path, survey: Any, where: str, extra: dict[str, Any], lines: list[str]
) -> list[str]:
    from bridge.survey.drafts import draft_mapping

    header = [
        f"Drafted by metriqo-bridge discover from {survey.messages} message(s) on "
        f"{len(survey.topics)} topic(s) of {where}.",
        "Review before use: names, units and state values are guesses from samples.",
        "Check: metriqo-bridge check --strict FILE && metriqo-bridge test FILE",
    ]
    draft = draft_mapping(survey, header)
    path.write_text(draft.text, encoding="utf-8")
    recipes = [r.name for r in draft.recipes]
    extra["draft"] = {
        "file": str(path),
        "rules": draft.rules,
        "tests": draft.tests,
        "recipes": recipes,
        "problems": draft.problems,
    }
    lines += [
        "",
        f"draft: {path}: {draft.rules} rule(s) ({len(recipes)} recipe(s): "
        f"{', '.join(recipes) or 'none'}), {draft.tests} test(s)",
    ]
    lines += [f"  problem: {p}" for p in draft.problems] or ["  passes check --strict and test"]
    return draft.problems


def _report_against(
    path: Path,
    against: Any,
    *,
    patterns: Any,
    survey: Any,
    extra: dict[str, Any],
    lines: list[str],
) -> None:
    from bridge.survey.against import gaps, pattern_topics
    from bridge.survey.report import gap_lines

    found = gaps(against, pattern_topics(patterns, survey))
    extra["against"] = {
        "file": str(path),
        "patterns": [
            {
                "pattern": g.pattern,
                "topics": g.topics,
                "example": g.example,
                "missed": g.missed,
                "dead_lettered": g.dead_lettered,
                "counts": g.counts,
                "details": g.details,
                "rules": g.rules,
            }
            for g in found
        ],
    }
    lines += ["", f"against {path}:", *gap_lines(found, str(path))]


def _summary(survey: Any, *, where: str, client_id: str, listened: dict[str, Any]) -> list[str]:
    seconds = survey.seconds()
    overflow, after_end = listened["overflow"], listened["unread_after_end"]
    refused = listened["refused_filters"]
    retained = f" ({survey.retained} retained)" if survey.retained else ""
    head = (
        f"discover: {survey.messages} message(s){retained} on {len(survey.topics)} topic(s) of "
        f"{where} in {seconds:.1f} s ({survey.messages / seconds:.4g} msg/s) as {client_id}"
    )
    notes = []
    if survey.capped:
        notes.append(
            f"capped: only the first {survey.max_topics} topics are kept; "
            f"{survey.untracked_messages} message(s) of further topics were only counted "
            "(raise --max-topics)"
        )
    if overflow:
        notes.append(
            f"overflow: {overflow} message(s) arrived faster than discover could read them; "
            "they were counted, not surveyed"
        )
    if after_end:
        notes.append(f"{after_end} message(s) arrived after the limit and were not read")
    if refused:
        notes.append(f"the broker refused the subscription to: {', '.join(refused)}")
    return [head, *notes]
