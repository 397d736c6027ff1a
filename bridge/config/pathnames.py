"""How an error names a path the user gave, without ever echoing a secret set by mistake.

A token or password pasted into a path setting (``METRIQO_BRIDGE_TOKEN_FILE=mqk_live_…``) used
to come back as ``mqk_live_…: token file not found``, in a terminal, a journal or a log
collector. So an error shows a path setting's value only when the value cannot be a secret:

- it is the built-in default (it comes from the code, not from the user); or
- it names a place that exists on this machine: the file itself, or — for a value with a
  directory part — that directory (other than ``/`` or ``.``), so a typo in the file name is
  still shown (``file not found: /etc/metriqo/tokn``).

A token or password names neither, so it is never shown; the error then says which setting
it is and where it was set (file and line, variable, flag) instead. And a value shaped like a
Metriqo API token (``mqk_…``) is never shown at all: :func:`looks_like_token` lets the loader
refuse it as the token put in the wrong place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULTS = "defaults"  # the origin of a value nobody set (bridge.config.loader)

NOT_SHOWN = (
    "(the value is not shown: it names no existing file or directory, so it could be a "
    "token or password set here by mistake)"
)

# The API's tokens: mqk_live_…, mqk_test_… (docs: the Metriqo API contract), perhaps with the
# "Bearer " of a copied header in front. A file name has a dot or a slash, or no second "_".
_TOKEN = re.compile(r"\s*(?:Bearer\s+)?mqk_[A-Za-z0-9]+_[A-Za-z0-9_-]{6,}\s*")


def looks_like_token(value: str | Path) -> bool:
    """True for a value shaped like a Metriqo API token: never a path anyone means."""
    return _TOKEN.fullmatch(str(value)) is not None


def shown_path(value: str | Path, origin: str) -> str | None:
    """``value`` as an error may show it, or None when it must not be shown (see the module
    docstring for the rule)."""
    text = str(value)
    if looks_like_token(text) or not text.isprintable():
        return None
    if origin == DEFAULTS:
        return text
    if os.path.lexists(text):
        return text
    head = os.path.dirname(text)
    if head and Path(head) not in (Path("/"), Path(".")) and os.path.isdir(head):
        return text
    return None


def about_path(problem: str, value: str | Path, origin: str) -> str:
    """``problem: value``, or ``problem`` and why the value is not shown."""
    shown = shown_path(value, origin)
    return f"{problem}: {shown}" if shown is not None else f"{problem} {NOT_SHOWN}"


@dataclass(frozen=True, slots=True)
class NamedBy:
    """The setting that gave a path (``mapping.file``; empty for the settings file itself) and
    where it was set (``bridge.yaml:4``, ``environment variable METRIQO_BRIDGE_CONFIG``)."""

    origin: str
    key: str = ""

    @classmethod
    def setting(cls, origins: Mapping[str, str], key: str) -> NamedBy:
        """``key`` as the loader recorded where it was set (the defaults if nowhere)."""
        return cls(origins.get(key, DEFAULTS), key)
