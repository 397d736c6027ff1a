"""Tests of the mapper fuzzer (bridge/lab/fuzz.py): bounded runs, the property check, replays."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import PayloadError
from bridge.lab import fuzz, fuzz_inputs
from bridge.lab.fuzz import RECEIVED_US, check_mapped, run_case
from bridge.lab.fuzz_inputs import Case
from bridge.mapping.loader import load_mappings
from bridge.mapping.mapper import Mapped, Mapper
from bridge.models import Record

REPO = Path(__file__).resolve().parents[2]
MAPPINGS = REPO / "topic-mappings.yaml"
SHIPPED = Mapper(load_mappings(MAPPINGS))
GOOD = Record("press-4", RECEIVED_US - 5_000_000, {"rpm": 1480.0}, RECEIVED_US)


class NaNMapper(Mapper):
    """Deliberately broken: turns the first value of every record into NaN."""

    def map(self, topic: str, payload: bytes, received_us: int) -> Mapped:
        """The real mapping, then the damage."""
        out = super().map(topic, payload, received_us)
        for record in out.records:
            first = next(iter(record.metrics))
            record.metrics[first] = math.nan
        return out


class RaisingMapper(Mapper):
    """Deliberately broken: raises on any payload that contains a NUL byte."""

    def map(self, topic: str, payload: bytes, received_us: int) -> Mapped:
        """The real mapping unless the payload holds a NUL."""
        if b"\x00" in payload:
            raise RecursionError("maximum recursion depth exceeded")
        return super().map(topic, payload, received_us)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python -m bridge.lab.fuzz ARGS`` in process; (exit code, stdout, stderr)."""
    code = fuzz.main(["--mappings", str(MAPPINGS), *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- the property check ------------------------------------------------------------------------


def test_valid_and_malformed_seeds_satisfy_every_property() -> None:
    """Every built-in seed maps under the shipped rules without a violation."""
    seeds = fuzz_inputs.seed_cases(SHIPPED)
    assert len(seeds) > 300
    for case in seeds:
        problems, mapped = run_case(SHIPPED, case)
        assert problems == [], (case.topic, case.payload[:80], problems)
        assert mapped is not None


def test_valid_seeds_produce_records() -> None:
    """The valid examples for the shipped rules really map to records (not only failures)."""
    for topic, payload in fuzz_inputs._VALID:
        mapped = SHIPPED.map(topic, payload, RECEIVED_US)
        assert mapped.records or mapped.ignored, (topic, mapped.failures)


def test_the_seed_corpus_covers_the_matrix_and_every_rule() -> None:
    """At least 20 malformed kinds, and a seed topic that reaches each shipped rule."""
    assert len(fuzz_inputs._malformed(fuzz_inputs.DEFAULT_CAP)) >= 20
    reached = {SHIPPED.map(t, b"1", RECEIVED_US).rule for t in fuzz_inputs._topics_of(SHIPPED)}
    assert reached == {rule.name for rule in SHIPPED.rules}


@pytest.mark.parametrize(
    ("mapped", "problem"),
    [
        (Mapped("r", records=[Record("d", GOOD.ts_us, {"m": math.nan}, RECEIVED_US)]), "finite"),
        (Mapped("r", records=[Record("d", GOOD.ts_us, {"m": math.inf}, RECEIVED_US)]), "finite"),
        (Mapped("r", records=[Record("d", GOOD.ts_us, {"m": 1}, RECEIVED_US)]), "finite float"),
        (Mapped("r", records=[Record("d", GOOD.ts_us, {"m": True}, RECEIVED_US)]), "float"),
        (Mapped("r", records=[Record("", GOOD.ts_us, {"m": 1.0}, RECEIVED_US)]), "device_id"),
        (Mapped("r", records=[Record("d", GOOD.ts_us, {"": 1.0}, RECEIVED_US)]), "metric name"),
        (Mapped("r", records=[Record("d", GOOD.ts_us, {}, RECEIVED_US)]), "0 metrics"),
        (
            Mapped(
                "r",
                records=[Record("d", GOOD.ts_us, {f"m{i}": 1.0 for i in range(101)}, RECEIVED_US)],
            ),
            "101 metrics",
        ),
        (Mapped("r", records=[Record("d", 0, {"m": 1.0}, RECEIVED_US)]), "timestamp"),
        (Mapped("r", records=[Record("d", GOOD.ts_us, {"m": 1.0}, 7)]), "received_us"),
        (Mapped("r", failures=[PayloadError("made_up_reason")]), "unknown failure reason"),
        (Mapped("r"), "vanish"),
        (Mapped("r", records=[GOOD], ignored=True), "ignored, yet"),
        ("not a Mapped", "not Mapped"),
    ],
)
def test_the_property_check_flags_each_broken_outcome(mapped: object, problem: str) -> None:
    """check_mapped names every kind of broken outcome, and passes the good one."""
    problems = check_mapped(mapped)
    assert any(problem in p for p in problems), problems


def test_the_property_check_passes_good_outcomes() -> None:
    """Records, known failures, an ignore and skipped readings are all acceptable outcomes."""
    assert check_mapped(Mapped("r", records=[GOOD])) == []
    assert check_mapped(Mapped(None, failures=[PayloadError("unmatched")])) == []
    assert check_mapped(Mapped("r", ignored=True)) == []
    assert check_mapped(Mapped("r", skipped_readings=2)) == []


def test_known_reasons_are_read_from_the_bridge_source() -> None:
    """The reason vocabulary holds the mapper's labels, including multi-line constructions."""
    assert {"invalid_json", "too_large", "unmatched", "unmapped_value"} <= fuzz.known_reasons()


def test_an_exception_from_map_is_a_finding() -> None:
    """run_case turns an exception into a violation naming it, instead of raising."""
    problems, mapped = run_case(RaisingMapper(SHIPPED.rules), Case("tele/m/v", b"1\x00"))
    assert mapped is None
    assert "map() raised RecursionError" in problems[0]


def test_a_slow_mapping_is_a_finding() -> None:
    """A message that takes longer than the limit (timed twice) is a violation."""
    ticks = iter(range(0, 100, 5))
    problems, _ = run_case(
        SHIPPED, Case("tele/m/v", b"1"), max_seconds=1.0, clock=lambda: float(next(ticks))
    )
    assert problems == ["mapping took 5.00 s (limit 1.0 s)"]


# -- the engine --------------------------------------------------------------------------------


def test_same_seed_same_run() -> None:
    """A seed fixes the whole run: two runs of 1500 executions see the same outcomes."""
    seeds = fuzz_inputs.seed_cases(SHIPPED)
    one, no_finding = fuzz.fuzz(SHIPPED, seeds, seed=5, runs=1500)
    two, _ = fuzz.fuzz(SHIPPED, seeds, seed=5, runs=1500)
    assert no_finding is None
    assert one.executions == two.executions == 1500
    assert (one.reasons, one.records, one.signatures) == (two.reasons, two.records, two.signatures)


def test_the_time_limit_stops_the_run() -> None:
    """With a clock that moves a second per look, a 10 s run stops at its tenth look."""
    ticks = iter(range(10**6))
    stats, finding = fuzz.fuzz(
        SHIPPED,
        fuzz_inputs.seed_cases(SHIPPED),
        seed=1,
        seconds=10,
        clock=lambda: float(next(ticks)),
    )
    assert finding is None
    assert stats.executions == 64 * 9  # read at the start, then once per 64 executions


def test_mutants_leave_the_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the seeds, the engine maps new messages: topics and payloads both change."""
    seen: list[Case] = []
    real = fuzz.run_case

    def spy(mapper: Mapper, case: Case, **kw: Any) -> tuple[list[str], Mapped | None]:
        seen.append(case)
        return real(mapper, case, **kw)

    monkeypatch.setattr(fuzz, "run_case", spy)
    seeds = fuzz_inputs.seed_cases(SHIPPED)
    fuzz.fuzz(SHIPPED, seeds, seed=3, runs=len(seeds) + 2000)
    mutants = seen[len(seeds) :]
    assert len({c.payload for c in mutants} - {c.payload for c in seeds}) > 1000
    assert {c.topic for c in mutants} - {c.topic for c in seeds}


# -- the command line ----------------------------------------------------------------------------


def test_a_bounded_run_of_the_command_exits_0(tmp_path: Path) -> None:
    """``python -m bridge.lab.fuzz --seconds 1 --seed 1`` runs, reports its rate and exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.lab.fuzz", "--seconds", "1", "--seed", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "executions in" in proc.stdout
    assert "seed 1, no finding" in proc.stdout


def test_a_broken_mapper_fails_the_run_and_the_saved_input_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN value is found, saved as crash-<sha1>, reported with the seed (exit 1); replaying
    the file fails with the broken mapper and passes with the real one."""
    monkeypatch.setattr(fuzz, "Mapper", NaNMapper)
    code, _out, err = run_main(["--runs", "2000", "--seed", "9", "--corpus", str(tmp_path)], capsys)
    assert code == 1
    [saved] = tmp_path.glob("crash-*")
    assert "is not a finite float" in err
    assert "seed 9" in err
    assert f"--replay {saved}" in err
    assert run_main(["--replay", str(saved)], capsys)[0] == 1
    monkeypatch.setattr(fuzz, "Mapper", Mapper)
    code, out, _err = run_main(["--replay", str(saved)], capsys)
    assert code == 0
    assert f"{saved}: ok" in out


def test_an_exception_is_found_in_a_corpus_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeds from --corpus are run: a NUL payload there makes the raising mapper fail."""
    (tmp_path / "nul").write_bytes(b"tele/meter-07/voltage\n229\x00")
    monkeypatch.setattr(fuzz, "Mapper", RaisingMapper)
    code, _out, err = run_main(["--runs", "1", "--seed", "1", "--corpus", str(tmp_path)], capsys)
    assert code == 1
    assert "map() raised RecursionError" in err


def test_a_bad_mapping_file_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid mapping file is a configuration error (exit 78), reported on stderr."""
    bad = tmp_path / "m.yaml"
    bad.write_text("version: 1\nrules: []\n")
    assert fuzz.main(["--mappings", str(bad), "--runs", "1"]) == 78
    assert "m.yaml" in capsys.readouterr().err


def test_case_files_round_trip() -> None:
    """A case survives its file form; any bytes are a case (topic decoded like the source)."""
    case = Case("plant/berlin/line1/env", b'{"temp": 1}\n\xff')
    assert Case.from_bytes(case.to_bytes()) == case
    assert Case.from_bytes(b"\xff/x") == Case("\ufffd/x", b"")


# -- the atheris engine, with a stand-in for atheris -------------------------------------------


@pytest.fixture
def fake_atheris(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """An ``atheris`` module whose Fuzz() feeds every corpus file to the target once."""
    state = types.SimpleNamespace(argv=[], instrumented=0)

    def setup(argv: list[str], target: Callable[[bytes], None]) -> None:
        state.argv = argv
        state.target = target

    def run() -> None:
        for path in sorted(Path(state.argv[-1]).iterdir()):
            state.target(path.read_bytes())

    def instrument(func: object) -> object:
        state.instrumented += 1
        return func

    module = types.ModuleType("atheris")
    module.Setup = setup  # type: ignore[attr-defined]
    module.Fuzz = run  # type: ignore[attr-defined]
    module.instrument_func = instrument  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "atheris", module)
    return state


def test_the_atheris_engine_gets_the_seeds_and_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_atheris: types.SimpleNamespace
) -> None:
    """The seeds are written to the corpus dir, the time and seed passed to libFuzzer, and
    only the bridge's own functions instrumented."""
    args = ["--engine", "atheris", "--seconds", "7", "--seed", "4", "--corpus", str(tmp_path)]
    code, _out, _err = run_main(args, capsys)
    assert code == 0
    assert "-max_total_time=7" in fake_atheris.argv
    assert "-seed=4" in fake_atheris.argv
    assert fake_atheris.argv[-1] == str(tmp_path)
    assert len(list(tmp_path.glob("seed-*"))) >= len(fuzz_inputs.seed_cases(SHIPPED))
    # The bridge's functions in the modules this process loaded: about 2,000 when the whole
    # unit suite ran first; every loaded function (instrument_all) would be over 25,000.
    assert 50 < fake_atheris.instrumented < 5000


def test_the_atheris_engine_reports_a_finding_with_exit_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_atheris: types.SimpleNamespace,
) -> None:
    """A violation under atheris saves the input and exits 1 (os._exit: libFuzzer owns exit)."""

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(fuzz, "Mapper", NaNMapper)
    monkeypatch.setattr(os, "_exit", exit_now)
    with pytest.raises(SystemExit) as stop:
        run_main(["--engine", "atheris", "--corpus", str(tmp_path)], capsys)
    assert stop.value.code == 1
    assert list(tmp_path.glob("crash-*"))


def test_without_atheris_the_engine_choice_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--engine atheris without atheris installed exits 2 and says how to install it."""
    monkeypatch.setitem(sys.modules, "atheris", None)
    code, _out, err = run_main(["--engine", "atheris", "--seconds", "1"], capsys)
    assert code == 2
    assert "pip install atheris" in err
