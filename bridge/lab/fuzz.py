"""Payload fuzzing of the mapper: ``python -m bridge.lab.fuzz --seconds 60``.

Feeds mutated ``(topic, payload)`` messages to :meth:`Mapper.map` with a fixed receive time and
checks every outcome with :func:`check_mapped`: the mapper never raises, every message becomes
records, failures with a known reason, an ignore or skipped readings, and every record is one
the spool and the API accept (non-empty device id and metric names, 1..100 finite float values,
a timestamp ISO 8601 can write). A message that maps slower than ``--max-case-seconds`` is a
finding too: one bad payload must not stall intake.

Two engines:

* ``builtin`` (default): a seeded mutational fuzzer in pure Python. It starts from a seed corpus
  (the malformed-payload kinds of the reliability matrix, valid payloads for the shipped rules,
  the ``tests:`` of the mapping file, and the files of ``--corpus``), stacks byte and
  JSON-aware mutations, and keeps a mutant as a new seed when it produces an outcome not seen
  before (rule, failure reasons, records or not). Same ``--seed`` and corpus, same inputs.
* ``atheris``: coverage-guided libFuzzer through atheris, if it is installed
  (``pip install atheris``); the same target and property check, the corpus as its input dir.

A corpus file holds one message: the topic, a newline, then the payload bytes
(``printf 'tele/m-1/voltage\\n1e400' > corpus/x``). On a finding the input is saved as
``crash-<sha1>`` in the corpus dir (``./fuzz-findings`` without one); the process prints the
seed and the path and exits 1. ``--replay FILE...`` re-runs saved inputs.

Exit codes: 0 no finding, 1 finding, 2 usage error, 78 mapping file invalid.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import math
import os
import random
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import orjson

from bridge.errors import EX_CONFIG, EX_FAILURE, EX_OK, EX_USAGE, ConfigError, PayloadError
from bridge.lab.fuzz_inputs import DEFAULT_CAP, Case, Mutator, read_corpus, save_finding, seed_cases
from bridge.limits import MAX_POINTS_PER_REQUEST
from bridge.mapping.loader import load_mapping_tests
from bridge.mapping.mapper import Mapped, Mapper
from bridge.mapping.selftest import payload_of
from bridge.mapping.timestamps import format_timestamp
from bridge.models import Record

RECEIVED_US = int(datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()) * 1_000_000
MIN_TS_US = 946_684_800 * 1_000_000  # 2000-01-01: the mapper refuses older readings
MAX_TS_US = 253_402_300_799 * 1_000_000  # 9999-12-31T23:59:59Z: the last time ISO 8601 writes
MAX_CORPUS = 4096  # seeds kept in memory by the builtin engine
_REASON = re.compile(r'PayloadError\(\s*"([a-z_]+)"')


# -- one message -----------------------------------------------------------------------------


@cache
def known_reasons() -> frozenset[str]:
    """Every failure reason the mapper can report: the ``PayloadError("...")`` labels found in
    the bridge's own source. Empty if the source is not on disk (any label is then accepted)."""
    found: set[str] = set()
    for source in Path(__file__).parents[1].rglob("*.py"):
        found.update(_REASON.findall(source.read_text("utf-8")))
    return frozenset(found)


def check_mapped(mapped: object, received_us: int = RECEIVED_US) -> list[str]:
    """Every property a mapping outcome must have; returns the violations (empty: all hold).

    Pure: no I/O, so tests can feed it hand-made outcomes.
    """
    if not isinstance(mapped, Mapped):
        return [f"map() returned {type(mapped).__name__}, not Mapped"]
    problems: list[str] = []
    # A Sparkplug message (``seen``) may make no records and lose nothing: a BIRTH or DEATH
    # whose metrics the rule excludes, DATA parked until its BIRTH (``park``); the session
    # tracking counts each, and values left out for a reason are counted in skipped_values.
    sparkplug = mapped.seen is not None or mapped.park is not None
    if not (
        mapped.records or mapped.failures or mapped.ignored or mapped.skipped_readings or sparkplug
    ):
        problems.append("no records, no failures, not ignored: the message would vanish")
    if mapped.ignored and (mapped.records or mapped.failures):
        problems.append("ignored, yet it has records or failures")
    reasons = known_reasons()
    for failure in mapped.failures:
        if not isinstance(failure, PayloadError):
            problems.append(f"failure {failure!r} is not a PayloadError")
        elif not failure.reason or (reasons and failure.reason not in reasons):
            problems.append(f"unknown failure reason {failure.reason!r}")
    for i, record in enumerate(mapped.records):
        problems.extend(f"record {i}: {p}" for p in _check_record(record, received_us))
    return problems


def _check_record(record: object, received_us: int) -> list[str]:
    if not isinstance(record, Record):
        return [f"{type(record).__name__}, not a Record"]
    problems: list[str] = []
    if not isinstance(record.device_id, str) or not record.device_id:
        problems.append(f"device_id {record.device_id!r} is not a non-empty string")
    if not 1 <= len(record.metrics) <= MAX_POINTS_PER_REQUEST:
        problems.append(f"{len(record.metrics)} metrics, not 1..{MAX_POINTS_PER_REQUEST}")
    for name, value in record.metrics.items():
        if not isinstance(name, str) or not name:
            problems.append(f"metric name {name!r} is not a non-empty string")
        if type(value) is not float or not math.isfinite(value):
            problems.append(f"{name!r}: {value!r} is not a finite float")
    ts = record.ts_us
    if type(ts) is not int or not MIN_TS_US <= ts <= MAX_TS_US:
        problems.append(f"timestamp {ts!r} outside 2000..9999")
    if record.received_us != received_us:
        problems.append(f"received_us {record.received_us!r} is not the receive time")
    if problems:
        return problems
    try:  # what the spool and the sender do with it next
        format_timestamp(ts)
        orjson.dumps({"device_id": record.device_id, "metrics": record.metrics})
        _ = record.record_id
    except Exception as exc:  # noqa: BLE001  # any failure here is the finding
        problems.append(f"cannot be stored or sent: {type(exc).__name__}: {exc}")
    return problems


def run_case(
    mapper: Mapper,
    case: Case,
    *,
    received_us: int = RECEIVED_US,
    max_seconds: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[str], Mapped | None]:
    """Map one message and check the outcome; returns (violations, outcome)."""
    start = clock()
    try:
        mapped = mapper.map(case.topic, case.payload, received_us)
    except Exception as exc:  # noqa: BLE001  # the property under test: map() never raises
        lines = traceback.format_exception(exc)
        return [f"map() raised {type(exc).__name__}: {exc}", "".join(lines[-6:])], None
    took = clock() - start
    problems = check_mapped(mapped, received_us)
    if took > max_seconds:
        again = clock()  # once more: a GC pause or a busy machine is not a finding
        mapper.map(case.topic, case.payload, received_us)
        took = min(took, clock() - again)
        if took > max_seconds:
            problems.append(f"mapping took {took:.2f} s (limit {max_seconds} s)")
    return problems, mapped


def outcome_signature(mapped: Mapped | None) -> tuple[object, ...]:
    """What distinguishes one outcome from another, for the builtin engine's feedback."""
    if mapped is None:
        return ("raised",)
    reasons = tuple(sorted({f.reason for f in mapped.failures}))
    return (mapped.rule, reasons, bool(mapped.records), mapped.ignored, mapped.skipped_readings > 0)


# -- the builtin engine ------------------------------------------------------------------------


@dataclass(slots=True)
class Finding:
    """A message that broke a property, and how."""

    case: Case
    problems: list[str]
    execution: int


@dataclass(slots=True)
class Stats:
    """Totals of one fuzzing run."""

    executions: int = 0
    seconds: float = 0.0
    records: int = 0
    ignored: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    signatures: int = 0
    corpus: int = 0

    @property
    def per_second(self) -> float:
        """Executions per second."""
        return self.executions / self.seconds if self.seconds else 0.0


def fuzz(
    mapper: Mapper,
    seeds: Sequence[Case],
    *,
    seed: int,
    seconds: float | None = None,
    runs: int | None = None,
    cap: int = DEFAULT_CAP,
    max_case_seconds: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Stats, Finding | None]:
    """Run every seed once, then mutants, until ``seconds`` pass or ``runs`` executions are
    done (whichever first); stop at the first finding."""
    rng = random.Random(seed)  # noqa: S311  # reproducible test inputs, not secrets
    mutator = Mutator(rng, cap)
    corpus = list(seeds) or [Case("x", b"")]
    mutator.learn_keys(corpus)
    stats = Stats()
    seen: set[tuple[object, ...]] = set()
    start = clock()
    deadline = math.inf if seconds is None else start + seconds
    limit = math.inf if runs is None else runs
    pending = list(corpus)
    productive: list[Case] = []  # cases that made records: mutants of them reach deeper code
    while stats.executions < limit and (stats.executions % 64 or clock() < deadline):
        if pending:
            case = pending.pop()
        else:
            pool = productive if productive and rng.random() < 0.5 else corpus
            case = mutator.mutate(rng.choice(pool), corpus)
        problems, mapped = run_case(mapper, case, max_seconds=max_case_seconds)
        stats.executions += 1
        if problems:
            stats.seconds = clock() - start
            return stats, Finding(case, problems, stats.executions)
        assert mapped is not None
        stats.records += len(mapped.records)
        stats.ignored += mapped.ignored
        stats.reasons.update(f.reason for f in mapped.failures)
        signature = outcome_signature(mapped)
        if signature in seen:
            continue
        seen.add(signature)
        for keep in (corpus, productive) if mapped.records else (corpus,):
            if len(keep) < MAX_CORPUS:
                keep.append(case)
            else:
                keep[rng.randrange(len(keep))] = case
    stats.seconds = clock() - start
    stats.signatures = len(seen)
    stats.corpus = len(corpus)
    return stats, None


# -- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bridge.lab.fuzz",
        description="Fuzz the mapper with mutated MQTT messages; exit 1 on a property violation.",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    p.add_argument("--runs", type=int, help="stop after this many executions")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--mappings", type=Path, default=Path("topic-mappings.yaml"))
    p.add_argument("--corpus", type=Path, help="extra seeds; findings are written here too")
    p.add_argument("--max-payload-bytes", type=int, default=DEFAULT_CAP)
    p.add_argument("--max-case-seconds", type=float, default=1.0)
    p.add_argument("--engine", choices=["builtin", "atheris"], default="builtin")
    p.add_argument("--replay", type=Path, nargs="+", metavar="FILE", help="re-run saved inputs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bridge.lab.fuzz``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        rules, tests, _index = load_mapping_tests(args.mappings)
    except ConfigError as exc:
        print(f"fuzz: {exc}", file=sys.stderr)
        return EX_CONFIG
    mapper = Mapper(rules, max_payload_bytes=args.max_payload_bytes)
    if args.replay:
        return _replay(mapper, args.replay, args.max_case_seconds)
    test_msgs = []
    for t in tests:
        with contextlib.suppress(ValueError):  # bad hex: the test itself reports it
            test_msgs.append((t.topic, payload_of(t)))
    seeds = seed_cases(mapper, test_msgs, args.max_payload_bytes)
    if args.corpus is not None and args.corpus.is_dir():
        seeds.extend(read_corpus(args.corpus))
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    findings_dir = args.corpus or Path("fuzz-findings")
    if args.engine == "atheris":
        return _run_atheris(mapper, seeds, args, seed, findings_dir)
    print(f"fuzz: builtin engine, seed {seed}, {len(seeds)} seeds, {args.mappings}", flush=True)
    stats, finding = fuzz(
        mapper,
        seeds,
        seed=seed,
        seconds=args.seconds,
        runs=args.runs,
        cap=args.max_payload_bytes,
        max_case_seconds=args.max_case_seconds,
    )
    if finding is not None:
        path = save_finding(findings_dir, finding.case)
        _report(finding.case, finding.problems, path)
        print(f"fuzz: seed {seed}, execution {finding.execution}", file=sys.stderr)
        return EX_FAILURE
    top = ", ".join(f"{r} {n}" for r, n in stats.reasons.most_common(8))
    print(
        f"fuzz: {stats.executions} executions in {stats.seconds:.1f} s "
        f"({stats.per_second:.0f}/s), seed {seed}, no finding\n"
        f"fuzz: {stats.records} records, {stats.ignored} ignored, "
        f"{stats.signatures} distinct outcomes, corpus {stats.corpus}\n"
        f"fuzz: failures by reason: {top or 'none'}"
    )
    return EX_OK


def _report(case: Case, problems: list[str], path: Path | None) -> None:
    print(f"fuzz: FINDING on topic {case.topic[:200]!r}", file=sys.stderr)
    print(f"fuzz: payload ({len(case.payload)} bytes) {case.payload[:200]!r}", file=sys.stderr)
    for problem in problems:
        print(f"fuzz:   {problem}", file=sys.stderr)
    if path is not None:
        print(f"fuzz: input saved to {path}", file=sys.stderr)
        print(f"fuzz: replay: python -m bridge.lab.fuzz --replay {path}", file=sys.stderr)


def _replay(mapper: Mapper, files: Sequence[Path], max_case_seconds: float) -> int:
    failed = 0
    for path in files:
        case = Case.from_bytes(path.read_bytes())
        problems, _ = run_case(mapper, case, max_seconds=max_case_seconds)
        if problems:
            failed += 1
            _report(case, problems, None)
        print(f"fuzz: {path}: {'FAIL' if problems else 'ok'}")
    return EX_FAILURE if failed else EX_OK


def _run_atheris(
    mapper: Mapper, seeds: Sequence[Case], args: argparse.Namespace, seed: int, findings: Path
) -> int:
    """libFuzzer through atheris; never returns when atheris is installed (libFuzzer exits)."""
    try:
        atheris = importlib.import_module("atheris")
    except ImportError:
        print("fuzz: atheris is not installed (pip install atheris)", file=sys.stderr)
        return EX_USAGE
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="bridge-fuzz-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for case in seeds:
        data = case.to_bytes()
        name = corpus / f"seed-{hashlib.sha1(data, usedforsecurity=False).hexdigest()}"
        if not name.exists():
            name.write_bytes(data)
    max_seconds = args.max_case_seconds

    def one_input(data: bytes) -> None:
        case = Case.from_bytes(data)
        problems, _ = run_case(mapper, case, max_seconds=max_seconds)
        if problems:
            path = save_finding(findings, case)
            _report(case, problems, path)
            print(f"fuzz: atheris seed {seed}", file=sys.stderr, flush=True)
            os._exit(EX_FAILURE)  # libFuzzer's own exit code for a crash differs: keep 1

    print(f"fuzz: atheris engine, seed {seed}, corpus {corpus}", flush=True)
    _instrument_bridge(atheris.instrument_func)
    flags = [f"-seed={seed}", f"-max_len={4 * args.max_payload_bytes}", "-rss_limit_mb=4096"]
    if args.runs is not None:
        flags.append(f"-runs={args.runs}")
    flags.append(f"-max_total_time={max(1, round(args.seconds))}")
    atheris.Setup([sys.argv[0], *flags, str(corpus)], one_input)
    atheris.Fuzz()
    return 0  # pragma: no cover - libFuzzer exits the process itself


def _instrument_bridge(instrument: Callable[[Callable[..., object]], object]) -> int:
    """Add coverage instrumentation to the bridge's own functions (in place); returns how many.

    ``atheris.instrument_all()`` would patch every loaded function, the standard library
    included: minutes of start-up for coverage of code the mapper does not own.
    """
    count = 0
    for name, module in list(sys.modules.items()):
        if name != "bridge" and not name.startswith("bridge."):
            continue
        for obj in list(vars(module).values()):
            if getattr(obj, "__module__", None) != name:
                continue
            members = vars(obj).values() if inspect.isclass(obj) else [obj]
            for member in members:
                func = member.fget if isinstance(member, property) else member
                func = getattr(func, "__func__", func)  # staticmethod, classmethod
                if inspect.isfunction(func):
                    instrument(func)
                    count += 1
    return count


if __name__ == "__main__":
    sys.exit(main())
