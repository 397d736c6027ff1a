"""Safe YAML loading that remembers where each key was written.

Configuration errors must name file, line and key path, so loading keeps a map from key path to
line number. Aliases are refused outright: they are the vehicle of "billion laughs"
expansion bombs and no mapping file needs them.
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
from yaml.resolver import Resolver

from bridge.config.pathnames import NamedBy, about_path
from bridge.errors import ConfigError

KeyPath = tuple[str | int, ...]
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
# libyaml's parser where PyYAML has it (its wheels do): the same events and nodes as the pure
# Python one, several times faster, which a mapping file of 20,000 rules needs. Its error
# messages are worded differently, so a file it refuses is parsed again by the pure Python
# parser, whose messages (and lines) the documentation shows.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineIndex:
    """Key path → 1-based line number in the source file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._lines: dict[KeyPath, int] = {}

    def add(self, path: KeyPath, line: int) -> None:
        self._lines.setdefault(path, line)

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the longest known prefix of ``path``."""
        for cut in range(len(path), -1, -1):
            line = self._lines.get(path[:cut])
            if line is not None:
                return line
        return None

    def error(self, path: KeyPath, message: str) -> ConfigError:
        """A ConfigError pointing at ``path``."""
        return ConfigError(message, file=self.file, line=self.line_of(path), key=format_path(path))


def format_path(path: KeyPath) -> str:
    """``('rules', 0, 'metrics')`` → ``rules[0].metrics``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_yaml_file(path: Path, named_by: NamedBy | None = None) -> tuple[Any, LineIndex]:
    """Read and parse ``path``; raise ConfigError naming the file for any problem.

    ``named_by``: the setting that gave the path. A file that cannot be opened is then reported
    as that setting's error (where it was set, the key), and its path only if it cannot be a
    secret set by mistake (:mod:`bridge.config.pathnames`).
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
    return load_yaml_text(text, name)


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


def load_yaml_text(text: str, name: str) -> tuple[Any, LineIndex]:
    """Parse YAML text with the safe loader; see module docstring for what is refused."""
    with _cycle_collector_paused():
        return _load_yaml_text(text, name)


def _load_yaml_text(text: str, name: str) -> tuple[Any, LineIndex]:
    index = LineIndex(name)
    try:
        try:
            _check_events(text, name, _FAST_LOADER)
        except yaml.YAMLError:
            _check_events(text, name, yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context_mark is not None and exc.problem and "end of stream" in exc.problem:
            # Something left open (a quote, a bracket) runs to the end of the file: the useful
            # place is where it was opened, e.g. "while scanning a quoted scalar" on line 5.
            mark = exc.context_mark
            problem = f"{exc.context}: {exc.problem}" if exc.context else exc.problem
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"YAML syntax error: {problem}", file=name, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=name) from None
    return _build(text, index), index


def _check_events(text: str, name: str, loader: Any) -> None:
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
            raise ConfigError(
                "YAML aliases (*name) are not allowed", file=name, line=line, key=where
            )
        if isinstance(event, yaml.ScalarEvent):
            if is_key:
                stack[-1][1] = False
                stack[-1][2] = event.value
            else:
                after_value()
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise ConfigError(f"nesting deeper than {MAX_DEPTH} levels", file=name, line=line)
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
    """What ``yaml.compose`` and the safe constructor do, event by event, refusing tags other
    than the plain ones, merge keys, complex and duplicate keys; every value's line indexed."""

    def __init__(self, index: LineIndex) -> None:
        self.index = index
        self.resolver = Resolver()
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
            line = event.start_mark.line + 1 if event.start_mark else 0
            top = stack[-1] if stack else None
            if top is not None and isinstance(top.value, dict) and top.key is _NO_KEY:
                top.key = self._key(event, top, line)
                continue
            path: KeyPath = ()
            if top is not None:
                path = (*top.path, top.key if isinstance(top.value, dict) else len(top.value))
            self.index.add(path, line)
            if isinstance(event, yaml.ScalarEvent):
                put(self._scalar(event, path))
                continue
            mapping = isinstance(event, yaml.MappingStartEvent)
            tag = self._tag(event, yaml.MappingNode if mapping else yaml.SequenceNode, None)
            if tag not in _PLAIN_TAGS:
                raise self.index.error(path, f"YAML tag {tag!r} is not allowed")
            stack.append(_Open({} if mapping else [], path))
        return root[0]

    def _tag(self, event: Any, kind: type[yaml.Node], value: str | None) -> str:
        if event.tag is not None and event.tag != "!":
            return str(event.tag)
        return str(self.resolver.resolve(kind, value, event.implicit))  # type: ignore[no-untyped-call]

    def _key(self, event: yaml.Event, top: _Open, line: int) -> Any:
        if not isinstance(event, yaml.ScalarEvent):
            raise self.index.error(top.path, "complex mapping keys are not allowed")
        if self._tag(event, yaml.ScalarNode, event.value) == _MERGE:
            raise self.index.error(top.path, "YAML merge keys (<<) are not allowed")
        key = self._scalar(event, top.path)
        if not isinstance(key, str | int):
            raise self.index.error(top.path, "mapping keys must be strings")
        if key in top.value:
            raise ConfigError(
                "duplicate key", file=self.index.file, line=line, key=format_path((*top.path, key))
            )
        self.index.add((*top.path, key), line)
        return key

    def _scalar(self, event: yaml.ScalarEvent, path: KeyPath) -> Any:
        tag = self._tag(event, yaml.ScalarNode, event.value)
        node = yaml.ScalarNode(tag, event.value, style=event.style)
        try:
            return self.ctor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise self.index.error(path, f"unsupported YAML value: {exc.problem}") from None
        finally:
            self.ctor.constructed_objects.clear()  # keyed by node: would keep all alive
