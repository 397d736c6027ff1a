"""``bench check``: how long ``metriqo-bridge check`` takes on a long mapping file, and how much
memory it needs.

Each size gets a plant's mapping file (:func:`plant_rules_yaml`): per production line a few
rules of different kinds (JSON, plain numbers, a regex level, a ``#`` tail, an ignore rule),
now and then a rule that passes its topics on (``continue: true``) or one written too broad and
too early (so the file has warnings to find), and general rules at the end. ``check`` runs on it
as its own process, as a user runs it: its wall time and peak RSS are the measurements. The
same file is then checked in this process, phase by phase (YAML, compile, rule order), with the
rule-order check's work counted (trie nodes visited, rule pairs compared), so a quadratic step
shows as a count, not only as a time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bridge.errors import EX_FAILURE, EX_OK
from bridge.lab.bench.report import render_targets, target

DEFAULT_SIZES = (2000, 5000, 20000)
TARGET_SECONDS_LARGEST = 10.0  # "20,000 rules in seconds, not minutes"
TARGET_PER_RULE_RATIO = 1.5  # time per rule, largest file / smallest: near-linear

_JSON = """\
    device_id: "{device}"
    metrics: {t: temp, h: rh}
    timestamp: {field: ts}"""
_NUMBER = """\
    device_id: "{device}"
    payload: number
    metric: "{metric}\""""
# General rules a plant keeps at the end: broader than everything before them.
_LAST = (
    ("any-line-env", "plant/+/{device}/env", _JSON),
    ("any-line-status", "plant/+/+/status", None),
    ("broker-internals", "$SYS/#", None),
    ("rest-of-plant", "plant/#", None),
    ("everything-else", "#", None),
)


def _line_rules(line: int, rng: random.Random) -> list[tuple[str, str, str | None, bool]]:
    """(kind, topic filter, body or None for an ignore rule, continue) for one line."""
    p = f"plant/line{line:05d}"
    rules: list[tuple[str, str, str | None, bool]] = []
    if rng.random() < 0.01:  # a rule written too broad, above the line's own rules
        rules.append(("any", p + "/{device}/{metric}", _NUMBER, False))
    if rng.random() < 0.02:  # an audit rule: its topics go on to the line's own rules
        rules.append(("audit", p + "/{device}/env", _JSON, True))
    rules += [
        ("env", p + "/{device}/env", _JSON, False),
        ("power", p + "/{device}/power", _JSON, False),
        ("cycle", p + "/{device:press-[0-9]+}/cycle", _JSON, False),
        ("counter", p + "/{device}/counter/{metric}", _NUMBER, False),
        ("alarm", p + "/{device}/alarm/#", _JSON, False),
        ("status", p + "/+/status", None, False),
    ]
    return rules


def plant_rules_yaml(n_rules: int, seed: int = 7) -> str:
    """A valid mapping file of exactly ``n_rules`` rules (see the module docstring)."""
    if n_rules < 1:
        raise ValueError("at least one rule")
    rng = random.Random(seed)  # noqa: S311  # a reproducible file, not a secret
    body: list[tuple[str, str, str | None, bool]] = []
    last = [(name, topic, b, False) for name, topic, b in _LAST][: max(0, n_rules - 1)]
    line = 0
    while len(body) < n_rules - len(last):
        body += _line_rules(line, rng)
        line += 1
    chosen = body[: n_rules - len(last)] + last
    out = ["version: 1", "rules:"]
    for i, (kind, topic, rule_body, keep_going) in enumerate(chosen):
        out.append(f'  - name: r{i:05d}-{kind}\n    topic: "{topic}"')
        out.append(rule_body if rule_body is not None else "    ignore: true")
        if keep_going:
            out.append("    continue: true")
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class CheckTiming:
    """One file: ``check`` as a process, then its phases in this process (seconds)."""

    rules: int
    seconds: float
    peak_rss_mb: float
    exit_code: int
    warnings: int
    yaml_s: float
    compile_s: float
    rule_order_s: float
    trie_nodes_visited: int
    rule_pairs_compared: int


@dataclass(slots=True)
class CheckReport:
    """What ``bench check`` measured; ``problems`` is empty when every check ran cleanly."""

    mode: str
    timings: list[CheckTiming]
    per_rule_ratio: float
    targets: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _run_check(path: Path) -> tuple[float, float, int, int]:
    """(wall seconds, peak RSS in MB, exit code, warnings) of ``metriqo-bridge check path``."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "check", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        warnings = sum(1 for line in out if line.startswith(b"warning:"))
    return seconds, usage.ru_maxrss / 1024, proc.returncode, warnings


def _phases(path: Path) -> tuple[float, float, float, int, int]:
    """(YAML s, compile s, rule order s, trie nodes, rule pairs) in this process."""
    from bridge.config.yamlfile import load_yaml_file
    from bridge.mapping.loader import compile_mappings
    from bridge.mapping.overlap import OverlapWork, rule_warnings

    t0 = time.perf_counter()
    data, index = load_yaml_file(path)
    t1 = time.perf_counter()
    rules = compile_mappings(data, index)
    t2 = time.perf_counter()
    work = OverlapWork()
    rule_warnings(rules, work=work)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, work.nodes, work.pairs


def measure(sizes: list[int], workdir: Path) -> CheckReport:
    """Check a generated file of each size; the report with its targets."""
    timings: list[CheckTiming] = []
    problems: list[str] = []
    for n in sizes:
        path = workdir / f"rules-{n}.yaml"
        path.write_text(plant_rules_yaml(n), encoding="utf-8")
        print(f"bench: check with {n} rules", flush=True)
        seconds, rss, code, warnings = _run_check(path)
        if code != EX_OK:
            problems.append(f"{n} rules: check exited with {code}")
        yaml_s, compile_s, order_s, nodes, pairs = _phases(path)
        timings.append(
            CheckTiming(
                n,
                round(seconds, 3),
                round(rss, 1),
                code,
                warnings,
                round(yaml_s, 3),
                round(compile_s, 3),
                round(order_s, 3),
                nodes,
                pairs,
            )
        )
    few, many = timings[0], timings[-1]
    per_rule = (many.seconds / many.rules) / (few.seconds / few.rules)
    report = CheckReport("check", timings, round(per_rule, 3), problems=problems)
    report.targets = [
        asdict(
            target(
                f"check, {many.rules} rules: seconds", many.seconds, "<=", TARGET_SECONDS_LARGEST
            )
        ),
        asdict(
            target(
                f"check, time per rule: {many.rules} rules / {few.rules} rules",
                report.per_rule_ratio,
                "<=",
                TARGET_PER_RULE_RATIO,
            )
        ),
    ]
    return report


def render_check(report: CheckReport) -> str:
    """A table: one row per file, then the targets and the verdict."""
    head = (
        f"{'rules':>7} {'seconds':>8} {'peak MB':>8} {'warnings':>8} {'yaml s':>7} "
        f"{'compile s':>9} {'order s':>8} {'nodes':>9} {'pairs':>9}"
    )
    lines = [head]
    for t in report.timings:
        lines.append(
            f"{t.rules:>7} {t.seconds:>8.2f} {t.peak_rss_mb:>8.1f} {t.warnings:>8} "
            f"{t.yaml_s:>7.2f} {t.compile_s:>9.2f} {t.rule_order_s:>8.2f} "
            f"{t.trie_nodes_visited:>9} {t.rule_pairs_compared:>9}"
        )
    lines.append(f"time per rule, largest / smallest file: {report.per_rule_ratio}")
    lines += render_targets(report.targets)
    ok = "OK: every check ran" if not report.problems else "PROBLEMS: " + "; ".join(report.problems)
    return "\n".join([*lines, ok])


def run_check_bench(args: argparse.Namespace) -> int:
    """``bench check``: 0 when every check ran cleanly (a missed target does not change it)."""
    sizes = (
        sorted({int(n) for n in str(args.rules).split(",")}) if args.rules else list(DEFAULT_SIZES)
    )
    with tempfile.TemporaryDirectory(prefix="metriqo-bench-check-") as tmp:
        report = measure(sizes, Path(tmp))
    print(render_check(report))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return EX_OK if not report.problems else EX_FAILURE
