"""``metriqo-bridge schema``: the JSON Schema of the mapping file, for editors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge.cli.command import Subparsers
from bridge.errors import EX_FAILURE, EX_OK


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of topic-mappings.yaml (for editors)",
        description="Print the JSON Schema of the mapping file; the repository ships it as "
        "deploy/topic-mappings.schema.json for editors. See docs/guide/tuning-loop.md.",
    )
    p.add_argument(
        "--output", "-o", type=Path, metavar="FILE", help="write it to FILE instead of stdout"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.mapping.schema import schema_bytes

    output: Path | None = args.output
    data = schema_bytes()
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return EX_OK
    try:
        output.write_bytes(data)
    except OSError as exc:
        print(f"metriqo-bridge: {output}: {exc.strerror}", file=sys.stderr)
        return EX_FAILURE
    return EX_OK
