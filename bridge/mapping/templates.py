"""Templates for device ids and metric names: literal text, topic captures and payload fields,
each with optional filters: ``{site|lower}-{$meta.serial|slug}``. Pure code."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bridge.config.suggest import did_you_mean
from bridge.errors import PayloadError
from bridge.mapping.filters import Filter, FilterMiss, compile_filter, split_filters
from bridge.mapping.readings import MISSING, get_path, split_path

_PART = re.compile(r"\{([^{}]*)\}|([^{}]+)|([{}])")


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of a template: literal text, a capture, or a payload field path."""

    kind: str  # "text" | "capture" | "field"
    value: str
    filters: tuple[Filter, ...] = ()
    path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template."""

    text: str
    parts: tuple[Part, ...]

    @property
    def uses_payload(self) -> bool:
        """True if any part reads a payload field."""
        return any(p.kind == "field" for p in self.parts)

    @property
    def literals(self) -> list[str]:
        """The fixed text parts (what a rule's author wrote, checked against the limits)."""
        return [p.value for p in self.parts if p.kind == "text"]

    def render(self, captures: dict[str, str], doc: object = None) -> str:
        """Fill in captures and payload fields.

        Raises:
            PayloadError: ``missing_field`` when a payload field is absent (or not a scalar):
                a half-built device id or metric name would write to the wrong series.
        """
        out = []
        for p in self.parts:
            if p.kind == "text":
                out.append(p.value)
                continue
            if p.kind == "capture":
                value = captures.get(p.value, "")
            else:
                found = _field(doc, p.path)
                if found is None:
                    raise PayloadError("missing_field", f"template {self.text!r}: no {p.value}")
                value = found
            try:
                for f in p.filters:
                    value = f(value)
            except FilterMiss as exc:
                raise PayloadError("missing_field", f"template {self.text!r}: {exc}") from None
            out.append(value)
        return "".join(out)


def _field(doc: object, path: tuple[str, ...]) -> str | None:
    cur = get_path(doc, path)
    if cur is MISSING or cur is None or isinstance(cur, dict | list):
        return None
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, float) and cur.is_integer():
        return str(int(cur))
    return str(cur)


def compile_template(text: str, captures: set[str], payload_fields: bool) -> Template:
    """Compile ``text``; raise ValueError naming the problem."""
    parts: list[Part] = []
    for m in _PART.finditer(text):
        inner, literal, stray = m.groups()
        if stray is not None:
            raise ValueError(_stray(stray, text))
        if literal is not None:
            parts.append(Part("text", literal))
            continue
        head, _, chain = inner.partition("|")
        filters = tuple(compile_filter(spec) for spec in split_filters(chain)) if chain else ()
        head = head.strip()
        if head.startswith("$"):
            if not payload_fields:
                raise ValueError(f"{{{head}}}: payload fields need a json payload")
            if not head[1:]:
                raise ValueError(f"{{{head}}}: empty field path")
            path = split_path(head[1:])
            parts.append(Part("field", head, filters, path))
        else:
            if head not in captures:
                known = ", ".join(sorted(captures)) or "none"
                hint = did_you_mean(head, captures)
                if not hint and payload_fields and head and "@" not in head:
                    hint = f"; a field is written {{${head}}}"
                raise ValueError(f"template uses {{{head}}} but the topic captures: {known}{hint}")
            parts.append(Part("capture", head, filters))
    return Template(text, tuple(parts))


def _stray(brace: str, text: str) -> str:
    hint = (
        "a '{' opens a placeholder, '{name}' or '{$field}', that is never closed"
        if brace == "{"
        else "a '}' with no placeholder open"
    )
    return f"unbalanced {brace!r} in template {text!r}: {hint}"


def literal_braces(text: str) -> str | None:
    """The problem with braces in ``text`` where templates are not allowed, or None.

    A prefix or a renamed name is taken as written; ``{measurement}_x`` there is almost always a
    template written in the wrong place, and would name a series with literal braces.
    """
    if "{" in text or "}" in text:
        return f"{text!r} holds '{{' or '}}': templates are not allowed here, the text is literal"
    return None
