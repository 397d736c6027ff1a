"""``metriqo-bridge tap``: a dry run on the live broker: each message through the mapping file,
the points and the POST bodies the bridge would send, and nothing sent."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from bridge.cli.command import Subparsers
from bridge.cli.side_session import add_side_flags, side_settings
from bridge.errors import EX_OK


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "tap",
        help="dry run: map live messages and print the points and POST bodies, send nothing",
        description="Consume from the broker (the mqtt.* settings of run) under a side session "
        "of its own (own client id, clean and non-persistent, QoS 0), map each message with the "
        "mapping file (mapping.file, --mapping-file) and print its points, or why it would be "
        "unmatched or dead-lettered, and the request bodies the bridge would POST (batched as "
        "it batches). Posts nothing; never touches the bridge's session or spool. Subscribes to "
        "the mapping's filters unless --filter is given. See docs/guide/discover-and-tap.md.",
        epilog="exit codes: 0 done, 2 bad options, 69 the broker cannot be reached or refuses, "
        "78 configuration error.",
    )
    # spool.path only to say it is never opened; api.base_url: the URL the bodies would go to.
    add_side_flags(
        p, seconds=10.0, messages=1000, keys=("mapping.file", "api.base_url", "spool.path")
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge.mapping.loader import load_mappings, make_mapper
    from bridge.mqtt.side import SideSession
    from bridge.survey.tap import Tap

    settings, password, client_id = side_settings(args)
    mapper = make_mapper(load_mappings(settings.mapping.file), settings.mapping)
    tap = Tap(mapper, settings.delivery.max_points, single_object=settings.delivery.single_object)
    filters = args.filters or mapper.subscriptions
    url = settings.sender.base_url.rstrip("/") + "/telemetry"
    out = _Printer(args.json, url)
    where = f"{settings.mqtt.host}:{settings.mqtt.port}"
    if not args.json:
        print(
            f"tap: {settings.mapping.file} on {where} ({', '.join(filters)}) as {client_id}; "
            "nothing is sent",
            file=sys.stderr,
            flush=True,
        )
    with SideSession(settings.mqtt, password, filters, client_id=client_id) as session:
        try:
            for m in session.messages(seconds=args.seconds, limit=args.messages):
                out.outcome(tap.take(m.topic, m.payload, m.received_us, m.retained))
                for body in tap.full_requests():
                    out.request(body)
                # Each message as it comes: into a pipe (| jq, a test reading the lines) stdout
                # is block-buffered, and a quiet topic would show nothing for minutes.
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass  # Ctrl-C ends the tap; what is held is still shown
        overflow = session.overflow
    for body in tap.flush():
        out.request(body)
    out.summary(tap, overflow)
    return EX_OK


class _Printer:
    """Text for people, or JSON lines (``message``, ``request``, ``summary`` objects)."""

    def __init__(self, as_json: bool, url: str) -> None:
        self._json = as_json
        self._url = url

    def _line(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(orjson.dumps(obj).decode() + "\n")

    def outcome(self, o: Any) -> None:
        from bridge.mapping.timestamps import format_timestamp

        points = [
            {
                "device_id": r.device_id,
                "timestamp": format_timestamp(r.ts_us),
                "metric": name,
                "value": value,
            }
            for r in o.records
            for name, value in r.metrics.items()
        ]
        if self._json:
            self._line(
                {
                    "message": {
                        "topic": o.topic,
                        "retained": o.retained,
                        "rule": o.rule,
                        "verdict": o.verdict,
                        "points": points,
                        "failures": [{"reason": r, "detail": d} for r, d in o.failures],
                    }
                }
            )
            return
        retained = " (retained)" if o.retained else ""
        rule = f" [{o.rule}]" if o.rule else ""
        print(f"{o.topic}{retained}{rule}: {o.verdict}")
        for p in points:
            print(f"  {p['device_id']} {p['metric']} = {p['value']!r} at {p['timestamp']}")
        for reason, detail in o.failures:
            print(f"  {reason}: {detail}")

    def request(self, body: Any) -> None:
        if self._json:
            self._line({"request": {"url": self._url, "body": body}})
            return
        objects = body if isinstance(body, list) else [body]
        points = sum(len(obj["metrics"]) for obj in objects)
        print(f"POST {self._url} ({len(objects)} object(s), {points} point(s)) — not sent:")
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())

    def summary(self, tap: Any, overflow: int) -> None:
        counts = dict(sorted(tap.counts.items()))
        if self._json:
            self._line(
                {
                    "summary": {
                        "messages": sum(counts.values()),
                        "verdicts": counts,
                        "points": tap.points,
                        "requests": tap.requests,
                        "overflow": overflow,
                    }
                }
            )
            return
        verdicts = ", ".join(f"{n} {v}" for v, n in counts.items()) or "no messages"
        print(
            f"tap: {sum(counts.values())} message(s): {verdicts}; {tap.points} point(s) in "
            f"{tap.requests} request(s), none sent"
        )
        if overflow:
            print(f"tap: {overflow} message(s) arrived faster than tap could read them (not shown)")
