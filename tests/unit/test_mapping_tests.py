"""`metriqo-bridge test`: the tests kept in a mapping file, including the shipped one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli.main import main

REPO = Path(__file__).resolve().parents[2]
RULE = (
    "version: 1\nrules:\n"
    "  - {name: env, topic: 'p/{d}', device_id: '{d}', metrics: {t: t}, timestamp: {field: ts}}\n"
)


def test_shipped_mapping_file_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """Every example in the shipped topic-mappings.yaml has a test, and they all pass."""
    assert main(["test", str(REPO / "topic-mappings.yaml")]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out
    assert out.count("PASS") >= 5


def test_a_wrong_expectation_fails_with_a_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A test whose expected value differs fails, naming the missing and the extra point."""
    f = tmp_path / "m.yaml"
    f.write_text(
        RULE + 'tests:\n  - topic: p/d1\n    payload: \'{"t": 2, "ts": "2026-01-01T00:00:00Z"}\'\n'
        "    expect: [{device_id: d1, timestamp: '2026-01-01T00:00:00Z', metrics: {t: 3}}]\n",
        encoding="utf-8",
    )
    assert main(["test", str(f)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  p/d1  ({f}:5)" in out
    assert "missing  d1 t = 3.0 at 2026-01-01T00:00:00Z" in out
    assert "extra    d1 t = 2.0 at 2026-01-01T00:00:00Z" in out
    assert "0 passed, 1 failed" in out


def test_expected_failures_and_receive_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """expect_failures lists reasons; a point without timestamp is compared at receive time."""
    f = tmp_path / "m.yaml"
    f.write_text(
        RULE + "  - {name: n, topic: 'n/{d}', device_id: '{d}', payload: number, metric: v}\n"
        "tests:\n"
        "  - {topic: p/d1, payload_json: {t: 1}, expect_failures: [missing_timestamp]}\n"
        "  - {topic: n/d2, payload: '7', expect: [{device_id: d2, metrics: {v: 7}}]}\n",
        encoding="utf-8",
    )
    assert main(["test", str(f)]) == 0
    assert "2 passed, 0 failed" in capsys.readouterr().out


def test_a_file_without_tests_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No tests: section is exit 1 with a hint, not a silent pass."""
    f = tmp_path / "m.yaml"
    f.write_text(RULE, encoding="utf-8")
    assert main(["test", str(f)]) == 1
    assert "no tests" in capsys.readouterr().out


def test_a_typo_in_a_test_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tests are validated like rules: an unknown key exits 78 naming file, line and key."""
    f = tmp_path / "m.yaml"
    f.write_text(
        RULE + "tests:\n  - topic: p/d1\n    payload: '1'\n    expct: []\n", encoding="utf-8"
    )
    assert main(["test", str(f)]) == 78
    assert f"{f}:7: tests[0].expct: unknown key" in capsys.readouterr().err
