"""Template filters: what ``{tag|segment:.:-1}`` and ``{tag|re:^Line(\\d+):1}`` do to a value.

Each filter spec is compiled once, when the mapping loads (a bad one is a ``check`` error), into a
plain function from text to text. A filter that cannot find what it was asked for at run time (a
segment that does not exist, a pattern that does not match) raises :class:`FilterMiss`: the
template then fails as ``missing_field`` instead of building a half-made device id or metric name.
Pure code.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

Filter = Callable[[str], str]

_SLUG_OUT = re.compile(r"[^a-z0-9]+")
_INDEX = re.compile(r"-?\d+")
# A group reference ends an `re` filter: a number or a Python identifier.
_GROUP = re.compile(r"\d+|[A-Za-z_]\w*")
# Bounded cost: patterns are short, inputs are capped, and a quantified group that itself holds
# a quantifier ("(a+)+", "(\w*)*") — the shape that backtracks exponentially — is refused.
MAX_PATTERN = 200
MAX_INPUT = 1024
_INNERMOST_GROUP = re.compile(r"\(([^()]*)\)(\s*[+*?{])?")
_REPEAT = re.compile(r"[+*?}]")
# Escaped characters ("\+"), character classes ("[+-]") and group openers ("(?:", "(?P<n>") hold
# no repeat: they are folded away before looking for nested repeats.
_NOT_A_REPEAT = re.compile(r"\\.|\[\^?\]?[^\]]*\]|\(\?(?:P?<\w+>|<[=!]|[:=!>])")


class FilterMiss(ValueError):  # a run-time miss, not a program error
    """A filter found nothing to return (the template fails as ``missing_field``)."""


def _shown(value: str) -> str:
    # A dead letter's detail shows the value, but not all of a 64 kB topic level.
    return repr(value) if len(value) <= 60 else repr(value[:60]) + f"… ({len(value)} characters)"


def _slug(text: str) -> str:
    return _SLUG_OUT.sub("-", text.casefold()).strip("-")


SIMPLE: dict[str, Filter] = {
    "lower": str.lower,
    "upper": str.upper,
    "trim": str.strip,
    "slug": _slug,
}
FILTER_NAMES = (
    *SIMPLE,
    "replace:OLD:NEW",
    "segment:SEP:INDEX",
    "segment:SEP:FROM:TO",
    "re:PATTERN:GROUP",
)
_NAMES = (*SIMPLE, "replace", "segment", "re")


def split_filters(chain: str) -> list[str]:
    """Split ``a|re:(x|y):1|upper`` into filter specs.

    ``|`` separates filters, but a regular expression may use it for alternation: an ``re``
    filter runs up to the first ``:GROUP`` (a number or name) that ends a piece.
    """
    pieces = chain.split("|")
    specs: list[str] = []
    while pieces:
        spec = pieces.pop(0)
        if spec.strip().startswith("re:"):
            while pieces and not _ends_with_group(spec):
                spec += "|" + pieces.pop(0)
        specs.append(spec)
    return specs


def _ends_with_group(spec: str) -> bool:
    body = spec.strip()[3:]
    return ":" in body and _GROUP.fullmatch(body.rsplit(":", 1)[1]) is not None


def compile_filter(spec: str) -> Filter:
    """Compile one filter spec; raise ValueError naming the problem."""
    text = spec.strip()
    if text.startswith("re:"):
        return _regex(text[3:])
    name, *args = text.split(":")
    if name in SIMPLE and not args:
        return SIMPLE[name]
    if name == "replace" and len(args) == 2:
        old, new = args
        return lambda s: s.replace(old, new)
    if name == "segment":
        return _segment(text, args)
    if name in _NAMES:
        raise ValueError(f"template filter {spec!r}: write it as {_usage(name)}")
    raise ValueError(
        f"unknown template filter {spec!r}{_did_you_mean(name)}; filters: {', '.join(FILTER_NAMES)}"
    )


def _did_you_mean(name: str) -> str:
    # difflib here, not bridge.config.suggest: the mapping core stays free of pydantic.
    match = difflib.get_close_matches(name.lower(), _NAMES, n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _usage(name: str) -> str:
    return {
        "replace": "replace:OLD:NEW",
        "segment": "segment:SEP:INDEX or segment:SEP:FROM:TO",
        "re": "re:PATTERN:GROUP",
    }.get(name, name + " (it takes no arguments)")


def _segment(spec: str, args: list[str]) -> Filter:
    if len(args) not in (2, 3) or not args[0]:
        raise ValueError(f"template filter {spec!r}: write it as {_usage('segment')}")
    sep, *bounds = args
    if not all(b == "" or _INDEX.fullmatch(b) for b in bounds) or (
        bounds[0] == "" and len(bounds) == 1
    ):
        raise ValueError(f"template filter {spec!r}: INDEX, FROM and TO are whole numbers")
    if len(bounds) == 1:
        index = int(bounds[0])

        def one(value: str) -> str:
            parts = value.split(sep)
            if not -len(parts) <= index < len(parts):
                raise FilterMiss(f"{_shown(value)} has no segment {index} (split at {sep!r})")
            return parts[index]

        return one
    start, stop = (int(b) if b else None for b in bounds)

    def span(value: str) -> str:
        picked = value.split(sep)[start:stop]
        if not picked:
            raise FilterMiss(f"{_shown(value)} has no segments {start}:{stop} (split at {sep!r})")
        return sep.join(picked)

    return span


def _opener(m: re.Match[str]) -> str:
    return "(" if m[0].startswith("(") else "x"


def _nested_repeat(pattern: str) -> bool:
    """True if a repeated group holds a repeat, at any depth: groups are folded innermost first
    into one character, followed by a repeat when they held or had one."""
    text = _NOT_A_REPEAT.sub(_opener, pattern)
    while (m := _INNERMOST_GROUP.search(text)) is not None:
        inner = _REPEAT.search(m[1]) is not None
        if inner and m[2] is not None and m[2].strip() in "+*{":
            return True
        text = text[: m.start()] + ("x+" if inner or m[2] else "x") + text[m.end() :]
    return False


def _regex(body: str) -> Filter:
    pattern, _, group = body.rpartition(":")
    if not pattern or _GROUP.fullmatch(group) is None:
        raise ValueError(f"template filter 're:{body}': write it as {_usage('re')}")
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"template filter 're': the pattern is over {MAX_PATTERN} characters")
    if _nested_repeat(pattern):
        raise ValueError(
            f"template filter 're:{pattern}': a repeated group holds a repeat (like '(a+)+'); "
            "it can take exponential time, write it without the nesting"
        )
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"template filter 're:{pattern}': {exc}") from None
    ref: int | str = int(group) if group.isdigit() else group
    if isinstance(ref, int) and ref > compiled.groups:
        raise ValueError(f"template filter 're:{pattern}': no group {ref} in the pattern")
    if isinstance(ref, str) and ref not in compiled.groupindex:
        named = ", ".join(compiled.groupindex) or "none"
        raise ValueError(
            f"template filter 're:{pattern}': no group {ref!r} (named groups: {named})"
        )

    def search(value: str) -> str:
        if len(value) > MAX_INPUT:
            raise FilterMiss(f"value over {MAX_INPUT} characters for 're:{pattern}'")
        m = compiled.search(value)
        found = m.group(ref) if m is not None else None
        if found is None:
            raise FilterMiss(f"{_shown(value)} does not match 're:{pattern}' (group {ref})")
        return found

    return search
