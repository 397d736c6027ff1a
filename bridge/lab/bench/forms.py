"""``bench rules``, second table: what each form of the mapping language costs per message.

Each form is one rule with a message it maps; the mapper of one file holding every form maps
each form's messages in turn (timeit-style: the best of several rounds, forms interleaved so that
noise from other work on the machine hits them alike). The first form is the common path (a
JSON object, four metrics, an epoch timestamp: what most plants send); the others are reported as
a ratio to it. A last row times the common path with a file that holds only the common rule, so
the table also shows whether the other forms' mere presence in a file slows the common path
down (it must not: each rule's extra work happens only when that rule matches).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass

from bridge.mapping.loader import load_mappings_text, make_mapper
from bridge.mapping.mapper import Mapper
from bridge.settings import MappingSettings

FORMS_TARGET_RATIO = 1.1  # the common path, with every form in the file / alone
_DEVICES = 200  # distinct topics per form: the mapper's per-topic route cache is warm


@dataclass(frozen=True, slots=True)
class Form:
    """One rule of the mapping language and a message for it (``{n}``: a device number)."""

    name: str
    rule: str  # the rule's YAML body, without ``name`` (indented by four spaces)
    topic: str
    payload: str
    points: int  # what the message must map to


# The epoch-ms stamp every payload carries: the same instant, so the forms differ only in form.
_TS = 1795681920123
_ENV = '{{"temp": 21.25, "rh": 40, "power": {{"kw": 3.5, "hz": 50}}, "ts": {ts}}}'
COMMON = Form(
    "json metrics (common path)",
    """\
    topic: "bench/{device}/env"
    device_id: "{device}"
    metrics: {temp: temp, rh: rh, kw: power.kw, hz: power.hz}
    timestamp: {field: ts, format: epoch_ms}""",
    "bench/d{n}/env",
    _ENV.format(ts=_TS),
    4,
)
FORMS: tuple[Form, ...] = (
    COMMON,
    Form(
        "template filters (segment, re, upper)",
        """\
    topic: "site/{path}/env"
    device_id: "{path|segment:_:0|upper}-{path|re:(\\\\d+)$:1}"
    metrics: {temp: temp, rh: rh, kw: power.kw, hz: power.hz}
    timestamp: {field: ts, format: epoch_ms}""",
        "site/hall_line_{n}/env",
        _ENV.format(ts=_TS),
        4,
    ),
    Form(
        "number_format (decimal comma, unit) on a plain payload",
        """\
    topic: "hmi/{panel}/{metric}"
    device_id: "{panel}"
    payload: number
    metric: "{metric}"
    number_format: {decimal: ",", thousands: ".", unit: ["°C", "%"]}""",
        "hmi/p{n}/oven_temp",
        "1.021,4 °C",
        1,
    ),
    Form(
        "number_format on JSON strings",
        """\
    topic: "panel/{device}/json"
    device_id: "{device}"
    metrics: {temp: temp, rh: rh, kw: kw, hz: hz}
    number_format: {decimal: ","}
    timestamp: {field: ts, format: epoch_ms}""",
        "panel/d{n}/json",
        '{"temp": "21,25", "rh": "40", "kw": "3,5", "hz": "50", "ts": ' + f"{_TS}}}",
        4,
    ),
    Form(
        "exact time: epoch nanoseconds",
        """\
    topic: "plc/{device}/ns"
    device_id: "{device}"
    metrics: {temp: temp, rh: rh, kw: power.kw, hz: power.hz}
    timestamp: {field: ts, format: epoch_ns}""",
        "plc/d{n}/ns",
        _ENV.format(ts=_TS * 1_000_000 + 999_600),
        4,
    ),
    Form(
        "readings: device and metric per reading (tag list)",
        """\
    topic: "tags/{gw}"
    readings:
      path: values
      device: "{$id|segment:.:0:-1}"
      metric: "{$id|segment:.:-1}"
      value: v
      time: t
      time_format: epoch_ms
      where: {q: true}""",
        "tags/g{n}",
        '{"values": ['
        + ", ".join(
            f'{{"id": "Line1.{d}.{m}", "v": 1.5, "t": {_TS}, "q": {q}}}'
            for d, m, q in (
                ("Press01", "Temp", "true"),
                ("Press01", "Bar", "true"),
                ("Press02", "Temp", "true"),
                ("Press02", "Bar", "true"),
                ("Press02", "Rpm", "false"),
            )
        )
        + "]}",
        4,
    ),
    Form(
        "linear (4-20 mA) and expr (°F) on JSON metrics",
        """\
    topic: "plc/{device}/analog"
    device_id: "{device}"
    metrics:
      temp: {path: temp, expr: "(x - 32) * 5 / 9", round: 1}
      rh: rh
      kw: {path: power.kw, linear: {from: [4, 20], to: [0, 10]}, range: [-10, 10]}
      hz: power.hz
    timestamp: {field: ts, format: epoch_ms}""",
        "plc/d{n}/analog",
        _ENV.format(ts=_TS),
        4,
    ),
    Form(
        "collect with separator and a prefix template",
        """\
    topic: "telegraf/{host}/{measurement}"
    device_id: "{host}"
    collect: {path: fields, prefix: "{measurement}_", separator: "_"}""",
        "telegraf/h{n}/cpu",
        '{"fields": {"usage_idle": 97.5, "usage": {"user": 1.5, "system": 1.0}, "n": 2}}',
        4,
    ),
)


@dataclass(frozen=True, slots=True)
class FormTiming:
    """Per-message mapping time of one form (microseconds, best round)."""

    form: str
    us_per_message: float
    ratio_to_common_path: float


def forms_yaml(forms: tuple[Form, ...]) -> str:
    """A mapping file holding one rule per form, in order."""
    lines = ["version: 1", "rules:"]
    for i, form in enumerate(forms):
        lines.append(f"  - name: form{i}")
        lines.append(form.rule.rstrip("\n"))
    return "\n".join(lines) + "\n"


class FormsBench:
    """Times each form's messages through one mapper."""

    def __init__(self, forms: tuple[Form, ...], messages: int) -> None:
        self.forms = forms
        self.mapper: Mapper = make_mapper(load_mappings_text(forms_yaml(forms)), MappingSettings())
        self._messages = [
            [
                (f.topic.replace("{n}", str(i % _DEVICES)), f.payload.encode())
                for i in range(messages)
            ]
            for f in forms
        ]
        self._now_us = (_TS + 1000) * 1000

    def check(self) -> list[str]:
        """Forms whose message does not map to its points: a timing of a wrong mapping is
        meaningless."""
        problems = []
        for form, messages in zip(self.forms, self._messages, strict=True):
            topic, payload = messages[0]
            mapped = self.mapper.map(topic, payload, self._now_us)
            if mapped.failures or mapped.points != form.points:
                why = "; ".join(str(f) for f in mapped.failures) or f"{mapped.points} point(s)"
                problems.append(f"form {form.name!r}: {topic} gave {why}")
        return problems

    def round(self, index: int) -> float:
        """Seconds per message of form ``index``, one pass over its messages."""
        mapper, now_us = self.mapper, self._now_us
        messages = self._messages[index]
        start = time.perf_counter()
        for topic, payload in messages:
            mapper.map(topic, payload, now_us)
        return (time.perf_counter() - start) / len(messages)


def time_forms(
    messages: int, rounds: int, forms: tuple[Form, ...] = FORMS
) -> tuple[list[FormTiming], float, list[str]]:
    """(each form's timing, common path with every form in the file / alone, problems)."""
    together = FormsBench(forms, messages)
    alone = FormsBench((forms[0],), messages)
    problems = together.check() + alone.check()
    best = [math.inf] * len(forms)
    best_alone = math.inf
    # As timeit does: a collection in the middle of one form's round would be charged to it.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for i in range(len(forms)):
                best[i] = min(best[i], together.round(i))
                if i == 0:  # the common path alone right beside it: the same machine state
                    best_alone = min(best_alone, alone.round(0))
    finally:
        if collecting:
            gc.enable()
    common = best[0]
    timings = [
        FormTiming(
            form=f.name,
            us_per_message=round(best[i] * 1e6, 2),
            ratio_to_common_path=round(best[i] / common, 2) if common > 0 else math.nan,
        )
        for i, f in enumerate(forms)
    ]
    presence = round(common / best_alone, 3) if best_alone > 0 else math.nan
    return timings, presence, problems
