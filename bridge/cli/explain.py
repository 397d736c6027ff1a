"""``metriqo-bridge explain TOPIC [PAYLOAD]``: what the bridge would do with one message."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import orjson

from bridge.cli.command import Subparsers
from bridge.cli.flags import add_mapping_file, mapping_file
from bridge.errors import EX_FAILURE, EX_OK, EX_USAGE


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "explain",
        help="show what the bridge would do with one message; exit 0, 1 or 78",
        description="Show what the bridge would do with one message: the rules tried and why "
        "they missed, the matching rule, device, time, points, the exact JSON body it would "
        "POST, and failures. See docs/guide/tuning-loop.md.",
        epilog="exit codes: 0 the message becomes points with no failure (or an ignore rule "
        "takes it), 1 it would be dead-lettered (wholly or in part) or no rule matches, 2 usage "
        "error (also a topic with '+' or '#', a NUL or none: no broker delivers it), 78 the "
        "mapping file is invalid.",
    )
    p.add_argument(
        "topic", nargs="?", metavar="TOPIC", help="the MQTT topic, e.g. plant/berlin/line1/env"
    )
    p.add_argument(
        "payload",
        nargs="?",
        metavar="PAYLOAD",
        help="the payload as text; '-' reads bytes from stdin (default: empty)",
    )
    p.add_argument("--topic", dest="topic_option", metavar="TOPIC", help="same as TOPIC")
    p.add_argument("--payload", dest="payload_option", metavar="PAYLOAD", help="same as PAYLOAD")
    add_mapping_file(p, positional=False, old=("--file",))
    p.add_argument(
        "--payload-file", type=Path, metavar="PATH", help="read the payload bytes from a file"
    )
    p.add_argument(
        "--payload-hex", metavar="HEX", help="the payload as hex digits (a Sparkplug B payload)"
    )
    p.add_argument("--payload-base64", metavar="B64", help="the payload as base64")
    p.add_argument(
        "--birth",
        nargs=2,
        action="append",
        default=[],
        metavar=("TOPIC", "PAYLOAD"),
        help="a Sparkplug NBIRTH or DBIRTH to take in first, so that the aliases of a DATA "
        "message resolve; PAYLOAD is @PATH, hex:DIGITS or base64:TEXT (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object instead")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.mapping.explain import explain, explanation_json, format_explanation, topic_problem
    from bridge.mapping.loader import load_mappings
    from bridge.mapping.mapper import Mapper
    from bridge.mapping.sparkplug_explain import describe, describe_lines

    message = message_of(args)
    if isinstance(message, str):
        print(f"metriqo-bridge: {message}", file=sys.stderr)
        return EX_USAGE
    topic, payload = message
    # A usage error (2), not a configuration error (78): the argument is wrong, the files are fine.
    problem = topic_problem(topic)
    if problem is not None:
        print(f"metriqo-bridge: explain: {problem}", file=sys.stderr)
        return EX_USAGE
    mapper = Mapper(load_mappings(mapping_file(args)))
    now_us = int(time.time() * 1_000_000)
    for birth_topic, birth_text in args.birth:
        birth = payload_bytes(birth_text)
        if isinstance(birth, str):
            print(f"metriqo-bridge: explain: --birth {birth_topic}: {birth}", file=sys.stderr)
            return EX_USAGE
        mapper.map(birth_topic, birth, now_us)  # its aliases go into the mapper's tables
    sparkplug = describe(topic, payload, mapper.aliases)
    result = explain(mapper, topic, payload, now_us)
    if args.json:
        doc = explanation_json(result)
        if sparkplug is not None:
            doc["sparkplug"] = sparkplug
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        if sparkplug is not None:
            print("\n".join(describe_lines(sparkplug)))
        print(format_explanation(result))
    return EX_OK if result.ok else EX_FAILURE


def message_of(args: argparse.Namespace) -> tuple[str, bytes] | str:
    """Topic and payload bytes from TOPIC/PAYLOAD, --topic/--payload or --payload-file.

    Returns a usage error message instead when the arguments do not fit together.
    """
    positional = [a for a in (args.topic, args.payload) if a is not None]
    topic = args.topic_option
    if topic is None:
        if not positional:
            return "give the topic: TOPIC or --topic TOPIC"
        topic = positional.pop(0)
    elif len(positional) == 2:
        return "give TOPIC or --topic, not both"
    # With --topic, a single positional is the payload: "explain --topic T PAYLOAD".
    texts = [t for t in (*positional, args.payload_option) if t is not None]
    encoded = [
        f"{kind}:{text}"
        for kind, text in (("hex", args.payload_hex), ("base64", args.payload_base64))
        if text is not None
    ]
    if len(texts) + len(encoded) + (args.payload_file is not None) > 1:
        return (
            "give one payload: PAYLOAD, --payload, --payload-hex, --payload-base64 or "
            "--payload-file"
        )
    if encoded:
        data = payload_bytes(encoded[0])
        return data if isinstance(data, str) else (topic, data)
    if args.payload_file is not None:
        try:
            return topic, args.payload_file.read_bytes()
        except OSError as exc:
            return f"{args.payload_file}: {exc.strerror}"
    if texts == ["-"]:
        return topic, sys.stdin.buffer.read()
    # fsencode: argv bytes that are not UTF-8 come back exactly as given.
    return topic, os.fsencode(texts[0] if texts else "")


def payload_bytes(text: str) -> bytes | str:
    """The bytes of ``@PATH``, ``hex:DIGITS`` or ``base64:TEXT``; a usage error message when
    they cannot be read."""
    import base64
    import binascii

    kind, _, rest = text.partition(":")
    try:
        if text.startswith("@"):
            return Path(text[1:]).read_bytes()
        if kind == "hex":
            return bytes.fromhex(rest)
        if kind == "base64":
            return base64.b64decode(rest, validate=True)
    except OSError as exc:
        return f"{text[1:]}: {exc.strerror}"
    except (ValueError, binascii.Error) as exc:
        return f"not {kind}: {exc}"
    return f"{text[:40]!r}: expected @PATH, hex:DIGITS or base64:TEXT"
