"""``metriqo-bridge check [--mapping-file FILE]``: validate a mapping file and warn about rules
that overlap or can never match."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.cli.command import Subparsers
from bridge.cli.flags import add_mapping_file, mapping_file
from bridge.errors import EX_CONFIG, EX_OK

if TYPE_CHECKING:
    from bridge.mapping.mapper import Rule


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "check",
        help="validate a mapping file; exit 0 or 78",
        description="Validate a mapping file (default topic-mappings.yaml): every error as "
        "file:line: key.path: message, and warnings about rules that can never match or overlap. "
        "See docs/guide/tuning-loop.md.",
        epilog="exit codes: 0 valid (warnings included), 78 errors, and with --strict also "
        "warnings.",
    )
    add_mapping_file(p, positional=True)
    p.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (shadowed, overlapping rules) as errors",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="the bridge's settings file: check against its mapping.max_device_id_length and "
        "mapping.max_metric_name_length (default: their defaults)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting, as for run, e.g. --set mapping.max_device_id_length=64 (repeatable)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.config.yamlfile import load_yaml_file
    from bridge.mapping.identifiers import IdentifierLimits
    from bridge.mapping.loader import compile_mappings
    from bridge.mapping.overlap import format_warning, rule_warnings
    from bridge.mapping.validation import yaml11_warnings

    file = mapping_file(args)
    limits = IdentifierLimits()
    if args.config is not None or args.set:
        from bridge.cli.flags import settings_from

        limits = IdentifierLimits.of(settings_from(args).mapping)
    data, index = load_yaml_file(file)  # once: the rules, and the lines the warnings name
    rules = compile_mappings(data, index, limits)
    print(f"{file}: OK, {len(rules)} rule(s)")
    for rule in rules:
        what = "ignored on purpose" if rule.ignore else f"payload {rule.payload}"
        print(f"  {rule.name}: subscribes {rule.topic.subscription} (QoS 1), {what}")
    lines = [index.line_of(("rules", i, "topic")) for i in range(len(rules))]
    warnings = [format_warning(w, str(file)) for w in rule_warnings(rules, lines)]
    warnings += yaml11_warnings(index)
    for warning in warnings:
        print(warning)
    _print_cover(rules)
    if warnings and args.strict:
        print(
            f"metriqo-bridge: {len(warnings)} warning(s), an error under --strict", file=sys.stderr
        )
        return EX_CONFIG
    return EX_OK


def _print_cover(rules: list[Rule]) -> None:
    """What the bridge subscribes to when rule filters overlap: a broker sends one copy per
    matching subscription, so overlapping filters are covered by fewer subscriptions."""
    from bridge.mapping.cover import cover

    c = cover([r.topic.subscription for r in rules])
    if not (c.left_out or c.joined):
        return
    print(f"  subscriptions: {len(c.filters)} (overlapping rule filters are subscribed once):")
    for f, by in c.left_out:
        print(f"    {f} is covered by {by}")
    for sub, rule_filters in c.joined:
        print(
            f"    {sub} in place of {', '.join(rule_filters)} (topics it lets in that no rule's "
            "filter matches are counted as ignored)"
        )
