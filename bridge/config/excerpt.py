"""The source line of a configuration error with a caret under the column, as compilers show it.

A settings file may hold a token or a password (``api.token: mqk_live_…``), so its excerpts
show the keys of the line but never its values: ``masked=True`` replaces everything after
``key:`` (or after a list's ``-``) with ``…``. A mapping file holds no secrets and is shown as
written.
"""

from __future__ import annotations

import re

_KEY = re.compile(r"(\s*(?:-\s+)*)([^\s\"'{}\[\],#:][^:#]*?:)(?=\s|$)")
_INDENT = re.compile(r"\s*(?:-(?:\s+|$))*")
MASK = "…"
_MAX_WIDTH = 160
_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def source_lines(text: str) -> list[str]:
    """``text`` cut at the line breaks PyYAML counts (so its line numbers index the list)."""
    return _BREAKS.split(text)


def caret_excerpt(source: str, line: int, column: int | None, *, masked: bool = False) -> str:
    """Line number ``line`` whose text is ``source`` and, when ``column`` (1-based) is known, a
    caret under it; empty for no line."""
    if line < 1:
        return ""
    source = source.expandtabs(1)  # one column per tab, as the parser counts
    if masked:
        source = _masked(source)
    if len(source) > _MAX_WIDTH:
        source = source[:_MAX_WIDTH] + " …"
    number = str(line)
    out = f"  {number} | {source}"
    if column is not None:
        col = min(max(column, 1), len(source) + 1)
        out += f"\n  {' ' * len(number)} | {' ' * (col - 1)}^ column {column}"
    return out


def _masked(source: str) -> str:
    """``  token: mqk_…`` → ``  token: …``: the structure of the line, none of its values."""
    match = _KEY.match(source)
    if match is not None:
        head = match.group(0)
        rest = source[len(head) :]
        return f"{head} {MASK}" if rest.strip() else head
    indent = _INDENT.match(source)
    head = indent.group(0) if indent else ""
    return f"{head}{MASK}" if source[len(head) :].strip() else source
