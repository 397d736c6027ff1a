"""pydantic's complaints about a mapping file, as ConfigErrors that say what to write instead.

Each error points at the line and column of the key or value (with an excerpt of the line), an
unknown key comes with the known key closest to it, and a value of the wrong type with the
usual cause: a number or ``true``/``null`` where text was meant (quote it), or a word that
YAML 1.1 read as a boolean (``yes``, ``on``) where a boolean is wanted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bridge.config.suggest import did_you_mean, keys_at
from bridge.config.yamlfile import KeyPath, LineIndex, format_path
from bridge.errors import ConfigError

# Union members appear in pydantic's location ("str", "MetricSpec"); they are not keys.
_UNION = frozenset(
    {"str", "constrained-str", "MetricSpec", "EachSpec", "list[str]", "bool", "int", "float"}
)
_KEY = "[key]"  # pydantic's location of a dict key that failed, after the key itself
_WANTS_TEXT = frozenset({"string_type"})
_WANTS_VALUE = frozenset(
    {"bool_type", "bool_parsing", "int_type", "int_parsing", "float_type", "float_parsing"}
)


def mapping_error(err: Any, index: LineIndex, model: type[BaseModel]) -> ConfigError:
    """One pydantic error (a dict of ``ValidationError.errors()``) on a file of ``model``."""
    raw: tuple[str | int, ...] = tuple(err["loc"])
    loc: KeyPath = tuple(p for p in raw if isinstance(p, int) or p not in _UNION)
    message = str(err["msg"])
    kind = err["type"]
    node = loc[:-1] if loc and loc[-1] == _KEY else loc
    if kind == "extra_forbidden":
        word = str(raw[-1])
        hint = did_you_mean(word, keys_at(model, raw[:-1]))
        message = f"unknown key{hint}" + (
            "" if hint else " (check the spelling; see docs/guide/mapping-file.md for the keys)"
        )
    elif kind in _WANTS_VALUE and node in index.notes:
        message = f"{message}; {index.notes[node]}"
    elif kind in _WANTS_TEXT:
        written = index.source_at(node)
        if written is not None:
            message = (
                f"{message}; YAML reads {written} as a {_what(written)}: write '{written}' in "
                "quotes for text"
            )
    return index.error(node, message, at_key=kind == "extra_forbidden")


def _what(written: str) -> str:
    if written.lower() in ("true", "false"):
        return "boolean"
    if written.lower() in ("null", "~"):
        return "null"
    return "number"


# Keys whose values may be text or a boolean/number alike, so that a word YAML 1.1 read as a
# boolean (``on``) is now accepted as text without an error: the one silent change of YAML 1.2.
_EITHER = frozenset({"where", "payload_json"})


def yaml11_warnings(index: LineIndex) -> list[str]:
    """``warning: FILE:LINE: key: …`` for each value that means text now where YAML 1.1 read a
    boolean or number, under a key that takes either (``readings.where``, ``payload_json``)."""
    return [
        f"warning: {index.file}:{index.line_of(path)}: {format_path(path)}: {note} if a JSON "
        "boolean or number is meant (it now matches text)"
        for path, note in index.notes.items()
        if any(part in _EITHER for part in path)
    ]
