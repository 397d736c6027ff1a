"""Safe YAML loading that remembers where each key was written.

Configuration errors must name file, line and key path, so loading keeps a map from key path to
line number. Aliases are refused outright: they are the vehicle of "billion laughs"
expansion bombs and no mapping file needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bridge.config.pathnames import NamedBy, about_path
from bridge.errors import ConfigError

KeyPath = tuple[str | int, ...]
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


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


def load_yaml_text(text: str, name: str) -> tuple[Any, LineIndex]:
    """Parse YAML text with the safe loader; see module docstring for what is refused."""
    index = LineIndex(name)
    try:
        _check_events(text, name)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
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
    if node is None:
        return None, index
    return _build(node, (), index, set()), index


def _check_events(text: str, name: str) -> None:
    """Refuse aliases (naming the line and key that use one) and nesting deep enough to exhaust
    the composer's recursion, before building anything."""
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

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
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


def _build(node: yaml.Node, path: KeyPath, index: LineIndex, seen: set[int]) -> Any:
    index.add(path, node.start_mark.line + 1)
    if id(node) in seen:
        raise index.error(path, "YAML aliases (*name) are not allowed")
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
        raise index.error(path, f"YAML tag {node.tag!r} is not allowed")
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise index.error(path, "YAML merge keys (<<) are not allowed")
            key = _scalar(key_node, path, index)
            if not isinstance(key, str | int):
                raise index.error(path, "mapping keys must be strings")
            if key in result:
                raise ConfigError(
                    "duplicate key",
                    file=index.file,
                    line=key_node.start_mark.line + 1,
                    key=format_path((*path, key)),
                )
            index.add((*path, key), key_node.start_mark.line + 1)
            result[key] = _build(value_node, (*path, key), index, seen)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), index, seen) for i, item in enumerate(node.value)]
    return _scalar(node, path, index)


def _scalar(node: yaml.Node, path: KeyPath, index: LineIndex) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise index.error(path, "complex mapping keys are not allowed")
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise index.error(path, f"unsupported YAML value: {exc.problem}") from None
