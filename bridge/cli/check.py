"""``metriqo-bridge check [FILE]``: validate a mapping file and warn about rules that overlap
or can never match; with ``--connect``, check the whole deployment (:mod:`bridge.cli.connect`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.cli.command import Subparsers
from bridge.cli.flags import RUN, add_mapping_file, add_settings_flags, mapping_file, overrides
from bridge.errors import EX_CONFIG, EX_OK, EX_USAGE

if TYPE_CHECKING:
    from bridge.config.yamlfile import LineIndex
    from bridge.mapping.mapper import Rule


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "check",
        help="validate a mapping file; with --connect, the broker and the API too",
        description="Validate a mapping file (default: mapping.file, topic-mappings.yaml): "
        "every error as file:line: key.path: message, and warnings about rules that can never "
        "match or overlap. See docs/guide/tuning-loop.md. With --connect, check the deployment "
        "with the settings run would use (file, environment, flags): the broker's address, TCP, "
        "TLS, the login, each rule's subscription and the API token, as a checklist with the "
        "fix for each failed line (docs/troubleshooting.md). The check connects with its own "
        "client id and a throwaway session, never the bridge's.",
        epilog="exit codes: 0 valid (warnings included; --connect: every line passed), 69 "
        "(--connect) the broker or the API cannot be used as configured, 78 the mapping file "
        "or the settings are invalid, and with --strict also warnings.",
    )
    add_mapping_file(p, positional=True)
    p.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (shadowed, overlapping rules) as errors",
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the broker and the API as run would, and print a checklist",
    )
    p.add_argument(
        "--json", action="store_true", help="with --connect: the checklist as one JSON object"
    )
    # Every setting run reads (--connect checks with them); the mapping file comes from the
    # flag or the positional FILE above.
    add_settings_flags(p, [k for k in RUN if k != "mapping.file"], print_config=False)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.config.yamlfile import load_yaml_file
    from bridge.mapping.identifiers import IdentifierLimits
    from bridge.mapping.loader import compile_mappings
    from bridge.mapping.overlap import format_warning, rule_warnings
    from bridge.mapping.validation import yaml11_warnings

    if args.json and not args.connect:
        print("metriqo-bridge: check: --json needs --connect", file=sys.stderr)
        return EX_USAGE
    settings = None
    # Without --connect the settings are read only when asked for, as before --connect was.
    if args.connect or args.config is not None or overrides(args):
        from bridge.cli.flags import settings_from

        settings = settings_from(args)
    file: Path = args.file or (settings.mapping.file if settings else mapping_file(args))
    limits = IdentifierLimits.of(settings.mapping) if settings else IdentifierLimits()
    if args.connect:
        from bridge.cli.connect import run_checklist

        assert settings is not None
        return run_checklist(settings, file, limits, strict=args.strict, as_json=args.json)
    data, index = load_yaml_file(file)  # once: the rules, and the lines the warnings name
    rules = compile_mappings(data, index, limits)
    print(f"{file}: OK, {len(rules)} rule(s)")
    for rule in rules:
        what = "ignored on purpose" if rule.ignore else f"payload {rule.payload}"
        print(f"  {rule.name}: subscribes {rule.topic.subscription} (QoS 1), {what}")
    lines = [index.line_of(("rules", i, "topic")) for i in range(len(rules))]
    warnings = [format_warning(w, str(file)) for w in rule_warnings(rules, lines)]
    warnings += yaml11_warnings(index)
    warnings += _alert_warnings(data, index, rules, str(file))
    for warning in warnings:
        print(warning)
    _print_cover(rules)
    if warnings and args.strict:
        print(
            f"metriqo-bridge: {len(warnings)} warning(s), an error under --strict", file=sys.stderr
        )
        return EX_CONFIG
    return EX_OK


def _alert_warnings(data: object, index: LineIndex, rules: list[Rule], file: str) -> list[str]:
    """The ``alerts:`` section: listed, and an alert on a metric no rule produces named."""
    from bridge.mapping.alert_rules import compile_alerts, unproduced_metric_warnings
    from bridge.mapping.spec import MappingFile

    specs = MappingFile.model_validate(data).alerts or []
    if not specs:
        return []
    alerts = compile_alerts(specs, index, [])  # valid: compile_mappings checked them
    print(f"  alerts: {len(alerts)} alert rule(s) (metriqo-bridge alerts plan)")
    return unproduced_metric_warnings(alerts, rules, file)


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
