"""What a device id or a metric name may be: at most a configured number of characters, and none
of the characters that hide or disguise text. Pure code.

A device id and a metric name name a series in the API for good, and they are shown back to
people in dashboards, alerts, logs and ``dead-letters list``. The API contract states no limit,
so the bridge keeps both to what a person can read and compare:

- **length**: at most ``mapping.max_device_id_length`` / ``mapping.max_metric_name_length``
  characters (Unicode code points; 128 by default, at most
  :data:`~bridge.limits.MAX_IDENTIFIER_CHARS`);
- **control characters** (Unicode category Cc: C0 U+0000-U+001F, DEL U+007F, C1
  U+0080-U+009F): a newline or an ANSI escape in a name forges log lines and terminal output;
- **bidirectional controls** (the Bidi_Control property: U+061C, U+200E, U+200F,
  U+202A-U+202E, U+2066-U+2069): U+202E makes ``press-01\\u202e7-tset`` display as
  ``press-01test-7``, so two series would look alike and a name would read as another;
- **surrogates** (U+D800-U+DFFF): not characters; a body holding one cannot be encoded.

A message whose device id breaks a rule is dead-lettered as ``bad_device_id``; a metric name
that breaks one drops that metric only, as ``bad_metric_name`` (the message's other metrics are
delivered and the message is dead-lettered beside them, so the bad one stays visible).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from bridge.limits import MAX_IDENTIFIER_CHARS
from bridge.settings import MappingSettings

DEFAULT_MAX_CHARS = 128
_EXCERPT = 32
_FORBIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def forbidden_character(text: str) -> str | None:
    """The first forbidden character of ``text``, described (``U+202E RIGHT-TO-LEFT
    OVERRIDE``), or None."""
    m = _FORBIDDEN.search(text)
    if m is None:
        return None
    ch = m.group()
    kind = "a surrogate" if unicodedata.category(ch) == "Cs" else "a control character"
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, kind)})"


def excerpt(text: str) -> str:
    """``text`` quoted with its invisible characters escaped, cut to a readable length: what an
    error message may show of a name that can be 64,000 characters long."""
    if len(text) <= _EXCERPT:
        return repr(text)
    return f"{text[:_EXCERPT]!r}… ({len(text)} characters)"


def identifier_problem(text: str, what: str, max_chars: int) -> str | None:
    """Why ``text`` is not a usable ``what`` (``device id``, ``metric name``), or None."""
    if not text:
        return f"{what} is empty"
    if len(text) > max_chars:
        return f"{what} {excerpt(text)} is longer than {max_chars} characters"
    bad = forbidden_character(text)
    if bad is not None:
        return f"{what} {excerpt(text)} contains {bad}"
    return None


def literal_problem(
    parts: Iterable[str], what: str, max_chars: int, setting: str = ""
) -> str | None:
    """Why every ``what`` built from a template with these literal parts breaks the rules (a
    forbidden character in a literal, or literals alone longer than the limit, which is the
    value of ``setting``), or None."""
    literals = list(parts)
    for part in literals:
        bad = forbidden_character(part)
        if bad is not None:
            return f"{what} text {excerpt(part)} contains {bad}"
    total = sum(len(p) for p in literals)
    if total > max_chars:
        limit = f"{max_chars} ({setting})" if setting else str(max_chars)
        return f"{what} has {total} characters of fixed text, more than {limit}"
    return None


@dataclass(frozen=True, slots=True)
class IdentifierLimits:
    """The longest device id and metric name the bridge sends (characters)."""

    max_device_id: int = DEFAULT_MAX_CHARS
    max_metric_name: int = DEFAULT_MAX_CHARS

    def __post_init__(self) -> None:
        for value in (self.max_device_id, self.max_metric_name):
            if not 1 <= value <= MAX_IDENTIFIER_CHARS:
                raise ValueError(f"an identifier limit must be 1..{MAX_IDENTIFIER_CHARS}")

    @classmethod
    def of(cls, settings: MappingSettings) -> IdentifierLimits:
        """The limits the settings give."""
        return cls(settings.max_device_id_length, settings.max_metric_name_length)

    def device_id_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be sent as a device id, or None."""
        return identifier_problem(text, "device id", self.max_device_id)

    def metric_name_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be sent as a metric name, or None."""
        return identifier_problem(text, "metric name", self.max_metric_name)


_KNOWN_GOOD_CAP = 10_000  # names remembered per kind; a new topic per message stays bounded


class CheckedIdentifiers:
    """The checks of :class:`IdentifierLimits`, each good name checked once: plants send the
    same device ids and metric names again and again. A bad one is checked every time (it is
    dead-lettered every time); the names remembered are cleared when they fill."""

    def __init__(self, limits: IdentifierLimits) -> None:
        self.limits = limits
        self._devices: set[str] = set()
        self._metrics: set[str] = set()

    def device_id_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be sent as a device id, or None."""
        if text in self._devices:
            return None
        problem = self.limits.device_id_problem(text)
        if problem is None:
            _remember(self._devices, text)
        return problem

    def metric_name_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be sent as a metric name, or None."""
        if text in self._metrics:
            return None
        problem = self.limits.metric_name_problem(text)
        if problem is None:
            _remember(self._metrics, text)
        return problem

    def known_metric_names(self, names: Iterable[str]) -> bool:
        """True if every one of ``names`` passed its check before."""
        return self._metrics.issuperset(names)


def _remember(good: set[str], name: str) -> None:
    if len(good) >= _KNOWN_GOOD_CAP:
        good.clear()
    good.add(name)
