"""``metriqo-bridge test [--mapping-file FILE]``: run the ``tests:`` section of a mapping file."""

from __future__ import annotations

import argparse

from bridge.cli.command import Subparsers
from bridge.cli.flags import add_mapping_file, mapping_file
from bridge.errors import EX_FAILURE, EX_OK


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "test",
        help="run the tests: section of a mapping file; exit 0 or 1",
        description="Run the tests: section of a mapping file through the real mapper and print "
        "a missing/extra diff for each failure. See docs/guide/tuning-loop.md.",
        epilog="exit codes: 0 all pass, 1 a test fails or the file has no tests, 78 the file is "
        "invalid.",
    )
    add_mapping_file(p, positional=True)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.mapping.loader import load_mapping_tests
    from bridge.mapping.selftest import format_outcomes, run_mapping_tests

    file = mapping_file(args)
    rules, tests, index = load_mapping_tests(file)
    if not tests:
        print(f"{file}: no tests: add a 'tests:' section (see docs/guide/tuning-loop.md)")
        return EX_FAILURE
    outcomes = run_mapping_tests(rules, tests, index)
    print(format_outcomes(outcomes, str(file)))
    return EX_OK if all(o.passed for o in outcomes) else EX_FAILURE
