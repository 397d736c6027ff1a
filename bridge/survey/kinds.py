"""What a payload is, as the mapping language sees it: the ``payload`` form a rule would need."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import orjson

from bridge.errors import PayloadError
from bridge.mapping.transforms import parse_boolean

Kind = Literal["json", "json-other", "number", "boolean", "text", "binary", "empty"]

# The numbers a ``payload: number`` rule accepts (the mapper's own rule: no nan, inf or 1_000).
_NUMBER = re.compile(rb"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
MAX_FIELDS = 64  # numeric fields remembered per JSON shape
MAX_WORD = 32  # a text payload longer than this is free text, not a state word


@dataclass(frozen=True, slots=True)
class PayloadKind:
    """A payload's kind; for a JSON object its numeric leaf fields (dotted paths), for a text
    payload its word."""

    kind: Kind
    fields: tuple[str, ...] = ()
    word: str | None = None


def classify(payload: bytes) -> PayloadKind:
    """The kind of one payload."""
    if not payload.strip():
        return PayloadKind("empty")
    if _NUMBER.fullmatch(payload):
        return PayloadKind("number")
    try:
        parse_boolean(payload)
    except PayloadError:
        pass
    else:
        return PayloadKind("boolean")
    head = payload.lstrip()[:1]
    if head in (b"{", b"["):
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(doc, dict):
                return PayloadKind("json", tuple(numeric_fields(doc)))
            return PayloadKind("json-other")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return PayloadKind("binary")
    if any(ord(c) < 32 and c not in "\t\r\n" for c in text):
        return PayloadKind("binary")
    word = text.strip()
    return PayloadKind("text", word=word if len(word) <= MAX_WORD and "\n" not in word else None)


def numeric_fields(doc: dict[str, object], prefix: str = "") -> list[str]:
    """Dotted paths of the numeric leaves of a JSON object (at most :data:`MAX_FIELDS`)."""
    out: list[str] = []
    for key, value in doc.items():
        if len(out) >= MAX_FIELDS:
            break
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(numeric_fields(value, path + ".")[: MAX_FIELDS - len(out)])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append(path)
    return out
