"""A draft mapping file from a survey: recipe rules for recognised conventions, generic rules
for the other patterns, and ``tests:`` built from real sample payloads.

Recipe rules come first, once per recipe, so a generic rule never shadows them; the generic
patterns meet neither each other nor a recipe's filter (:mod:`.patterns`). A recipe whose
filters start with a wildcard (ESPHome's node name, plain numbers' gateway prefix) would take
every topic of that shape on the broker — Home Assistant's states, Zigbee2MQTT's devices, any
custom tree — so its first level is narrowed to the ones its recognised topics have (as the
recipes' own comments ask users to do); its tests on other first levels give way to tests from
the plant's own samples. A test's expected points are what the real mapper makes of the sample
under the whole draft, so the tests pass by construction; the draft is then compiled, checked
for rule-order warnings and its tests run, and anything found is reported in
:attr:`Draft.problems` rather than hidden.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.config.yamlfile import LineIndex, load_yaml_text
from bridge.errors import ConfigError
from bridge.mapping.loader import compile_mappings
from bridge.mapping.mapper import Mapped, Mapper
from bridge.mapping.overlap import rule_warnings
from bridge.mapping.selftest import run_mapping_tests
from bridge.mapping.spec import MappingFile
from bridge.mapping.timestamps import format_timestamp
from bridge.mapping.topics import TopicFilter, parse_filter
from bridge.recipes import Recipe, catalogue
from bridge.survey.patterns import PLAIN_KINDS, Pattern, group_topics
from bridge.survey.sparkplug import sparkplug_rules, split_sparkplug
from bridge.survey.topics import Sample, Survey, TopicStats

TIME_FIELDS = ("ts", "timestamp", "time", "t")  # a top-level field tried as the reading's time
MAX_STATE_WORDS = 12  # more distinct words than this: free text, ignored in the draft
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_PLAIN_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # {name}: any level, captured
_REGEX_SPECIAL = re.compile(r"[.^$*+?()\[\]{}|\\]")
_NOT_LITERAL = re.compile(r"[+#{}]")  # a level with these cannot be a literal filter level

Rule = dict[str, Any]


@dataclass(slots=True)
class Draft:
    """A draft mapping file and what went into it."""

    text: str
    recipes: list[Recipe]
    patterns: list[Pattern]
    narrowed: dict[str, list[str]] = field(default_factory=dict)  # recipe: first levels kept
    rules: int = 0
    tests: int = 0
    problems: list[str] = field(default_factory=list)


def recipes_seen(survey: Survey) -> list[Recipe]:
    """The recipes that recognised some topic, in catalogue order."""
    names = {t.recipe for t in survey.topics.values() if t.recipe is not None}
    return [r for r in catalogue() if r.name in names]


def recipe_parts(recipe: Recipe) -> tuple[list[Rule], list[Rule]]:
    """The rules and tests of a recipe's mapping file."""
    data, _ = load_yaml_text(recipe.text, f"recipe {recipe.name}")
    return list(data.get("rules") or []), list(data.get("tests") or [])


@dataclass(slots=True)
class RecipeUse:
    """A recipe as a draft uses it: its rules, narrowed where they start with a wildcard, and
    the recipe's tests that still apply to them.

    Attributes:
        recipe: the recipe.
        topics: the survey's topics it recognised.
        rules: its rules; a wildcard first level narrowed to ``firsts``.
        tests: its tests whose topics the narrowed rules still take as the recipe does.
        firsts: the first levels of ``topics`` (sorted), where a rule was narrowed; else empty.
    """

    recipe: Recipe
    topics: list[TopicStats]
    rules: list[Rule]
    tests: list[Rule]
    firsts: list[str] = field(default_factory=list)


def recipe_uses(survey: Survey) -> list[RecipeUse]:
    """The recipes ``survey`` recognised, as the draft uses them, in catalogue order."""
    out = []
    for recipe in recipes_seen(survey):
        topics = [t for t in survey.topics.values() if t.recipe == recipe.name]
        rules, tests = recipe_parts(recipe)
        firsts = sorted({t.topic.split("/", 1)[0] for t in topics})
        narrowed = [_narrowed(rule, firsts) for rule in rules]
        if narrowed == rules:
            out.append(RecipeUse(recipe, topics, rules, tests))
            continue
        kept = [t for t in tests if _still_applies(str(t["topic"]), rules, narrowed)]
        out.append(RecipeUse(recipe, topics, narrowed, kept, firsts))
    return out


def recipe_filters(uses: Sequence[RecipeUse]) -> list[tuple[str, TopicFilter]]:
    """(recipe name, filter) of every rule of ``uses`` that takes topics."""
    return [
        (use.recipe.name, parse_filter(rule["topic"]))
        for use in uses
        for rule in use.rules
        if not rule.get("continue")
    ]


def _narrowed(rule: Rule, firsts: Sequence[str]) -> Rule:
    """``rule`` with a first level of ``+`` or ``{name}`` replaced by one that takes ``firsts``
    only (a literal, or a regex capture); other rules unchanged."""
    first, slash, rest = str(rule["topic"]).partition("/")
    capture = _PLAIN_CAPTURE.fullmatch(first)
    if (first != "+" and capture is None) or not firsts:
        return rule
    if capture is None and len(firsts) == 1 and not _NOT_LITERAL.search(firsts[0]):
        level = firsts[0]
    else:
        alternatives = "|".join(_REGEX_SPECIAL.sub(lambda m: "\\" + m.group(), f) for f in firsts)
        level = "{" + (capture.group(1) if capture else "_") + ":" + alternatives + "}"
    return {**rule, "topic": level + slash + rest}


def _still_applies(topic: str, rules: Sequence[Rule], narrowed: Sequence[Rule]) -> bool:
    """The recipe rule that takes ``topic`` still takes it once narrowed (or none did)."""
    levels = topic.split("/")
    for old, new in zip(rules, narrowed, strict=True):
        if old.get("continue") or parse_filter(old["topic"]).match(levels) is None:
            continue
        return parse_filter(new["topic"]).match(levels) is not None
    return True


def draft_mapping(survey: Survey, header: Sequence[str] = ()) -> Draft:
    """The draft mapping file for what ``survey`` saw."""
    uses = recipe_uses(survey)
    sparkplug, generic = split_sparkplug(t for t in survey.topics.values() if t.recipe is None)
    patterns = group_topics(generic, recipe_filters(uses))
    draft = Draft("", [u.recipe for u in uses], patterns)
    rules: list[tuple[list[str], Rule]] = []
    tests: list[Rule] = []
    for use in uses:
        r = use.recipe
        for i, rule in enumerate(use.rules):
            rules.append((_recipe_notes(use) if i == 0 else [], rule))
        tests.extend(use.tests)
        if use.firsts:
            draft.narrowed[r.name] = use.firsts
    names = {rule["name"] for _, rule in rules}
    rules.extend(sparkplug_rules(sparkplug, names))
    own: list[tuple[Pattern, Rule]] = []
    for p in patterns:
        if p.recipe is not None:
            continue
        rule = _rule_for(p, _unique(_rule_name(p), names))
        own.append((p, rule))
        rules.append((_notes(p, rule, survey), rule))
    try:
        mapper = Mapper(_compile([rule for _, rule in rules]))
    except ConfigError as exc:
        draft.problems.append(f"the draft does not compile: {exc}")
        mapper = None
    if mapper is not None:
        for use in uses:
            if use.firsts:  # its tests on other first levels gave way: the plant's samples
                tests.extend(_recipe_sample_tests(use, mapper))
        for p, rule in own:
            tests.extend(_tests_for(p, rule, mapper))
    draft.text = _emit(header, rules, tests)
    draft.rules, draft.tests = len(rules), len(tests)
    if mapper is not None:
        draft.problems.extend(_verify(draft.text))
    return draft


def _rule_name(p: Pattern) -> str:
    text = p.filter_text.replace("{", "").replace("}", "")
    slug = _NAME_CHARS.sub("-", text).strip("-.") or "topic"
    return f"draft-{slug}"[:60].rstrip("-.")


def _unique(name: str, taken: set[str]) -> str:
    out, n = name, 1
    while out in taken:
        n += 1
        out = f"{name}-{n}"
    taken.add(out)
    return out


def _device_id(p: Pattern) -> str:
    captured = [n for n in p.names if n is not None and n != "metric"]
    if captured:
        return "-".join("{" + n + "}" for n in captured)
    literal = [lit for lit, n in zip(p.levels, p.names, strict=True) if lit is not None]
    if p.kind in PLAIN_KINDS and len(literal) > 1 and p.names[-1] != "metric":
        literal = literal[:-1]  # the last level names the metric
    return "-".join(x for x in literal if x) or "device"


def _rule_for(p: Pattern, name: str) -> Rule:
    rule: Rule = {"name": name, "topic": p.filter_text}
    ignore = _why_ignored(p)
    if ignore is not None:
        rule["ignore"] = True
        return rule
    rule["device_id"] = _device_id(p)
    if p.kind in PLAIN_KINDS:
        rule["payload"] = p.kind
        rule["metric"] = "{metric}" if p.names[-1] == "metric" else p.levels[-1] or "value"
        if p.kind == "text":
            words = sorted({w for t in p.topics for w in t.words})
            rule["transform"] = {"map": {w: float(i) for i, w in enumerate(words)}}
        return rule
    ts_field = _time_field(p)
    rule["collect"] = {"path": ""} if ts_field is None else {"path": "", "exclude": [ts_field]}
    if ts_field is not None:
        rule["timestamp"] = {"field": ts_field}
    return rule


def _why_ignored(p: Pattern) -> str | None:
    """Why a pattern gets an ``ignore`` rule in the draft (None: it is mapped)."""
    if p.kind == "binary":
        return "binary payloads: nothing to map"
    if p.kind == "empty":
        return "empty payloads"
    if p.kind == "json-other":
        return "JSON that is not an object (a list or a string): write readings: by hand"
    if p.kind == "json" and not any(t.fields for t in p.topics):
        return "JSON objects without numeric fields"
    if p.kind == "text":
        words = {w for t in p.topics for w in t.words}
        if any(t.free_text for t in p.topics) or len(words) > MAX_STATE_WORDS or not words:
            return "free text, not a few state words"
    return None


def _time_field(p: Pattern) -> str | None:
    """A top-level field every sample has that the mapper reads as a valid time."""
    samples = [s for t in p.topics for s in t.samples]
    for name in TIME_FIELDS:
        candidate: Rule = {
            "name": "probe",
            "topic": p.filter_text,
            "device_id": _device_id(p),
            "collect": {"path": "", "exclude": [name]},
            "timestamp": {"field": name},
        }
        try:
            mapper = Mapper(_compile([candidate]))
        except ConfigError:
            return None
        if samples and all(
            not mapper.map(t.topic, s.payload, s.received_us).failures
            for t in p.topics
            for s in t.samples
        ):
            return name
    return None


def _notes(p: Pattern, rule: Rule, survey: Survey) -> list[str]:
    example = p.topics[0].topic
    rate = p.messages / survey.seconds()
    notes = [f"{len(p.topics)} topic(s) like {example}: {p.kind}, {rate:.3g} msg/s"]
    why = _why_ignored(p)
    if why is not None:
        notes.append(f"ignored in the draft ({why}); replace with a mapping if it matters")
    elif p.kind == "text":
        notes.append("the state words seen, numbered in order: review the values")
    return notes


def _recipe_notes(use: RecipeUse) -> list[str]:
    r = use.recipe
    notes = [f"recipe {r.name}: {r.title}; recognised on {len(use.topics)} topic(s)"]
    if use.firsts:
        notes.append(
            f"first level narrowed to the {len(use.firsts)} seen ({', '.join(use.firsts)}), so "
            "these rules take no other convention's topics: add new ones here"
        )
    return notes


def _recipe_sample_tests(use: RecipeUse, mapper: Mapper) -> list[Rule]:
    """A test from a real sample per rule of the recipe that took one of its topics."""
    out: list[Rule] = []
    done: set[str | None] = set()
    for t in use.topics:
        sample = next((s for s in t.samples if _text(s.payload) is not None), None)
        if sample is None:
            continue
        rule = mapper.map(t.topic, sample.payload, sample.received_us).rule
        if rule not in done:
            done.add(rule)
            out.append(_sample_test(rule or "no rule", t, sample, mapper))
    return out


def _tests_for(p: Pattern, rule: Rule, mapper: Mapper) -> list[Rule]:
    picked: list[tuple[TopicStats, Sample]] = []
    for t in p.topics:
        usable = [s for s in t.samples if _text(s.payload) is not None]
        if usable and len(picked) < 2:
            picked.append((t, usable[0]))
    return [_sample_test(rule["name"], t, s, mapper) for t, s in picked]


def _sample_test(rule: str, t: TopicStats, s: Sample, mapper: Mapper) -> Rule:
    mapped = mapper.map(t.topic, s.payload, s.received_us)
    retained = " (retained)" if s.retained else ""
    test: Rule = {"name": f"{rule}: a sample from {t.topic}{retained}"}
    test["topic"] = t.topic
    test["payload"] = _text(s.payload)
    test.update(_expectation(mapped, s.received_us))
    return test


def _text(payload: bytes) -> str | None:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _expectation(mapped: Mapped, received_us: int) -> Rule:
    out: Rule = {}
    if mapped.ignored:
        out["expect_ignored"] = True
    expect = []
    for r in mapped.records:
        obj: Rule = {"device_id": r.device_id}
        if r.ts_us != received_us:
            obj["timestamp"] = format_timestamp(r.ts_us)
        obj["metrics"] = dict(r.metrics)
        expect.append(obj)
    if expect:
        out["expect"] = expect
    if mapped.failures:
        out["expect_failures"] = [f.reason for f in mapped.failures]
    return out


def _compile(rules: list[Rule]) -> list[Any]:
    return compile_mappings({"version": 1, "rules": rules}, LineIndex("<draft>"))


def _emit(header: Sequence[str], rules: list[tuple[list[str], Rule]], tests: list[Rule]) -> str:
    # Values in JSON flow style, which YAML reads as written: no quoting rules to get wrong.
    lines = [f"# {h}" if h else "#" for h in header]
    lines += ["version: 1", "rules:"]
    for notes, rule in rules:
        lines += [f"  # {n}" for n in notes]
        lines += _mapping_lines(rule, "  - ", "    ")
    if tests:
        lines.append("tests:")
        for test in tests:
            lines += _mapping_lines(test, "  - ", "    ")
    return "\n".join(lines) + "\n"


def _mapping_lines(obj: Rule, first: str, rest: str) -> list[str]:
    out = []
    for i, (key, value) in enumerate(obj.items()):
        dumped = orjson.dumps(value).decode()
        out.append(f"{first if i == 0 else rest}{key}: {dumped}")
    return out


def _verify(text: str) -> list[str]:
    """What ``check --strict`` and ``test`` would say about the draft (empty: nothing)."""
    problems: list[str] = []
    try:
        data, index = load_yaml_text(text, "<draft>")
        rules = compile_mappings(data, index)
    except ConfigError as exc:
        return [f"the draft does not compile: {exc}"]
    lines = [index.line_of(("rules", i, "topic")) for i in range(len(rules))]
    problems += [w.message for w in rule_warnings(rules, lines)]
    spec = MappingFile.model_validate(data)
    for outcome in run_mapping_tests(rules, list(spec.tests or []), index):
        problems += [f"test {outcome.name!r}: {p}" for p in outcome.problems]
    return problems
