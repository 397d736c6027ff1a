"""Safe YAML 1.2 loading that remembers where each key was written.

Configuration errors must name file, line, column and key path, so loading keeps a map from
key path to line and column, and the text for an excerpt of the line. Plain scalars are read
by the YAML 1.2 core schema (:mod:`bridge.config.yamlcore`: ``ON``/``off``/``yes`` are text).
Aliases are refused outright: they are the vehicle of "billion laughs" expansion bombs and no
mapping file needs them.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.composer import ComposerError
from yaml.constructor import SafeConstructor
from yaml.error import Mark

from bridge.config.excerpt import caret_excerpt, source_lines
from bridge.config.pathnames import NamedBy, about_path
from bridge.config.yamlcore import AmbiguousScalar, plain_scalar, yaml11_note
from bridge.errors import ConfigError

KeyPath = tuple[str | int, ...]
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_STR = "tag:yaml.org,2002:str"
# libyaml's parser where PyYAML has it (its wheels do): the same events and nodes as the pure
# Python one, several times faster, which a mapping file of 20,000 rules needs. Its error
# messages are worded differently, so a file it refuses is parsed again by the pure Python
# parser, whose messages (and lines) the documentation shows.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineIndex:
    """Key path → 1-based line and column in the source file, and the source for excerpts.

    ``masked``: excerpts show keys but no values (a settings file may hold secrets).
    ``notes``: key path → what YAML 1.1 made of a plain scalar that 1.2 reads as text, for the
    error of a field that wanted a boolean or a number there.
    """

    def __init__(self, file: str, text: str = "", *, masked: bool = False) -> None:
        self.file = file
        self.text = text
        self.masked = masked
        self.notes: dict[KeyPath, str] = {}
        self._lines: dict[KeyPath, int] = {}
        self._columns: dict[KeyPath, int] = {}
        self._source: list[str] | None = None

    def source_line(self, line: int) -> str:
        """The text of line ``line`` (1-based); empty if there is none."""
        if self._source is None:  # cut once: a file of 20,000 rules may have as many errors
            self._source = source_lines(self.text)
        return self._source[line - 1] if 1 <= line <= len(self._source) else ""

    def add(
        self, path: KeyPath, line: int, column: int | None = None, *, key: bool = False
    ) -> None:
        """Where ``path`` was written: its key's place (``key``) or its value's (a list item,
        the document). A key's column is kept negative, so that :meth:`column_of` can look
        for its value on the same line without a second map (20,000 rules index 300,000
        places)."""
        if path not in self._lines:
            self._lines[path] = line
            if column is not None:
                self._columns[path] = -column if key else column

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the longest known prefix of ``path``."""
        for cut in range(len(path), -1, -1):
            line = self._lines.get(path[:cut])
            if line is not None:
                return line
        return None

    def column_of(self, path: KeyPath, *, value: bool = True) -> int | None:
        """Column (1-based) of the longest known prefix of ``path``: of its value where that
        starts on the key's line (``value``), else of its key."""
        for cut in range(len(path), -1, -1):
            place = path[:cut]
            if place in self._lines:
                column = self._columns.get(place)
                if column is None or column > 0:
                    return column
                if value and cut == len(path):
                    return self._value_column(self._lines[place], -column) or -column
                return -column
        return None

    def _value_column(self, line: int, key_column: int) -> int | None:
        """Where the value of the key at ``line``:``key_column`` starts, if on that line."""
        text = self.source_line(line)
        i = key_column - 1
        if text[i : i + 1] in ("'", '"'):
            i = text.find(text[i], i + 1)
            if i < 0:
                return None
        while (i := text.find(":", i + 1)) >= 0:
            if text[i + 1 : i + 2] in ("", " ", "\t"):
                break
        if i < 0:
            return None
        rest = text[i + 1 :]
        start = len(text) - len(rest.lstrip())
        return start + 1 if start < len(text) and text[start] != "#" else None

    def at(self, line: int | None, column: int | None, message: str, key: str = "") -> ConfigError:
        """A ConfigError at a place in the file, with the excerpt of its line."""
        excerpt = (
            caret_excerpt(self.source_line(line), line, column, masked=self.masked) if line else ""
        )
        return ConfigError(
            message, file=self.file, line=line, key=key, column=column, excerpt=excerpt
        )

    def error(self, path: KeyPath, message: str, *, at_key: bool = False) -> ConfigError:
        """A ConfigError pointing at ``path``: at its value, or at its key (``at_key``)."""
        column = self.column_of(path, value=not at_key)
        return self.at(self.line_of(path), column, message, format_path(path))

    def source_at(self, path: KeyPath) -> str | None:
        """The plain scalar written at exactly ``path`` (None: not known, or not plain)."""
        if path not in self._lines:
            return None
        column = self.column_of(path)
        if column is None or column < 1:
            return None
        token = self.source_line(self._lines[path])[column - 1 :].split(" #", 1)[0]
        for stop in (",", "]", "}", ": "):
            token = token.split(stop, 1)[0]
        token = token.strip()
        return token if token and token[0] not in "'\"[{|>!&*" else None


def format_path(path: KeyPath) -> str:
    """``('rules', 0, 'metrics')`` → ``rules[0].metrics``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_yaml_file(
    path: Path, named_by: NamedBy | None = None, *, masked: bool = False
) -> tuple[Any, LineIndex]:
    """Read and parse ``path``; raise ConfigError naming the file for any problem.

    ``named_by``: the setting that gave the path. A file that cannot be opened is then reported
    as that setting's error (where it was set, the key), and its path only if it cannot be a
    secret set by mistake (:mod:`bridge.config.pathnames`). ``masked``: error excerpts show no
    values (a settings file).
    """
    name = str(path)

    def unopened(problem: str) -> ConfigError:
        if named_by is None:
            return ConfigError(problem, file=name)
        return ConfigError(
            about_path(problem, path, named_by.origin), file=named_by.origin, key=named_by.key
        )

    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise unopened("file not found") from None
    except PermissionError:
        raise unopened("file is not readable (permission denied)") from None
    except IsADirectoryError:
        raise unopened("is a directory, expected a YAML file") from None
    except OSError as exc:
        raise unopened(f"cannot read file ({exc.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"file is larger than {MAX_FILE_BYTES} bytes", file=name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=name) from None
    return load_yaml_text(text, name, masked=masked)


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Parsing creates hundreds of thousands of objects that all live on, and no reference
    cycles; the cycle collector would walk them again and again as they pile up (measured: it
    doubled to tripled the time to load a mapping file of 20,000 rules)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_yaml_text(text: str, name: str, *, masked: bool = False) -> tuple[Any, LineIndex]:
    """Parse YAML text with the safe loader; see module docstring for what is refused."""
    with _cycle_collector_paused():
        return _load_yaml_text(text, name, masked)


def _load_yaml_text(text: str, name: str, masked: bool) -> tuple[Any, LineIndex]:
    index = LineIndex(name, text, masked=masked)
    try:
        try:
            _check_events(text, name, _FAST_LOADER, masked)
        except yaml.YAMLError:
            _check_events(text, name, yaml.SafeLoader, masked)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context_mark is not None and exc.problem and "end of stream" in exc.problem:
            # Something left open (a quote, a bracket) runs to the end of the file: the useful
            # place is where it was opened, e.g. "while scanning a quoted scalar" on line 5.
            mark = exc.context_mark
            problem = f"{exc.context}: {exc.problem}" if exc.context else exc.problem
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        message = f"YAML syntax error: {problem}{_syntax_hint(problem)}"
        raise index.at(line, column, message) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=name) from None
    return _build(text, index), index


def _syntax_hint(problem: str) -> str:
    """A sentence on the usual cause of a parser's complaint."""
    if "unknown escape character" in problem:
        return (
            "; in double quotes a backslash starts an escape: use single quotes ('^\\d+$') "
            'or double the backslash ("^\\\\d+$") for a regular expression'
        )
    if "found character '\\t'" in problem:
        return "; indent with spaces: YAML does not allow tabs there"
    if "expected <block end>" in problem or "mapping values are not allowed" in problem:
        return (
            "; check the indentation of this line against the lines above, and quote a value "
            "that holds ': ' or starts with a character such as '*', '&', '?', '@'"
        )
    return ""


def _excerpt(text: str, line: int | None, column: int | None, masked: bool) -> str:
    """The excerpt for the one error found while checking events."""
    lines = source_lines(text)
    if not line or line > len(lines):
        return ""
    return caret_excerpt(lines[line - 1], line, column, masked=masked)


def _check_events(text: str, name: str, loader: Any, masked: bool) -> None:
    """Refuse aliases (naming the line and key that use one), nesting deeper than
    ``MAX_DEPTH`` and a second document, and raise every syntax error, before building
    anything: these come first, in the order of the file, then what the build refuses."""
    # One frame per open collection: [is_mapping, expecting_key, key or index, path]
    stack: list[list[Any]] = []

    def value_path() -> KeyPath:
        if not stack:
            return ()
        frame = stack[-1]
        return (*frame[3], frame[2])

    def after_value() -> None:
        if stack:
            frame = stack[-1]
            if frame[0]:
                frame[1] = True
            else:
                frame[2] += 1

    first_document: Any = None
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.DocumentStartEvent):
            if first_document is not None:  # what yaml.compose() says of a second document
                raise ComposerError(
                    "expected a single document in the stream",
                    first_document,
                    "but found another document",
                    cast(Mark, event.start_mark),
                )
            first_document = event.start_mark
            continue
        line = event.start_mark.line + 1 if event.start_mark else None
        is_key = bool(stack) and stack[-1][0] and stack[-1][1]
        if isinstance(event, yaml.AliasEvent):
            where = format_path(value_path()) if not is_key else format_path(stack[-1][3])
            column = event.start_mark.column + 1 if event.start_mark else None
            raise ConfigError(
                "YAML aliases (*name) are not allowed",
                file=name,
                line=line,
                key=where,
                column=column,
                excerpt=_excerpt(text, line, column, masked),
            )
        if isinstance(event, yaml.ScalarEvent):
            if is_key:
                stack[-1][1] = False
                stack[-1][2] = event.value
            else:
                after_value()
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                column = event.start_mark.column + 1 if event.start_mark else None
                raise ConfigError(
                    f"nesting deeper than {MAX_DEPTH} levels",
                    file=name,
                    line=line,
                    column=column,
                    excerpt=_excerpt(text, line, column, masked),
                )
            path = value_path() if not is_key else stack[-1][3]
            if is_key:
                stack[-1][1] = False
                stack[-1][2] = "?"
            stack.append([isinstance(event, yaml.MappingStartEvent), True, 0, path])
        elif isinstance(event, yaml.CollectionEndEvent):
            stack.pop()
            after_value()


class _Open:
    """A mapping or list being built, where it is, and (in a mapping) the key of the value to
    come."""

    __slots__ = ("key", "path", "value")

    def __init__(self, value: dict[Any, Any] | list[Any], path: KeyPath) -> None:
        self.value = value
        self.path = path
        self.key: Any = _NO_KEY


_NO_KEY: Any = object()
_MERGE = "tag:yaml.org,2002:merge"


def _build(text: str, index: LineIndex) -> Any:
    """The document's values, built from the parser's events as they come, which holds much
    less in memory than a tree of nodes would: for a text :func:`_check_events` accepted."""
    return _Builder(index).build(text)


class _Builder:
    """What ``yaml.compose`` and a YAML 1.2 core schema constructor do, event by event,
    refusing tags other than the plain ones, merge keys, complex and duplicate keys; every
    value's line and column indexed."""

    def __init__(self, index: LineIndex) -> None:
        self.index = index
        self.ctor = SafeConstructor()

    def build(self, text: str) -> Any:
        stack: list[_Open] = []
        root: list[Any] = [None]

        def put(value: Any) -> None:
            if not stack:
                root[0] = value
            elif isinstance(top := stack[-1].value, dict):
                top[stack[-1].key] = value
                stack[-1].key = _NO_KEY
            else:
                top.append(value)

        for event in yaml.parse(text, Loader=_FAST_LOADER):
            if isinstance(event, yaml.CollectionEndEvent):
                put(stack.pop().value)
                continue
            if not isinstance(event, yaml.ScalarEvent | yaml.CollectionStartEvent):
                continue
            mark = event.start_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (0, None)
            top = stack[-1] if stack else None
            if top is not None and isinstance(top.value, dict) and top.key is _NO_KEY:
                top.key = self._key(event, top, line, column)
                continue
            path: KeyPath = ()
            if top is not None:
                path = (*top.path, top.key if isinstance(top.value, dict) else len(top.value))
            self.index.add(path, line, column)
            if isinstance(event, yaml.ScalarEvent):
                put(self._scalar(event, path, line, column))
                continue
            mapping = isinstance(event, yaml.MappingStartEvent)
            if event.tag is not None and event.tag != "!" and event.tag not in _PLAIN_TAGS:
                raise self.index.error(path, f"YAML tag {event.tag!r} is not allowed")
            stack.append(_Open({} if mapping else [], path))
        return root[0]

    def _key(self, event: yaml.Event, top: _Open, line: int, column: int | None) -> Any:
        if not isinstance(event, yaml.ScalarEvent):
            raise self.index.error(top.path, "complex mapping keys are not allowed")
        if (event.value == "<<" and event.style is None) or event.tag == _MERGE:
            raise self.index.at(
                line, column, "YAML merge keys (<<) are not allowed", format_path(top.path)
            )
        key = self._scalar(event, top.path, line, column)
        self.index.notes.pop(top.path, None)  # a key is text either way
        if not isinstance(key, str | int) or isinstance(key, bool):
            raise self.index.at(
                line,
                column,
                f"mapping keys must be text; write '{event.value}' in quotes",
                format_path(top.path),
            )
        if key in top.value:
            raise self.index.at(line, column, "duplicate key", format_path((*top.path, key)))
        self.index.add((*top.path, key), line, column, key=True)
        return key

    def _scalar(
        self,
        event: yaml.ScalarEvent,
        path: KeyPath,
        line: int | None = None,
        column: int | None = None,
    ) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            if not event.implicit[0]:  # quoted, or a block scalar: text
                return event.value
            try:
                value = plain_scalar(event.value)
            except AmbiguousScalar as exc:
                # A settings file's value may be a password: the message then names no value.
                problem = exc.without_value if self.index.masked else str(exc)
                raise self.index.at(line, column, problem, format_path(path)) from None
            if value.__class__ is str and (note := yaml11_note(value)) is not None:
                self.index.notes[path] = note
            return value
        if tag == _STR:
            return event.value
        node = yaml.ScalarNode(tag, event.value, style=event.style)
        try:
            return self.ctor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise self.index.error(path, f"unsupported YAML value: {exc.problem}") from None
        finally:
            self.ctor.constructed_objects.clear()  # keyed by node: would keep all alive
