""" "Did you mean …?" for an unknown key: the known key closest to what was written.

Only names are ever suggested (keys, setting names, variable names), never a value: a value
may be a token or a password.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``word`` (letter case ignored), or None if none is close."""
    by_folded: dict[str, str] = {}
    for name in candidates:
        by_folded.setdefault(name.lower(), name)
    folded = word.lower()
    if folded in by_folded:
        return by_folded[folded]
    match = difflib.get_close_matches(folded, list(by_folded), n=1, cutoff=0.6)
    return by_folded[match[0]] if match else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest candidate, or ``""``."""
    match = closest(word, candidates)
    return f"; did you mean '{match}'?" if match is not None and match != word else ""


def keys_at(model: type[BaseModel], loc: Iterable[str | int]) -> set[str]:
    """The keys (aliases where a field has one) that the models found at ``loc`` take:
    ``loc`` as pydantic reports it, list indexes, dict keys and union member names included."""
    found: list[Any] = [model]
    for part in loc:
        found = [t for kind in found for t in _step(kind, part)]
    return {
        info.alias or name
        for kind in found
        for member in _members(kind)
        if isinstance(member, type) and issubclass(member, BaseModel)
        for name, info in member.model_fields.items()
    }


def setting_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every setting of a settings model, as a key path (``('mqtt', 'tls', 'ca_file')``)."""
    out: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out.extend(setting_paths(kind, (*prefix, name)))
        else:
            out.append((*prefix, name))
    return out


def _members(kind: Any) -> list[Any]:
    origin = get_origin(kind)
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(kind) for m in _members(arg)]
    if origin is Annotated:
        return _members(get_args(kind)[0])
    return [kind]


def _step(kind: Any, part: str | int) -> list[Any]:
    out: list[Any] = []
    for member in _members(kind):
        if isinstance(member, type) and issubclass(member, BaseModel):
            if part == member.__name__:  # a union member's name in pydantic's location
                out.append(member)
                continue
            out.extend(
                info.annotation
                for name, info in member.model_fields.items()
                if part in (name, info.alias)
            )
        elif get_origin(member) is list and isinstance(part, int):
            out.append(get_args(member)[0])
        elif get_origin(member) is dict:
            out.append(get_args(member)[1])
    return out
