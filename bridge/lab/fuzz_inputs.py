"""Inputs for the payload fuzzer (:mod:`bridge.lab.fuzz`): the message type, the seed corpus and
the mutator.

The seeds are the malformed-payload kinds of the reliability matrix, valid payloads for the
shipped rules, the ``tests:`` of the mapping file, odd topics and the files of a corpus
directory; the mutator stacks byte-level and JSON-aware changes on them, seeded for replay.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from bridge.mapping.mapper import Mapper

DEFAULT_CAP = 65536  # mqtt.max_payload_bytes default


@dataclass(frozen=True, slots=True)
class Case:
    """One fuzz input: an MQTT topic and payload."""

    topic: str
    payload: bytes

    def to_bytes(self) -> bytes:
        """The corpus-file form: topic, newline, payload."""
        return self.topic.replace("\n", " ").encode("utf-8", "replace") + b"\n" + self.payload

    @classmethod
    def from_bytes(cls, data: bytes) -> Case:
        """Any bytes as a message; the topic is decoded as the MQTT source decodes it."""
        topic, _, payload = data.partition(b"\n")
        return cls(topic.decode("utf-8", "replace"), payload)


# -- the seed corpus ---------------------------------------------------------------------------

_ENV = "plant/berlin/line1/env"
_STATE = "plant/berlin/press-4/state"
_TS = b'"ts": "2026-11-26T08:32:00.125Z"'


def _malformed(cap: int) -> list[bytes]:
    """The malformed-payload kinds of the reliability matrix (numbered as there)."""
    deep = b"[" * 1100 + b"]" * 1100
    nested = b'{"serial": "HC-1", "time": "26.11.2026 09:30:00", "status": '
    many = b"{" + b",".join(b'"k%d": %d' % (i, i) for i in range(5000)) + b"}"
    return [
        b"",  # 1
        b" \t\r\n ",  # 2
        b'\xff\xfe{"temp": 1}',  # 3
        b'\xef\xbb\xbf{"temp": 21.7, ' + _TS + b"}",  # 4
        b'{"temp": 1',  # 5
        b'{"temp": 1}x',  # 6
        b"[]",  # 7
        b'"s"',
        b"42",
        b"null",
        b'{"rh": 40.5}',  # 8
        b'{"temp": "abc", "rh": {}, "power": {"kw": [1]}, ' + _TS + b"}",  # 9
        b'{"temp": true, "rh": false, ' + _TS + b"}",
        b'{"temp": NaN, "rh": Infinity, "power": {"kw": -Infinity}}',  # 10
        b'{"temp": 1e400, ' + _TS + b"}",  # 11
        b'{"temp": 1' + b"0" * 5000 + b", " + _TS + b"}",  # 12
        deep,  # 13
        nested + b'{"a": ' * 1000 + b"1" + b"}" * 1001,
        b'{"temp": 1, "temp": "x", "ts": 1, "ts": "2026-11-26T08:32:00Z"}',  # 14
        b'{"temp": "\\ud800", "id": "a\\u0000b", ' + _TS + b"}",  # 15
        b'{"temp": 1, "ts": -1}',  # 16
        b'{"temp": 1, "ts": 0}',
        b'{"temp": 1, "ts": "3000-01-01T00:00:00Z"}',
        b'{"temp": 1, "ts": 1795681920}',
        b'{"temp": 1, "ts": 1795681920123456789}',
        b'{"temp": 1, "ts": "2026-11-26T08:32:00"}',
        b'{"temp": 1, "ts": "yesterday"}',
        b'{"temp": 1, "ts": 1795681920.12345678901234567890}',
        b'{"temp": 1, "note": "' + b"a" * (cap - 40) + b'"}',  # 17: just under the cap
        many,
        b'{"\\u001b[31m%s{}\\n": 1, "temp": 2, ' + _TS + b"}",  # 18
        b"1" * (cap + 1),  # 19
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",  # 20
        b"\x08\x96\x01\x12\x04temp",
        b'{"version": 2, "data": {"temp": 21.7}}',  # 21
        b'{"temp": -0.0, "rh": 5e-324, "power": {"kw": 1.7976931348623157e308}}',  # 24
        b"-0.0",
        b"5e-324",
        b"1e308",
        b" 229.8 ",
        b"ON",
        b"off",
        b"RUNNING",
        b"\x00",
        b"a\x00b",
    ]


_VALID = [  # payloads the shipped topic-mappings.yaml accepts
    (_ENV, b'{"temp": 21.7, "rh": 40.5, "power": {"kw": 3.2}, ' + _TS + b"}"),
    (_STATE, b'{"t": 1795681920123, "spindle": {"rpm": 1480, "load": 0.62}, "counters": {}}'),
    ("tele/meter-07/voltage", b"229.8"),
    ("stat/plug-3/POWER", b"ON"),
    ("plant/berlin/press-4/status", b"idle"),
    ("plant/berlin/line1/debug", b"free text"),
    (
        "opcua/gw-7/readings",
        b'[{"id": "Line1.Press.Temp", "v": 71.2, "t": 1795681920123, "q": true},'
        b' {"id": "b", "v": 5.5, "t": 1795681920123, "q": false}]',
    ),
    (
        "hall/h2/climate",
        b'{"serial": "HC-0042", "time": "26.11.2026 09:30:00", "p": 1013.2,'
        b' "status": {"fan": {"rpm": 900}, "filter_pct": 87, "label": "ok"}}',
    ),
    ("gw/hall3/valves", b'{"ts": 1795681920, "devices": {"v-1": {"pos": 40}, "v-2": {"pos": 7}}}'),
    ("vib/pump-2", b'{"rms": 2.75}'),
]

_EDGE_TOPICS = [
    "foo/bar",  # 22: unmapped
    "plant/berlin/line1/env/extra",
    "plant/berlin/env",
    "plant//line1/env",
    "$SYS/broker/uptime",
    "/".join(["a"] * 200),
    "",
]


def _topics_of(mapper: Mapper) -> list[str]:
    """A concrete topic each rule's filter matches (a best guess where a level has a regex)."""
    out: list[str] = []
    for rule in mapper.rules:
        levels: list[str] = []
        patterns = rule.topic.patterns or (None,) * len(rule.topic.levels)
        for level, pattern in zip(rule.topic.levels, patterns, strict=False):
            if level is not None:
                levels.append(level)
                continue
            words = ["x1", "press-4", "1", "a-1", "x"]
            fits = [w for w in words if pattern is None or pattern.fullmatch(w)]
            levels.append(fits[0] if fits else "x")
        if rule.topic.tail:
            levels.extend(["a", "b"])
        out.append("/".join(levels))
    return list(dict.fromkeys(out))


def seed_cases(
    mapper: Mapper, tests: Iterable[tuple[str, bytes]] = (), cap: int = DEFAULT_CAP
) -> list[Case]:
    """The built-in seed corpus for ``mapper``: valid messages (the shipped examples and the
    mapping file's tests), then every malformed kind on every rule's topic, then edge topics."""
    cases = [Case(t, p) for t, p in (*_VALID, *tests)]
    topics = _topics_of(mapper)
    cases.extend(Case(t, p) for p in _malformed(cap) for t in topics)
    cases.extend(Case(t, p) for t in _EDGE_TOPICS for p in (b"1", _VALID[0][1]))
    return list(dict.fromkeys(cases))


def read_corpus(directory: Path) -> list[Case]:
    """Every regular file of ``directory`` as a message, in name order."""
    return [Case.from_bytes(p.read_bytes()) for p in sorted(directory.iterdir()) if p.is_file()]


def save_finding(directory: Path, case: Case) -> Path:
    """Write ``case`` as ``crash-<sha1>`` (libFuzzer's name for a failing input)."""
    data = case.to_bytes()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"crash-{hashlib.sha1(data, usedforsecurity=False).hexdigest()}"
    path.write_bytes(data)
    return path


# -- mutations ---------------------------------------------------------------------------------

_TOKENS = [
    b'"', b"{", b"}", b"[", b"]", b",", b":", b"null", b"true", b"NaN", b"Infinity", b"1e400",
    b"-0", b"\\u0000", b"\\ud800", b"\xef\xbb\xbf", b"\x1f\x8b", b"\xff", b"\xc3", b"%s", b"{}",
    b"\x1b[31m", b"\n", b" ", b"0" * 400, b"9" * 25, b".", b"e", b"-", b"+",
]  # fmt: skip
_NUMBERS: list[object] = [
    0, -0.0, 1, -1, 0.1, 1e-7, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1e308,
    2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30, 1795681920, 1795681920123, 1795681920123456,
    1795681920123456789, -1795681920, 32503680000, 32503680000000, 253402300800,
    1795681920.12345678901234567890,
]  # fmt: skip
_STRINGS: list[object] = [
    "", "abc", "NaN", "Infinity", "-Infinity", "1e400", "0x10", " 42 ", "4,2", "\x00",
    "2026-11-26T08:32:00", "2026-11-26T08:32:00Z", "2026-11-26T08:32:00+14:00",
    "3000-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "26.11.2026 09:30:00", "31.02.2026 25:61:00",
    "not a time", "ON", "off", "RUNNING", "idle", "%s%n{}", "\x1b[2J", "a/b", "é" * 300,
    "Line1.Press.Temp", "HC-0042",
]  # fmt: skip
_LITERALS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" + b"0" * 5000, b"1.5e"]
_NUMBER_TOKEN = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LEVELS = ["", "+", "#", "$SYS", "x", "ü", "press-12", "press-", "a" * 300, "POWER", "env"]


class Mutator:
    """Makes a new message from a corpus entry with a few stacked mutations."""

    def __init__(self, rng: random.Random, cap: int = DEFAULT_CAP) -> None:
        self.rng = rng
        self.cap = cap
        self.keys: list[str] = ["temp", "ts", "t", "status", "id", "v", "q", "devices", "p"]

    def learn_keys(self, cases: Iterable[Case]) -> None:
        """Object keys seen in the corpus, reused by the add-key mutation."""
        found: set[str] = set()
        for case in cases:
            try:
                doc = orjson.loads(case.payload)
            except orjson.JSONDecodeError:
                continue
            stack = [doc]
            while stack and len(found) < 500:
                node = stack.pop()
                if isinstance(node, dict):
                    found.update(str(k) for k in node)
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node[:20])
        self.keys = sorted(set(self.keys) | found)

    def mutate(self, case: Case, corpus: Sequence[Case]) -> Case:
        """1..4 mutations of ``case`` (``corpus`` donates splices and topics)."""
        topic, payload = case.topic, case.payload
        for _ in range(self.rng.choice([1, 1, 1, 2, 2, 3, 4])):
            if self.rng.random() < 0.15:
                topic = self._topic(topic, corpus)
            elif self.rng.random() < 0.5:
                payload = self._json(payload)
            else:
                payload = self._bytes(payload, corpus)
        if len(payload) > 4 * self.cap:
            payload = payload[: 2 * self.cap]  # far past the cap teaches nothing new
        return Case(topic, payload)

    def _bytes(self, data: bytes, corpus: Sequence[Case]) -> bytes:
        r = self.rng
        n = len(data)
        pos = r.randint(0, n)
        kind = r.randrange(8)
        if kind == 0 and n:
            i = r.randrange(n)
            return data[:i] + bytes([data[i] ^ (1 << r.randrange(8))]) + data[i + 1 :]
        if kind == 1:
            return data[:pos] + r.choice(_TOKENS) + data[pos:]
        if kind == 2:
            return data[:pos] + r.randbytes(r.randint(1, 8)) + data[pos:]
        if kind == 3 and n:
            end = min(n, pos + r.randint(1, 16))
            return data[:pos] + data[end:]
        if kind == 4 and n:
            end = min(n, pos + r.randint(1, 64))
            return data[:end] + data[pos:end] * r.randint(1, 8) + data[end:]
        if kind == 5:
            other = r.choice(corpus).payload
            return data[:pos] + other[r.randint(0, len(other)) :]
        if kind == 6 and (matches := list(_NUMBER_TOKEN.finditer(data))):
            m = r.choice(matches)
            return data[: m.start()] + r.choice(_LITERALS) + data[m.end() :]
        if kind == 7:
            head, tail = r.choice(
                [(b"[", b"]"), (b'{"a": ', b"}"), (b"\xef\xbb\xbf", b""), (b"", b"x")]
            )
            times = r.choice([1, 1, 10, 300, 1000, 1030]) if tail else 1
            return head * times + data + tail * times
        return data[:pos]

    def _json(self, data: bytes) -> bytes:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        doc = self._change(doc, depth=0)
        try:
            if self.rng.random() < 0.1:
                return json.dumps(doc).encode()  # floats it made infinite become Infinity
            try:
                return orjson.dumps(doc)
            except orjson.JSONEncodeError:  # an int beyond 64 bits, or nesting past 255
                return json.dumps(doc).encode()
        except (RecursionError, ValueError):
            return data

    def _change(self, node: object, depth: int) -> object:
        r = self.rng
        descend = r.random() < (0.95 if depth == 0 else 0.7)  # a new root is mostly a dud
        if isinstance(node, dict) and node and depth < 30 and descend:
            key = r.choice(list(node))
            node = dict(node)
            choice = r.randrange(6)
            if choice == 0:
                del node[key]
            elif choice == 1:
                node[r.choice(self.keys)] = self._value()
            else:
                node[key] = self._change(node[key], depth + 1)
            return node
        if isinstance(node, list) and node and depth < 30 and descend:
            i = r.randrange(len(node))
            node = list(node)
            if r.random() < 0.2:
                node.append(node[i])
            else:
                node[i] = self._change(node[i], depth + 1)
            return node
        return self._value(node)

    def _value(self, old: object = None) -> object:
        r = self.rng
        kind = r.randrange(10)
        if kind < 3:
            return r.choice(_NUMBERS)
        if kind == 3 and isinstance(old, int | float) and not isinstance(old, bool):
            return old * r.choice([1000, 0.001, -1, 1e300, 1e-300])
        if kind < 6:
            return r.choice(_STRINGS)
        if kind == 6:
            return r.choice([True, False, None, [], {}])
        if kind == 7:
            deep: object = r.choice(_NUMBERS)
            for _ in range(r.choice([10, 100, 250])):  # deeper: a byte mutation nests text
                deep = [deep] if r.random() < 0.5 else {"a": deep}
            return deep
        if kind == 8:
            n = r.choice([101, 250, 2000])
            return {f"k{i}": float(i) for i in range(n)}
        return r.choice(["a" * r.choice([100, 10_000, self.cap]), [old, old], {"v": old}])

    def _topic(self, topic: str, corpus: Sequence[Case]) -> str:
        r = self.rng
        if r.random() < 0.3:
            return r.choice(corpus).topic
        levels = topic.split("/")
        i = r.randrange(len(levels))
        kind = r.randrange(4)
        if kind == 0:
            levels[i] = r.choice(_LEVELS)
        elif kind == 1:
            levels.insert(i, r.choice(_LEVELS))
        elif kind == 2 and len(levels) > 1:
            del levels[i]
        else:
            return r.choice(["$SYS/", "/", ""]) + topic + r.choice(["", "/", "/x"])
        return "/".join(levels)
