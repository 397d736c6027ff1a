"""Properties of the conversion steps (issue 16, item 4), on rules compiled from mapping text:
a linear map and its reverse give the value back, its ends map exactly, an expression computes
what Python computes for the same text, no name but ``x`` is ever accepted, and any text either
compiles or is refused with a clean error."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from bridge.errors import PayloadError
from bridge.mapping.expressions import EVAL_ERRORS, FUNCTIONS, ExpressionError
from bridge.mapping.expressions import compile_expression as compile_expr
from bridge.mapping.loader import load_mappings_text
from bridge.mapping.transforms import Transform

_PROPS = settings(max_examples=300, derandomize=True, database=None, deadline=None)
_EPS = 2.0**-52

TEXT = """version: 1
rules:
  - name: r
    topic: "t/{d}"
    device_id: "{d}"
    metrics:
      v: {path: v, STEP}
"""


def compiled(step: str) -> Transform:
    """The transform of one metric, compiled from mapping-file text as the bridge loads it."""
    [rule] = load_mappings_text(TEXT.replace("STEP", step), "p.yaml")
    return rule.transforms[0]


def linear_of(source: list[float], target: list[float]) -> Transform:
    return compiled(f"linear: {{from: {json.dumps(source)}, to: {json.dumps(target)}}}")


_COORD = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


def _spans(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    f0, f1, t0, t1 = draw(_COORD), draw(_COORD), draw(_COORD), draw(_COORD)
    assume(abs(f1 - f0) > 1e-3 and abs(t1 - t0) > 1e-3)
    return [f0, f1], [t0, t1]


spans = st.composite(_spans)


@_PROPS
@given(spans(), _COORD)
@example(([4.0, 20.0], [0.0, 10.0]), 3.2)
@example(([32.0, 212.0], [0.0, 100.0]), 98.6)
def test_a_linear_map_and_its_reverse_give_the_value_back(
    pair: tuple[list[float], list[float]], x: float
) -> None:
    source, target = pair
    there = linear_of(source, target).apply("v", x)
    back = linear_of(target, source).apply("v", there)
    # The error of two interpolations, scaled by how much of the target span the rounding of
    # the target's magnitude can eat (the condition of the reverse map).
    size = abs(x) + abs(source[0]) + abs(source[1])
    condition = 1 + (abs(target[0]) + abs(target[1])) / abs(target[1] - target[0])
    assert math.isclose(back, x, rel_tol=0, abs_tol=16 * _EPS * size * condition)


@_PROPS
@given(spans())
@example(([4.0, 20.0], [0.0, 10.0]))
@example(([0.1, 0.3], [0.7, 0.1]))
def test_the_ends_of_a_linear_map_are_exact(pair: tuple[list[float], list[float]]) -> None:
    source, target = pair
    transform = linear_of(source, target)
    assert transform.apply("v", source[0]) == target[0]
    assert transform.apply("v", source[1]) == target[1]


@_PROPS
@given(spans(), st.floats(0, 1))
def test_a_linear_map_keeps_the_span_in_order(
    pair: tuple[list[float], list[float]], fraction: float
) -> None:
    """A raw value inside ``from`` lands inside ``to`` (the line has no overshoot)."""
    source, target = pair
    x = source[0] + fraction * (source[1] - source[0])
    y = linear_of(source, target).apply("v", x)
    assert min(target) <= y <= max(target)


# --- expressions against Python --------------------------------------------------------------

_CONSTANT = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False).map(repr)
_LEAF = st.one_of(st.just("x"), st.just("x"), _CONSTANT)
_ONE_ARG = st.sampled_from(["abs", "sqrt", "exp", "log", "log10", "round"])


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%", "**"]), inner).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}"
    )
    return st.one_of(
        binary,
        binary.map(lambda s: f"({s})"),
        inner.map(lambda s: f"-{s}"),
        st.tuples(_ONE_ARG, inner).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(["min", "max"]), st.lists(inner, min_size=2, max_size=4)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"
        ),
        st.tuples(inner, st.integers(0, 12)).map(lambda t: f"round({t[0]}, {t[1]})"),
    )


expressions = st.recursive(_LEAF, _grow, max_leaves=8)


def _no_complex_abs(v: object) -> float:
    if isinstance(v, complex):
        raise ValueError("complex")  # Python's ** went complex where math.pow refuses
    return abs(v)  # type: ignore[arg-type]


# The reference: Python itself on the same text, with the functions the docs name. round gives
# a float as the bridge's does (the value is a float either way).
_REFERENCE = {
    "__builtins__": {},
    "abs": _no_complex_abs,
    "min": min,
    "max": max,
    "round": lambda v, n=0: float(round(v, n)),
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
}


def _python(text: str, x: float) -> float | None:
    """What Python makes of ``text``; None where it fails (or goes complex)."""
    try:
        got = eval(text, dict(_REFERENCE), {"x": x})  # noqa: S307  # the test's oracle, on generated text
    except (ArithmeticError, ValueError, TypeError):
        return None
    return None if isinstance(got, complex) else float(got)


@_PROPS
@given(expressions, st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False))
@example("(x - 32.0) * 5.0 / 9.0", 98.6)
@example("-x ** 2.0", 3.0)
@example("x ** 2.0 ** 3.0", 1.5)
@example("10.0 - 4.0 - x % 3.0", 7.5)
@example("x ** 0.5", -4.0)
def test_an_expression_computes_what_python_computes(text: str, x: float) -> None:
    try:
        function = compile_expr(text)
    except ExpressionError as exc:  # every construct generated here is allowed: only the size
        refused = str(exc)
    else:
        refused = ""
    if refused:
        assert any(w in refused for w in ("longer", "at most", "nested", "never reads")), refused
        assume(False)
    want = _python(text, x)
    try:
        got = function(x)
    except EVAL_ERRORS:
        assert want is None or not math.isfinite(want), (text, x, want)
        return
    if want is None:
        assert not math.isfinite(got), (text, x, got)  # Python refused an overflow we carried
    elif math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want, (text, x)


def test_the_reference_catches_a_wrong_operator() -> None:
    """The oracle above can fail: it tells ``x - 1`` from a compiler that would add."""
    assert _python("x - 1.0", 5.0) == 4.0
    assert compile_expr("x - 1.0")(5.0) == 4.0
    assert compile_expr("2.0 + 3.0 * x")(2.0) == _python("2.0 + 3.0 * x", 2.0) == 8.0


# --- names and fuzzing -----------------------------------------------------------------------


@_PROPS
@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True))
@example("y")
@example("X")
@example("__builtins__")
@example("os")
@example("True")
def test_no_name_but_x_is_accepted(name: str) -> None:
    """Any other name is refused when the file is loaded, as a value or as a function to call
    (the functions are the fixed list; their names are not values)."""
    assume(name != "x")
    for text in (f"{name} + x", f"x * ({name})"):
        try:
            compile_expr(text)
        except ExpressionError:
            pass
        else:
            raise AssertionError(f"{text!r} compiled")
    if name not in FUNCTIONS:
        try:
            compile_expr(f"{name}(x)")
        except ExpressionError:
            pass
        else:
            raise AssertionError(f"{name}(x) compiled")


_EXPR_CHARS = "x0123456789.e+-*/%() ,abcdgilmnoqrstuwy_'\"[]{}<>=!:;@&|^~\\\n\t"


@_PROPS
@given(
    st.one_of(st.text(max_size=240), st.text(alphabet=_EXPR_CHARS, max_size=60)),
    st.floats(allow_nan=False, allow_infinity=False),
)
@example("(" * 150 + "x" + ")" * 150, 1.0)
@example("x\x00", 1.0)
@example("\ud800", 1.0)
@example("9" * 199 + "*x", 1.0)
@example("x" + "**x" * 60, 2.0)
def test_any_text_compiles_or_is_refused_cleanly(text: str, x: float) -> None:
    """Never another exception: a refusal is an ExpressionError (a check error), and a compiled
    expression gives a float or one of the errors the transform turns into conversion_failed."""
    try:
        function = compile_expr(text)
    except ExpressionError as exc:
        refused = str(exc)
    else:
        refused = ""
        with contextlib.suppress(*EVAL_ERRORS):
            assert isinstance(function(x), float)
    assert refused or function is not None


def test_a_failing_expression_is_a_payload_error_through_the_transform() -> None:
    transform = compiled('expr: "1 / x"')
    with pytest.raises(PayloadError) as info:
        transform.apply("v", 0.0)
    assert info.value.reason == "conversion_failed"
    assert "expr 1 / x fails for x = 0.0" in info.value.detail
