"""``bench sparkplug``: what decoding a Sparkplug B DDATA message costs, in this process.

An edge node (:class:`bridge.sparkplug.encode.EdgeNode`) births one device with ``--metrics``
metrics of mixed datatypes (Float, Double, Int32, Int16, UInt64, Boolean), then sends DDATA
messages by alias only, as real edge nodes do. Each round decodes all of them; the best
round's time per message is reported for three stages:

- ``parse``: the protobuf runtime alone (``Payload.FromString``);
- ``decode``: :func:`~bridge.sparkplug.decode.decode_payload` (parse, then our dataclasses);
- ``decode + numbers``: that and :func:`~bridge.sparkplug.values.numeric_values` with the
  BIRTH's datatypes, i.e. everything up to the numbers a mapping rule receives.

Beside them, ``python wire walk``: a loop in pure Python that only steps over the same bytes'
fields (tags, varints, lengths) without building anything: a floor for any decoder written in
Python, to compare the official runtime with. Every message's numbers are checked against what
was encoded; a wrong one is a problem (exit 1), a missed target is only reported.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from bridge.errors import EX_FAILURE, EX_OK
from bridge.lab.bench.report import render_targets, target
from bridge.sparkplug import sparkplug_b_pb2 as pb
from bridge.sparkplug.datatypes import DataType
from bridge.sparkplug.decode import decode_payload
from bridge.sparkplug.encode import EdgeNode, Metric
from bridge.sparkplug.values import numeric_values

TARGET_US_PER_MESSAGE = 100.0  # decode + numbers of a 20-metric DDATA: far below MQTT's cost
T0 = 1_795_681_920_000
_KINDS = (
    DataType.FLOAT,
    DataType.FLOAT,
    DataType.DOUBLE,
    DataType.INT32,
    DataType.FLOAT,
    DataType.INT16,
    DataType.UINT64,
    DataType.BOOLEAN,
    DataType.DOUBLE,
    DataType.FLOAT,
)


@dataclass(slots=True)
class SparkplugReport:
    """``bench sparkplug``: microseconds per DDATA message for each stage (best round)."""

    mode: str
    metrics_per_message: int
    messages: int
    rounds: int
    payload_bytes: int
    parse_us: float = math.nan
    decode_us: float = math.nan
    decode_and_numbers_us: float = math.nan
    python_wire_walk_us: float = math.nan
    protobuf_backend: str = ""
    targets: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _value(kind: int, i: int, n: int) -> int | float | bool:
    if kind == DataType.BOOLEAN:
        return (i + n) % 2 == 0
    if kind == DataType.INT32:
        return -1000 * i - n
    if kind == DataType.INT16:
        return -(i + n) % 30000
    if kind == DataType.UINT64:
        return 2**63 + 1000 * i + n
    return 20.0 + i + (n % 100) / 4  # exact in 32 bits


def workload(metrics: int, messages: int) -> tuple[dict[int, int], list[bytes], list[list[float]]]:
    """The BIRTH's alias -> datatype table, the DDATA payloads, and each one's numbers."""
    node = EdgeNode("Bench", "edge-1")
    kinds = [_KINDS[i % len(_KINDS)] for i in range(metrics)]
    names = [f"Line 1/Cell {i // 5}/m{i}" for i in range(metrics)]
    born = [
        Metric(name, kind, _value(kind, i, 0))
        for i, (name, kind) in enumerate(zip(names, kinds, strict=True))
    ]
    node.dbirth("press-1", born, T0)
    types = dict(node.aliases.values())
    payloads, expected = [], []
    for n in range(messages):
        values = {
            name: _value(kind, i, n)
            for i, (name, kind) in enumerate(zip(names, kinds, strict=True))
        }
        payloads.append(node.ddata("press-1", values, T0 + n)[1])
        expected.append([float(v) for v in values.values()])
    return types, payloads, expected


def check(
    types: dict[int, int], payloads: Sequence[bytes], expected: Sequence[list[float]]
) -> list[str]:
    """Every message decodes to the numbers encoded; the mismatches, if any."""
    problems = []
    for i, (data, want) in enumerate(zip(payloads, expected, strict=True)):
        got = [
            number
            for m in decode_payload(data).metrics
            for _suffix, number in numeric_values(m, types.get(m.alias or 0)).values
        ]
        if got != want:
            problems.append(f"message {i}: decoded {got[:3]}..., encoded {want[:3]}...")
    return problems[:5]


def wire_walk(data: bytes) -> int:
    """Step over every field of a payload and of its metrics (tags, varints, lengths), building
    nothing: the least a decoder in pure Python has to do. Returns the fields seen."""
    seen = 0
    stack = [(0, len(data), True)]
    while stack:
        pos, end, top = stack.pop()
        while pos < end:
            tag, pos = _varint(data, pos)
            seen += 1
            wire = tag & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(data, pos)
                if top and tag >> 3 == 2:  # a metric: walk its fields too
                    stack.append((pos, pos + size, False))
                pos += size
            else:
                raise ValueError(f"wire type {wire}")
    return seen


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _best_us(run: Callable[[], object], messages: int, rounds: int) -> float:
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return round(best / messages * 1e6, 2)


def measure(metrics: int, messages: int, rounds: int) -> SparkplugReport:
    """Time each stage over the same DDATA messages; the report with its target."""
    from google.protobuf.internal import api_implementation

    types, payloads, expected = workload(metrics, messages)
    report = SparkplugReport(
        "sparkplug",
        metrics,
        messages,
        rounds,
        round(sum(map(len, payloads)) / len(payloads)),
        protobuf_backend=api_implementation.Type(),
    )
    report.problems = check(types, payloads, expected)
    parse = pb.Payload.FromString

    # Each stage keeps nothing it builds: a list of every decoded message would make the cycle
    # collector walk a growing heap, and time that instead of the decoding.
    def parse_all() -> None:
        for data in payloads:
            parse(data)

    def decode_all() -> None:
        for data in payloads:
            decode_payload(data)

    def numbers_all() -> None:
        for data in payloads:
            for m in decode_payload(data).metrics:
                numeric_values(m, types.get(m.alias or 0))

    def walk_all() -> None:
        for data in payloads:
            wire_walk(data)

    report.parse_us = _best_us(parse_all, messages, rounds)
    report.decode_us = _best_us(decode_all, messages, rounds)
    report.decode_and_numbers_us = _best_us(numbers_all, messages, rounds)
    report.python_wire_walk_us = _best_us(walk_all, messages, rounds)
    name = f"decode + numbers, {metrics}-metric DDATA: µs per message"
    report.targets = [
        asdict(target(name, report.decode_and_numbers_us, "<=", TARGET_US_PER_MESSAGE))
    ]
    return report


def render_sparkplug(report: SparkplugReport) -> str:
    lines = [
        f"Sparkplug B DDATA, {report.metrics_per_message} metrics by alias, "
        f"{report.payload_bytes} bytes, {report.messages} messages x {report.rounds} rounds "
        f"(best round), protobuf backend {report.protobuf_backend}",
        f"  parse (protobuf runtime)        {report.parse_us:8.2f} µs/message",
        f"  decode (parse + our values)     {report.decode_us:8.2f} µs/message",
        f"  decode + numbers                {report.decode_and_numbers_us:8.2f} µs/message",
        f"  python wire walk (a floor for a pure-Python decoder) "
        f"{report.python_wire_walk_us:.2f} µs/message",
    ]
    lines += render_targets(report.targets)
    ok = (
        "OK: every message decoded to its numbers"
        if not report.problems
        else "PROBLEMS: " + "; ".join(report.problems)
    )
    return "\n".join([*lines, ok])


def run_sparkplug_bench(args: argparse.Namespace) -> int:
    """``bench sparkplug``: 0 when every message decoded to its numbers."""
    report = measure(args.metrics, args.iterations, args.rounds)
    print(render_sparkplug(report))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return EX_OK if not report.problems else EX_FAILURE
