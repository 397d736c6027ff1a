"""Rows 17, 18 and 20 of the reliability matrix: every configuration error at hot reload.

At hot reload (an in-process bridge on a real mosquitto, started from a mapping file so the
watcher and ``request_reload`` — what SIGHUP calls — work) each broken mapping file must leave
the previous rules running, count the failure, report it truthfully with file:line: key, and
the next valid file must be accepted. Errors at start: ``test_config_errors_at_start.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import LocalBroker
from bridge.mapping.loader import load_mappings
from bridge.settings import Settings
from tests.support import TOKEN
from tests.support.config_errors import ALIAS_BOMB, IS_ROOT
from tests.support.harness import Publisher, make_settings, metric, publish, run_bridge

FAILURES = ("metriqo_bridge_config_reloads_total", {"result": "failure"})
SUCCESSES = ("metriqo_bridge_config_reloads_total", {"result": "success"})
LAST_OK = "metriqo_bridge_config_last_reload_successful"


def _generation(k: int) -> str:
    """A valid mapping whose only rule is unique to version ``k``: topic ``gen{k}/...`` maps to
    device ``v{k}-<device>``, so a delivered point tells which version mapped it."""
    return f"""\
version: 1
rules:
  - name: gen{k}
    topic: "gen{k}/{{device}}/{{metric}}"
    device_id: "v{k}-{{device}}"
    payload: number
    metric: "{{metric}}"
"""


def _rewrite(path: Path, text: str | bytes) -> None:
    """Write beside and rename, as editors and ConfigMap updates do."""
    if path.is_dir():
        path.rmdir()
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _to_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _unreadable(path: Path) -> None:
    path.chmod(0o000)


@dataclass(frozen=True, slots=True)
class ReloadCase:
    """A broken mapping file written over the running one; ``expect`` is in the error log
    (``{f}`` = the mapping file's path)."""

    name: str
    apply: Callable[[Path, Path], None]  # (mapping file, marker path for the python tag)
    expect: str


def _text(make: Callable[[str, Path], str | bytes]) -> Callable[[Path, Path], None]:
    return lambda path, marker: _rewrite(path, make(_generation(1), marker))


RELOAD_CASES = [
    ReloadCase(
        "yaml-syntax",
        _text(lambda g, _: g.replace("payload: number", "payload: number: x")),
        "{f}:6: YAML syntax error: mapping values are not allowed here",
    ),
    ReloadCase(
        "python-tag",
        _text(
            lambda g, m: g.replace(
                'device_id: "v1-{device}"',
                f"device_id: !!python/object/apply:os.system ['touch {m}']",
            )
        ),
        "{f}:5: rules[0].device_id: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'",
    ),
    ReloadCase(
        "alias-bomb",
        _text(lambda g, _: g + ALIAS_BOMB),
        "{f}:9: x1[0]: YAML aliases (*name) are not allowed",
    ),
    ReloadCase(
        "unknown-key",
        _text(lambda g, _: g.replace("metric:", "metirc:")),
        "{f}:7: rules[0].metirc: unknown key",
    ),
    ReloadCase(
        "wrong-type",
        _text(lambda g, _: g + "    transform: {scale: '0.5'}\n"),
        "{f}:8: rules[0].transform.scale: Input should be a valid number",
    ),
    ReloadCase(
        "out-of-range",
        _text(lambda g, _: g + "    transform: {round: 13}\n"),
        "{f}:8: rules[0].transform.round: Input should be less than or equal to 12",
    ),
    ReloadCase(
        "topic-hash-not-last",
        _text(lambda g, _: g.replace('"gen1/{device}/{metric}"', '"gen1/#/{metric}"')),
        "{f}:4: rules[0].topic: '#' is only allowed as the last level",
    ),
    ReloadCase(
        "topic-plus-with-text",
        _text(lambda g, _: g.replace('"gen1/{device}/{metric}"', '"gen1/+x/{metric}"')),
        "{f}:4: rules[0].topic: level '+x' mixes wildcard characters with text",
    ),
    ReloadCase(
        "duplicate-rule-names",
        _text(lambda g, _: g + g.split("rules:\n")[1]),
        "{f}:8: rules[1].name: duplicate rule name (also rule 0)",
    ),
    ReloadCase(
        "bidi-in-device-id",
        _text(lambda g, _: g.replace('"v1-{device}"', '"v1\\u202e-{device}"')),
        "{f}:5: rules[0].device_id: device id text 'v1\\u202e-' contains U+202E",
    ),
    ReloadCase("not-utf8", _text(lambda g, _: b"version: 1\n\xff\n"), "{f}: not UTF-8 text"),
    ReloadCase("empty-file", _text(lambda g, _: ""), "{f}: file is empty"),
    ReloadCase("deleted", lambda path, _: path.unlink(), "{f}: file not found"),
    ReloadCase("replaced-by-a-directory", lambda p, _: _to_directory(p), "{f}: is a directory"),
]
if not IS_ROOT:  # root reads a 0000 file anyway
    RELOAD_CASES.append(
        ReloadCase(
            "unreadable-0000",
            lambda p, _: _unreadable(p),
            "{f}: file is not readable (permission denied)",
        )
    )


@contextlib.asynccontextmanager
async def _bridge_from_file(settings: Settings, path: Path) -> AsyncIterator[Bridge]:
    """An in-process bridge started from the mapping file ``path`` (so it can reload it)."""
    bridge = Bridge(settings, load_mappings(path), lambda: TOKEN, mappings_path=path)
    async with run_bridge(bridge, start_timeout=20, must_keep_running=True) as running:
        yield running


def _sample(bridge: Bridge, name: str, labels: dict[str, str] | None = None) -> float:
    return metric(bridge, name, **(labels or {}))


async def _until_sample(
    bridge: Bridge, sample: tuple[str, dict[str, str]], value: float, what: str
) -> None:
    await _until(lambda: _sample(bridge, *sample) == value, what)


async def _until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _delivered(api: LocalApi, device: str, value: float, timeout: float = 20.0) -> None:
    def arrived() -> bool:
        return any(p.device_id == device and p.value == value for p in api.store.points())

    await _until(arrived, f"point {device}={value} at the API", timeout)


async def _publish_retained(port: int, topic: str, payload: bytes) -> None:
    """A retained QoS 1 message: delivered whenever the bridge's new subscription lands."""

    def run() -> None:
        pub = Publisher(port, client_id=f"retained-{time.monotonic_ns()}")
        try:
            info = pub.client.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(10)
            assert info.is_published()
        finally:
            pub.close()

    await asyncio.to_thread(run)


def _last_reload_error(caplog: pytest.LogCaptureFixture) -> str:
    errors = [r for r in caplog.records if r.name == "bridge.reload" and r.levelno >= logging.ERROR]
    assert errors, "no reload error was logged"
    return errors[-1].getMessage()


async def test_broken_mapping_reloads_keep_the_old_rules_and_the_next_valid_file_wins(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """For each broken mapping file (request_reload, i.e. SIGHUP): the bridge keeps running the
    previous rules, counts the failure, sets config_last_reload_successful 0, logs file:line:
    key; then a valid file is applied at once (success counted, gauge 1, new rule in effect)."""
    caplog.set_level(logging.INFO, logger="bridge")
    path = tmp_path / "topic-mappings.yaml"
    marker = tmp_path / "pwned"
    path.write_text(_generation(0), encoding="utf-8")
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"mapping.reload_interval_s": "0"}
    )
    async with _bridge_from_file(settings, path) as bridge:
        for k, case in enumerate(RELOAD_CASES):
            failures = _sample(bridge, *FAILURES)
            successes = _sample(bridge, *SUCCESSES)
            caplog.clear()
            case.apply(path, marker)
            bridge.request_reload()
            await _until_sample(bridge, FAILURES, failures + 1, f"failed reload ({case.name})")
            assert _sample(bridge, LAST_OK) == 0, case.name
            assert _sample(bridge, *SUCCESSES) == successes, case.name
            message = _last_reload_error(caplog)
            assert f"reload of {path} failed; still running the previous mapping" in message
            assert case.expect.replace("{f}", str(path)) in message, (case.name, message)

            # The previous generation's rule still maps (its device prefix proves which rule).
            await publish(broker.port, [(f"gen{k}/d{k}/m", b"%d.5" % k)])
            await _delivered(api, f"v{k}-d{k}", k + 0.5)

            # The next valid file is applied: success counted, gauge back to 1, new rule live.
            _rewrite(path, _generation(k + 1))
            bridge.request_reload()
            await _until_sample(bridge, SUCCESSES, successes + 1, f"valid reload after {case.name}")
            assert _sample(bridge, LAST_OK) == 1, case.name
            assert _sample(bridge, *FAILURES) == failures + 1, case.name
            await _publish_retained(broker.port, f"gen{k + 1}/n{k}/m", b"%d.25" % k)
            await _delivered(api, f"v{k + 1}-n{k}", k + 0.25)
    assert not marker.exists(), "a YAML tag ran a command"
    assert TOKEN not in caplog.text


async def test_watcher_refuses_broken_saves_and_applies_the_next_good_one(
    broker: LocalBroker, api: LocalApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without SIGHUP, the file watcher alone: a broken save, then a deleted file, are each
    refused and counted while the old rule keeps mapping; the next good save is applied."""
    caplog.set_level(logging.INFO, logger="bridge")
    path = tmp_path / "topic-mappings.yaml"
    path.write_text(_generation(0), encoding="utf-8")
    settings = make_settings(
        broker.port, api.url, tmp_path / "spool.db", **{"mapping.reload_interval_s": "0.1"}
    )
    async with _bridge_from_file(settings, path) as bridge:
        _rewrite(path, _generation(1).replace("metric:", "metirc:"))
        await _until_sample(bridge, FAILURES, 1, "the watcher's failed reload")
        assert f"{path}:7: rules[0].metirc: unknown key" in _last_reload_error(caplog)
        path.unlink()
        await _until_sample(bridge, FAILURES, 2, "the deleted file noticed")
        assert f"{path}: file not found" in _last_reload_error(caplog)
        assert _sample(bridge, LAST_OK) == 0
        await publish(broker.port, [("gen0/d/m", b"1.5")])
        await _delivered(api, "v0-d", 1.5)
        _rewrite(path, _generation(1))
        await _until_sample(bridge, SUCCESSES, 1, "the good save applied")
        assert _sample(bridge, LAST_OK) == 1
        await _publish_retained(broker.port, "gen1/d/m", b"2.5")
        await _delivered(api, "v1-d", 2.5)
    assert _sample(bridge, *FAILURES) == 2
    assert TOKEN not in caplog.text
