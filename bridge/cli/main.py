"""Command line: ``metriqo-bridge [run|check|test|explain|schema|health|backup|simulate-api|
simulate-sensors|demo|bench|soak|dead-letters]``.

Exit codes: 0 success, 1 runtime failure, 2 usage error, 66 no spool at the configured path
(``dead-letters``), 75 spool locked by another instance, 78 configuration error (nothing was
started and no spool was touched).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from bridge import __version__
from bridge.cli import backup as backup_cmd
from bridge.cli import dead_letters as deadletters_cmd
from bridge.cli import lab_args as toolargs
from bridge.cli import simulate_sensors as sensors_cmd
from bridge.errors import (
    EX_CONFIG,
    ConfigError,
    ConfigErrors,
    SpoolError,
    SpoolLocked,
    SpoolTooNew,
)
from bridge.logs import json_line, requested_format

EX_TEMPFAIL = 75
log = logging.getLogger("bridge")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="settings file (YAML); env: METRIQO_BRIDGE_CONFIG")
    p.add_argument("--mappings", metavar="FILE", help="mapping file (mapping.file)")
    p.add_argument("--mqtt-host", help="broker host (mqtt.host)")
    p.add_argument("--mqtt-port", help="broker port (mqtt.port)")
    p.add_argument("--client-id", help="MQTT client id (mqtt.client_id)")
    p.add_argument("--api-url", help="API base URL (api.base_url)")
    p.add_argument("--spool", help="spool database path (spool.path)")
    p.add_argument("--http-port", help="metrics/health port (http.port)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (log_level)")
    p.add_argument("--log-format", help="text or json (log_format; env: LOG_FORMAT)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting by dotted key, e.g. --set batch.linger_s=0.5 (repeatable)",
    )
    p.add_argument("--print-config", action="store_true", help="print effective settings, exit")


_FLAG_KEYS = {
    "mappings": "mapping.file",
    "mqtt_host": "mqtt.host",
    "mqtt_port": "mqtt.port",
    "client_id": "mqtt.client_id",
    "api_url": "api.base_url",
    "spool": "spool.path",
    "http_port": "http.port",
    "log_level": "log_level",
    "log_format": "log_format",
}


def _add_operations(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = sub.add_parser(
        "health", help="ask a running bridge for /healthz (or /readyz); exit 0 or 1"
    )
    _add_run_flags(health)
    health.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    health.add_argument("--quiet", "-q", action="store_true", help="print only failures")
    backup = sub.add_parser(
        "backup", help="copy the spool consistently, also beside a running bridge"
    )
    _add_run_flags(backup)
    backup_cmd.add_arguments(backup)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the CLI reference and tests)."""
    parser = argparse.ArgumentParser(
        prog="metriqo-bridge",
        description="Bridge MQTT sensor topics to the Metriqo telemetry API without data loss.",
    )
    parser.add_argument("--version", action="version", version=f"metriqo-bridge {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the bridge (the default)")
    _add_run_flags(run)
    mtest = sub.add_parser("test", help="run the tests: section of a mapping file; exit 0 or 1")
    mtest.add_argument("file", nargs="?", default="topic-mappings.yaml", type=Path)
    check = sub.add_parser("check", help="validate a mapping file; exit 0 or 78")
    check.add_argument("file", nargs="?", default="topic-mappings.yaml", type=Path)
    check.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (shadowed, overlapping rules) as errors",
    )
    explain = sub.add_parser(
        "explain", help="show what the bridge would do with one message; exit 0, 1 or 78"
    )
    explain.add_argument(
        "topic", nargs="?", metavar="TOPIC", help="the MQTT topic, e.g. plant/berlin/line1/env"
    )
    explain.add_argument(
        "payload",
        nargs="?",
        metavar="PAYLOAD",
        help="the payload as text; '-' reads bytes from stdin (default: empty)",
    )
    explain.add_argument("--topic", dest="topic_option", metavar="TOPIC", help="same as TOPIC")
    explain.add_argument(
        "--payload", dest="payload_option", metavar="PAYLOAD", help="same as PAYLOAD"
    )
    explain.add_argument(
        "--file", type=Path, default=Path("topic-mappings.yaml"), help="mapping file"
    )
    explain.add_argument(
        "--payload-file", type=Path, metavar="PATH", help="read the payload bytes from a file"
    )
    explain.add_argument("--json", action="store_true", help="print a JSON object instead")
    schema = sub.add_parser(
        "schema", help="print the JSON Schema of topic-mappings.yaml (for editors)"
    )
    schema.add_argument(
        "--output", "-o", type=Path, metavar="FILE", help="write it to FILE instead of stdout"
    )
    api = sub.add_parser("simulate-api", help="run a local Metriqo-compatible API server")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument(
        "--token-file",
        type=Path,
        help="file holding the token clients must send "
        "(default: env METRIQO_BRIDGE_TOKEN_FILE or METRIQO_BRIDGE_TOKEN)",
    )
    api.add_argument(
        "--rate-limit", type=int, default=1000, help="telemetry requests per minute, 0 = none"
    )
    faults = api.add_argument_group("fault injection (POST /telemetry; all off by default)")
    faults.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share (0..1) of requests answered 500/502/503, storing nothing",
    )
    faults.add_argument(
        "--record-then-500",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share (0..1) of requests stored and then answered 500",
    )
    faults.add_argument(
        "--429-storm",
        dest="storm_429",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="answer 429 to every request for SECONDS after start",
    )
    faults.add_argument(
        "--retry-after",
        default="seconds",
        choices=["seconds", "http-date", "zero", "garbage", "missing", "huge"],
        help="Retry-After form during the 429 storm (default: seconds)",
    )
    faults.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay before the response headers",
    )
    faults.add_argument(
        "--slow-body",
        type=int,
        default=0,
        metavar="BPS",
        help="stream response bodies at BPS bytes per second",
    )
    faults.add_argument("--hang", action="store_true", help="accept requests, never answer")
    faults.add_argument(
        "--unauthorized-until-token-file",
        type=Path,
        metavar="FILE",
        help="answer 401 until a request carries the token in FILE; then accept only it",
    )
    faults.add_argument(
        "--max-points-413", type=int, metavar="N", help="413 for more than N points per request"
    )
    faults.add_argument(
        "--poison-value",
        type=float,
        metavar="X",
        help="400 (naming the object index) for any point whose value is exactly X",
    )
    deadletters_cmd.add_parser(sub)
    _add_operations(sub)
    sensors_cmd.add_parser(sub)
    toolargs.add_bench(sub)
    toolargs.add_soak(sub)
    demo = sub.add_parser("demo", help="local broker + API + sensor fleet + bridge, end to end")
    demo.add_argument("--devices", type=int, default=12, help="simulated devices")
    demo.add_argument("--seconds", type=float, default=10.0, help="how long the fleet publishes")
    demo.add_argument("--rate", type=float, default=200.0, help="messages per second in total")
    demo.add_argument("--mappings", type=Path, default=Path("topic-mappings.yaml"))
    demo.add_argument("--timeout", type=float, default=60.0, help="max wait for delivery")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metriqo-bridge`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "run")
    args = build_parser().parse_args(args_list)
    try:
        if args.command == "check":
            return _check(args.file, strict=args.strict)
        if args.command == "test":
            return _test(args.file)
        if args.command == "explain":
            return _explain(args)
        if args.command == "schema":
            return _schema(args.output)
        if args.command == "simulate-api":
            return _simulate_api(args)
        if args.command == "health":
            from bridge.cli.health import run_health
            from bridge.settings import load_settings

            settings = load_settings(file=args.config, overrides=_overrides(args))
            return run_health(settings, ready=args.ready, timeout=args.timeout, quiet=args.quiet)
        if args.command == "backup":
            from bridge.settings import load_settings

            settings = load_settings(file=args.config, overrides=_overrides(args))
            return backup_cmd.run(settings, args.dest, force=args.force)
        if args.command == "simulate-sensors":
            return sensors_cmd.run(args)
        if args.command == "dead-letters":
            return deadletters_cmd.run(args, _overrides(args))
        if args.command == "bench":
            from bridge.lab.bench.runner import run_bench

            return run_bench(args)
        if args.command == "soak":
            from bridge.lab.soak import run_soak

            return run_soak(args)
        if args.command == "demo":
            from bridge.lab.demo import run_demo

            return run_demo(args)
        return _run(args)
    except ConfigError as exc:
        _report_config_error(exc)
        return EX_CONFIG
    except SpoolTooNew as exc:
        print(f"metriqo-bridge: spool error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except SpoolLocked as exc:
        print(f"metriqo-bridge: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except SpoolError as exc:
        print(f"metriqo-bridge: spool error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()  # "| head" closed the pipe: stop quietly, as other tools do
        return 0


def _report_config_error(exc: ConfigError) -> None:
    """Text for a terminal; with LOG_FORMAT=json one JSON line per error with file, line and
    key as fields, so a log collector shows why a container exits 78."""
    if requested_format() != "json":
        print(f"metriqo-bridge: configuration error:\n{exc}", file=sys.stderr)
        return
    for err in exc.errors if isinstance(exc, ConfigErrors) else [exc]:
        line = json_line(
            "ERROR",
            f"configuration error: {err}",
            file=err.file,
            line=err.line,
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


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = str(value)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}", file="command line")
        out[key.strip()] = value
    return out


def _run(args: argparse.Namespace) -> int:
    from bridge.app import Bridge
    from bridge.logs import setup_logging
    from bridge.mapping.loader import load_mappings
    from bridge.settings import (
        TokenSource,
        load_settings,
        redacted,
        resolve_mqtt_password,
    )

    settings = load_settings(file=args.config, overrides=_overrides(args))
    if args.print_config:
        sys.stdout.write(orjson.dumps(redacted(settings), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return 0
    # Everything that can be wrong with the configuration fails here, before the spool opens.
    rules = load_mappings(settings.mapping.file)
    token = TokenSource(settings)
    password = resolve_mqtt_password(settings)
    setup_logging(settings.log_level, settings.log_format)
    bridge = Bridge(
        settings, rules, token, mqtt_password=password, mappings_path=settings.mapping.file
    )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, bridge.stop)
        loop.add_signal_handler(signal.SIGHUP, bridge.request_reload)
        await bridge.run()

    log.info(
        "metriqo-bridge %s: %d rule(s), broker %s:%s, API %s, spool %s",
        __version__,
        len(rules),
        settings.mqtt.host,
        settings.mqtt.port,
        settings.api.base_url,
        settings.spool.path,
    )
    asyncio.run(serve())
    log.info("stopped")
    return 0


def _test(file: Path) -> int:
    from bridge.mapping.loader import load_mapping_tests
    from bridge.mapping.selftest import format_outcomes, run_mapping_tests

    rules, tests, index = load_mapping_tests(file)
    if not tests:
        print(f"{file}: no tests: add a 'tests:' section (see docs/guide/tuning-loop.md)")
        return 1
    outcomes = run_mapping_tests(rules, tests, index)
    print(format_outcomes(outcomes, str(file)))
    return 0 if all(o.passed for o in outcomes) else 1


def _check(file: Path, *, strict: bool = False) -> int:
    from bridge.mapping.explain import format_warning, rule_warnings, topic_lines
    from bridge.mapping.loader import load_mappings

    rules = load_mappings(file)
    print(f"{file}: OK, {len(rules)} rule(s)")
    for rule in rules:
        what = "ignored on purpose" if rule.ignore else f"payload {rule.payload}"
        print(f"  {rule.name}: subscribes {rule.topic.subscription} (QoS 1), {what}")
    warnings = rule_warnings(rules, topic_lines(file))
    for warning in warnings:
        print(format_warning(warning, str(file)))
    if warnings and strict:
        print(
            f"metriqo-bridge: {len(warnings)} warning(s), an error under --strict", file=sys.stderr
        )
        return EX_CONFIG
    return 0


def _explain(args: argparse.Namespace) -> int:
    import time

    from bridge.mapping.explain import explain, explanation_json, format_explanation
    from bridge.mapping.loader import load_mappings
    from bridge.mapping.mapper import Mapper

    message = _explain_message(args)
    if isinstance(message, str):
        print(f"metriqo-bridge: {message}", file=sys.stderr)
        return 2
    topic, payload = message
    mapper = Mapper(load_mappings(args.file))
    result = explain(mapper, topic, payload, int(time.time() * 1_000_000))
    if args.json:
        sys.stdout.write(
            orjson.dumps(explanation_json(result), option=orjson.OPT_INDENT_2).decode()
        )
        sys.stdout.write("\n")
    else:
        print(format_explanation(result))
    return 0 if result.ok else 1


def _explain_message(args: argparse.Namespace) -> tuple[str, bytes] | str:
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
    if len(texts) + (args.payload_file is not None) > 1:
        return "give one payload: PAYLOAD, --payload or --payload-file"
    if args.payload_file is not None:
        try:
            return topic, args.payload_file.read_bytes()
        except OSError as exc:
            return f"{args.payload_file}: {exc.strerror}"
    if texts == ["-"]:
        return topic, sys.stdin.buffer.read()
    # fsencode: argv bytes that are not UTF-8 come back exactly as given.
    return topic, os.fsencode(texts[0] if texts else "")


def _schema(output: Path | None) -> int:
    from bridge.mapping.schema import schema_bytes

    data = schema_bytes()
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    try:
        output.write_bytes(data)
    except OSError as exc:
        print(f"metriqo-bridge: {output}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _simulate_api(args: argparse.Namespace) -> int:
    from bridge.lab.apiserver.faults import Faults
    from bridge.lab.apiserver.server import serve_forever
    from bridge.settings import read_secret_file

    token_file = args.token_file or (
        Path(os.environ["METRIQO_BRIDGE_TOKEN_FILE"])
        if os.environ.get("METRIQO_BRIDGE_TOKEN_FILE")
        else None
    )
    if token_file is not None:
        token = read_secret_file(token_file, "token")
    elif os.environ.get("METRIQO_BRIDGE_TOKEN"):
        token = os.environ["METRIQO_BRIDGE_TOKEN"]
    else:
        raise ConfigError(
            "the API server needs a token: --token-file FILE or METRIQO_BRIDGE_TOKEN",
            key="simulate-api",
        )
    limit = args.rate_limit if args.rate_limit > 0 else None
    rotated = (
        None
        if args.unauthorized_until_token_file is None
        else read_secret_file(args.unauthorized_until_token_file, "unauthorized-until-token")
    )
    try:
        faults = Faults(
            error_rate=args.error_rate,
            record_then_500=args.record_then_500,
            storm_429_s=args.storm_429,
            retry_after=args.retry_after,
            latency_s=args.latency,
            slow_body_bps=args.slow_body,
            hang=args.hang,
            unauthorized_until_token=rotated,
            max_points_413=args.max_points_413,
            poison_value=args.poison_value,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), key="simulate-api") from None

    async def serve() -> None:
        # SIGTERM stops it cleanly: as a container's PID 1 it would otherwise be ignored.
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve_forever(args.host, args.port, token, limit, faults)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
