"""``expr:``: a small arithmetic expression over a metric's value ``x``, such as
``(x - 32) * 5 / 9``.

The text is parsed once, when the mapping file is loaded, with ``ast.parse(mode="eval")`` and
compiled into a tree of closures. Nothing of the user's text is ever run by ``eval``, ``exec``
or ``compile``: only the node kinds listed here are accepted — numbers, the name ``x``, the
operators ``+ - * / % **`` (unary ``-`` and ``+``) and the functions of :data:`FUNCTIONS`.
Everything is computed in floats (``**`` with :func:`math.pow`), so an evaluation costs a few
float operations however the expression is written: no big integers, no complex numbers, no
loops. The text is at most :data:`MAX_LENGTH` characters, :data:`MAX_NODES` nodes and
:data:`MAX_DEPTH` levels deep. Pure code.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import warnings
from collections.abc import Callable

MAX_LENGTH = 200
MAX_NODES = 80
MAX_DEPTH = 20

Compiled = Callable[[float], float]

# The functions an expression may call: name → (function, fewest args, most args).
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int]] = {
    "abs": (abs, 1, 1),
    "min": (min, 2, 4),
    "max": (max, 2, 4),
    "round": (round, 1, 2),  # the digits must be a whole number 0-12, written as such
    "sqrt": (math.sqrt, 1, 1),
    "exp": (math.exp, 1, 1),
    "log": (math.log, 1, 1),  # natural logarithm
    "log10": (math.log10, 1, 1),
}

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: math.pow,  # a float power: ValueError or OverflowError, never a complex or a bigint
}


class ExpressionError(ValueError):
    """The text is not an expression this module accepts; the message says what to write."""


# Errors an evaluation can raise: division by zero (ZeroDivisionError is an ArithmeticError),
# a math domain error (ValueError: sqrt(-1), log(0)) and an overflow (OverflowError).
EVAL_ERRORS = (ArithmeticError, ValueError)


def compile_expression(text: str) -> Compiled:
    """``text`` as a function of ``x``; ExpressionError with a message for a ``check`` error.

    The function raises one of :data:`EVAL_ERRORS` when the value cannot be computed (and may
    return ``inf`` or ``nan``: the caller checks the result is finite).
    """
    if not text.strip():
        raise ExpressionError("the expression is empty; write e.g. '(x - 32) * 5 / 9'")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        with warnings.catch_warnings():
            # Python warns about some valid-but-odd text (e.g. "1is 1"): a refusal follows anyway.
            warnings.simplefilter("ignore")
            tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise ExpressionError(f"not an expression{where}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):  # e.g. a NUL character
        raise ExpressionError("not an expression") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_NODES:
        raise ExpressionError(f"the expression has {nodes} parts; at most {MAX_NODES}")
    builder = _Builder()
    function = builder.build(tree.body, 1)
    if not builder.reads_x:
        raise ExpressionError("the expression never reads the value x: every point would be equal")
    return function


def _identity(x: float) -> float:
    return x


class _Builder:
    """Turns an accepted AST into closures, refusing every other node."""

    def __init__(self) -> None:
        self.reads_x = False

    def build(self, node: ast.expr, depth: int) -> Compiled:
        if depth > MAX_DEPTH:
            raise ExpressionError(f"the expression is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            if node.id == "x":
                self.reads_x = True
                return _identity
            raise ExpressionError(_unknown_name(node.id))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            inner = self.build(node.operand, depth + 1)
            if isinstance(node.op, ast.UAdd):
                return inner
            return lambda x: -inner(x)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return self._binary(node, depth)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        raise ExpressionError(_refused(node))

    def _constant(self, node: ast.Constant) -> Compiled:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ExpressionError(f"{value!r} is not a number; only numbers and x are values")
        try:
            number = float(value)
        except OverflowError:
            raise ExpressionError("a number in the expression is too large") from None
        if not math.isfinite(number):
            raise ExpressionError("a number in the expression is too large")
        return lambda x: number

    def _binary(self, node: ast.BinOp, depth: int) -> Compiled:
        op = _BINARY[type(node.op)]
        left = self.build(node.left, depth + 1)
        right = self.build(node.right, depth + 1)
        # The common shapes without a call per leaf: x OP c and f(x) OP c.
        if isinstance(node.right, ast.Constant):
            c = right(0.0)
            if left is _identity:
                return lambda x: op(x, c)
            return lambda x: op(left(x), c)
        return lambda x: op(left(x), right(x))

    def _call(self, node: ast.Call, depth: int) -> Compiled:
        if not isinstance(node.func, ast.Name):
            raise ExpressionError("only the functions " + ", ".join(FUNCTIONS) + " can be called")
        name = node.func.id
        if name not in FUNCTIONS:
            hint = difflib.get_close_matches(name, FUNCTIONS, n=1, cutoff=0.6)
            also = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ExpressionError(
                f"unknown function '{name}'{also} (known: {', '.join(FUNCTIONS)})"
            )
        if node.keywords:
            raise ExpressionError(f"{name}() takes no keyword arguments")
        function, fewest, most = FUNCTIONS[name]
        if not fewest <= len(node.args) <= most:
            count = str(fewest) if fewest == most else f"{fewest} to {most}"
            raise ExpressionError(f"{name}() takes {count} argument(s), not {len(node.args)}")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError(f"{name}() takes plain arguments")
        if name == "round":
            return self._round(node, depth)
        args = [self.build(a, depth + 1) for a in node.args]
        if len(args) == 1:
            (only,) = args
            return lambda x: function(only(x))
        return lambda x: function(*[a(x) for a in args])

    def _round(self, node: ast.Call, depth: int) -> Compiled:
        inner = self.build(node.args[0], depth + 1)
        digits = 0
        if len(node.args) == 2:
            given = node.args[1]
            if not (
                isinstance(given, ast.Constant)
                and type(given.value) is int
                and 0 <= given.value <= 12
            ):
                raise ExpressionError("round(value, digits): digits is a whole number 0-12")
            digits = given.value
        return lambda x: float(round(inner(x), digits))


def _unknown_name(name: str) -> str:
    hint = difflib.get_close_matches(name, FUNCTIONS, n=1, cutoff=0.75)
    if hint:
        return f"unknown name '{name}'; did you mean '{hint[0]}(…)'? (the value is x)"
    return f"unknown name '{name}'; did you mean 'x'? (the value is x; no other names)"


def _refused(node: ast.AST) -> str:
    if isinstance(node, ast.BinOp):
        return "only the operators + - * / % ** are allowed"
    if isinstance(node, ast.UnaryOp):
        return "only the signs - and + are allowed before a value"
    if isinstance(node, ast.Compare | ast.BoolOp | ast.IfExp):
        return "comparisons and conditions are not allowed; use min() and max() to bound"
    return f"{type(node).__name__.lower()} is not allowed; only numbers, x, operators and calls"
