"""``metriqo-bridge demo``: broker, API, sensor fleet and bridge on this machine, end to end.

Starts a throwaway mosquitto and a local Metriqo-compatible API (with the real API's 1000
requests per minute limit), runs the bridge between them with a temporary spool, publishes from a
simulated fleet with devices for every rule of the mapping (the ignore rules' included) and of
the Tasmota and Zigbee2MQTT recipes, which join the mapping (:mod:`bridge.lab.demo_recipes`), and
then checks the result the way a user would: by asking the API over HTTP whether every published
point is there, once, at its timestamp, coalesced where the rule coalesces, and that nothing
arrived for what was to be ignored (:mod:`bridge.lab.demo_check`). Nothing leaves 127.0.0.1 and
nothing is left behind.

The API token is random per run and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bridge.app import Bridge
from bridge.config.loader import load_settings
from bridge.errors import (
    EX_FAILURE,
    EX_INTERRUPTED,
    EX_OK,
    EX_TERMINATED,
    EX_UNAVAILABLE,
    Terminated,
)
from bridge.lab.apiserver.ratelimits import EndpointLimits
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.broker import BrokerUnavailable, LocalBroker
from bridge.lab.demo_api_tools import ApiChecks, DemoApiTools
from bridge.lab.demo_check import (
    Verification,
    by_series,
    compare_series,
    held_back,
    list_devices,
    lowest_count,
    series,
)
from bridge.lab.demo_recipes import DemoMapping, combine
from bridge.lab.examples import choose_mapping
from bridge.lab.fleet import FleetError, SensorFleet
from bridge.limits import MAX_POINTS_PER_REQUEST
from bridge.logs import setup_logging
from bridge.mapping.loader import load_mappings
from bridge.mapping.mapper import Rule

_TICK_S = 1.0


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every published point arrived, 1 otherwise, 69 without mosquitto.

    A ConfigError from the mapping file propagates (the CLI exits 78 for it).
    """
    started = time.monotonic()
    args.mappings, where = choose_mapping(args.mappings)
    print(where, flush=True)
    load_mappings(args.mappings)  # before starting anything: a bad file fails fast, named
    setup_logging("WARNING")  # the bridge's INFO lines would bury the progress lines
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="metriqo-demo-")))
            # The file's rules plus the recipes' (bridge.lab.demo_recipes), in one mapping file.
            mapping = combine(args.mappings, tmp / "topic-mappings.yaml")
            broker = LocalBroker()
            # Registered before start(): a Ctrl-C in the middle of it still stops mosquitto.
            stack.push(broker)
            broker.start()
            try:
                demo = _Demo(args, mapping, tmp, broker.port, started)
            except ValueError as exc:
                print(f"metriqo-bridge demo: {exc}", file=sys.stderr)
                return EX_FAILURE
            return asyncio.run(demo.run())
    except BrokerUnavailable as exc:
        print(f"metriqo-bridge demo: cannot start a local broker: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except KeyboardInterrupt as exc:
        print("\ninterrupted: local broker, API and bridge stopped", file=sys.stderr)
        return EX_TERMINATED if isinstance(exc, Terminated) else EX_INTERRUPTED


# The read-back is the demo's oracle (one GET /metrics per series), not a client under the
# budget: its GETs are not rate-limited; telemetry and alerts keep the contract's limits.
_API_LIMITS = EndpointLimits(devices=None, metrics=None)


class _Demo:
    """One demo run against an already started broker."""

    def __init__(
        self,
        args: argparse.Namespace,
        mapping: DemoMapping,
        tmp: Path,
        broker_port: int,
        started: float,
    ) -> None:
        self.args = args
        self.mapping = mapping
        self.rules = mapping.rules
        self.tmp = tmp
        self.broker_port = broker_port
        self.started = started
        self.token = secrets.token_urlsafe(24)
        self.fleet = SensorFleet(
            "127.0.0.1",
            broker_port,
            args.devices,
            args.rate,
            rules=self.rules,
            payloads=mapping.payloads,
            topics=mapping.topics,
        )
        # Alerts applied, an alert firing, the registry view and verify (bridge.lab.demo_api_tools).
        self.tools = DemoApiTools(args.mappings, tmp, self.token)
        self.failure: str | None = None
        self.recipe_points: Counter[str] = Counter()  # points read back, per recipe

    async def run(self) -> int:
        async with LocalApi(token=self.token, limits=_API_LIMITS) as api, self.tools:
            settings = load_settings(
                environ={},
                overrides={
                    "mqtt.host": "127.0.0.1",
                    "mqtt.port": str(self.broker_port),
                    "mqtt.client_id": "metriqo-bridge-demo",
                    "api.base_url": api.url,
                    "api.token": self.token,
                    "mapping.file": str(self.mapping.path),
                    "spool.path": str(self.tmp / "spool.db"),
                    "http.port": "0",
                    "batch.linger_s": "0.5",
                    "log_level": "WARNING",
                },
            )
            bridge = Bridge(settings, self.rules, lambda: self.token)
            delivered_in_time = await self._run_bridge(bridge, api)
            if self.failure is not None:
                print(f"RESULT: FAILED — {self.failure}")
                return EX_FAILURE
            verification = await self._verify(api.url)
            checks = await self.tools.check(settings, api, self.fleet.expected)
            return self._summary(bridge, api, verification, delivered_in_time, checks)

    # -- running ---------------------------------------------------------------------------

    async def _run_bridge(self, bridge: Bridge, api: LocalApi) -> bool:
        """Run bridge and fleet; True when every expected point reached the API in time."""
        delivered = False
        async with asyncio.TaskGroup() as tg:
            tg.create_task(bridge.run(), name="demo.bridge")
            try:
                if not await _wait_connected(bridge):
                    problems = "; ".join(bridge.problems()) or "not connected"
                    self.failure = f"the bridge did not connect to the broker in 10 s: {problems}"
                    return False
                publishing = self._print_setup(bridge, api)
                await self.tools.apply_alerts(bridge.settings)  # before any telemetry
                print(publishing, flush=True)
                publish = tg.create_task(self._publish(), name="demo.fleet")
                await self._watch(bridge, api, publish.done, deadline=None)
                if self.failure is None:
                    delivered = await self._await_delivery(bridge, api)
            finally:
                # A Ctrl-C cancels this task, but not the fleet's thread: stop it explicitly.
                self.fleet.stop()
                bridge.stop()
        return delivered

    async def _await_delivery(self, bridge: Bridge, api: LocalApi) -> bool:
        timeout = self.args.timeout
        print(
            f"Publishing done; waiting for the bridge to deliver (up to {timeout:g} s)", flush=True
        )
        want = lowest_count(self.fleet.expected)
        # Coalesced windows go out once closed: the last one a window plus the grace after
        # the last message, then up to a second more for the bridge's housekeeping tick.
        windows_s = [r.coalesce.window_us / 1e6 for r in self.rules if r.coalesce is not None]
        grace_s = bridge.settings.mapping.coalesce_grace_s + 1.0
        settled = time.monotonic() + (max(windows_s) + grace_s if windows_s else 0.0)
        delivered = await self._watch(
            bridge,
            api,
            lambda: (
                api.store.point_count() >= want
                and time.monotonic() >= settled
                and bridge.spool.file.depth_points == 0
            ),
            deadline=time.monotonic() + timeout,
        )
        self._progress(bridge, api)
        if not delivered:
            grace = bridge.settings.stop_timeout_s
            print(
                f"Gave up waiting after {timeout:g} s; stopping the bridge "
                f"(it goes on delivering for up to {grace:g} s)",
                flush=True,
            )
        return delivered

    async def _publish(self) -> None:
        try:
            await asyncio.to_thread(self.fleet.publish_for, self.args.seconds, None)
        except FleetError as exc:
            self.failure = f"the fleet could not publish: {exc}"

    async def _watch(
        self,
        bridge: Bridge,
        api: LocalApi,
        finished: Callable[[], bool],
        deadline: float | None,
    ) -> bool:
        """Print a progress line about once a second until ``finished()`` or the deadline."""
        next_tick = time.monotonic() + _TICK_S
        while not finished():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now >= next_tick:
                self._progress(bridge, api)
                next_tick += _TICK_S
            await asyncio.sleep(0.05)
        return True

    def _progress(self, bridge: Bridge, api: LocalApi) -> None:
        received = bridge.metrics.registry.get_sample_value(
            "metriqo_bridge_messages_received_total"
        )
        requests = api.store.requests
        limited = sum(1 for r in requests if r.status == 429)
        print(
            f"  {time.monotonic() - self.started:5.1f}s  "
            f"published {self.fleet.published:>6} msgs  "
            f"received {int(received or 0):>6} msgs  "
            f"in spool {bridge.spool.file.depth_points:>5} pts  "
            f"delivered {api.store.point_count():>6} pts  "
            f"requests {len(requests):>4}" + (f" ({limited} rate-limited)" if limited else ""),
            flush=True,
        )

    def _print_setup(self, bridge: Bridge, api: LocalApi) -> str:
        a = self.args
        status_port = bridge.status.port if bridge.status is not None else None
        print("metriqo-bridge demo — everything runs on 127.0.0.1 and is removed afterwards")
        print(f"  broker   mosquitto on 127.0.0.1:{self.broker_port}")
        print(f"  API      {api.url}  (Metriqo-compatible, limit 1000 requests/min)")
        mapping = self.mapping
        joined = sum(1 for r in mapping.recipe_rules.values() if r not in mapping.in_file)
        print(f"  mapping  {a.mappings}  ({len(self.rules) - joined} rules)")
        for line in mapping.describe():
            print(line)
        if status_port is not None:
            print(f"  bridge   metrics at http://127.0.0.1:{status_port}/metrics")
        kinds = len({device.rule.name for device in self.fleet.devices})
        print(f"  fleet    {len(self.fleet.devices)} simulated devices of {kinds} kinds, e.g.")
        examples = {device.rule.name: device for device in reversed(self.fleet.devices)}
        width = max(len(device.streams[0].topic) for device in examples.values())
        for device in reversed(examples.values()):
            topic = device.streams[0].topic
            target = f"device {device.device_id}" if device.device_id else "ignored"
            print(f"             {topic:<{width}} → {target}  ({_kind(device.rule)})")
        for name, why in self.fleet.skipped_rules.items():
            print(f"           rule {name} is not simulated: {why}")
        simulated = {device.rule.name for device in self.fleet.devices}
        idle = [r.name for r in self.rules if r.name not in simulated | {*self.fleet.skipped_rules}]
        if idle:
            print(f"           no device left for rule(s) {', '.join(idle)}: raise --devices")
        return f"Publishing {a.rate:g} msg/s for {a.seconds:g} s (QoS 1)"

    # -- checking ----------------------------------------------------------------------------

    async def _verify(self, base_url: str) -> Verification:
        """Ask the API, as a user would, for every device and series the fleet produced."""
        expected = self.fleet.expected
        grouped = by_series(expected)
        result = Verification(
            devices_expected=len({p.device_id for p in expected}),
            series=len(grouped),
            receive_stamped=sum(
                1 for p in expected if p.timestamp_us is None and p.coalesce is None
            ),
            coalesced_series=sum(1 for points in grouped.values() if points[0].coalesce),
        )
        # Generous window: payload times are "now" when published, receive times a bit later;
        # a time format without milliseconds runs ahead of the clock for a device publishing
        # faster than once a second, by as far as the latest payload time says.
        latest = max((p.timestamp_us or 0 for p in expected), default=0) / 1_000_000
        start = datetime.fromtimestamp(time.time() - 3600, UTC)
        end = datetime.fromtimestamp(max(time.time(), latest) + 3600, UTC)
        recipe_of = {
            device.device_id: self.mapping.recipe_rules[device.rule.name]
            for device in self.fleet.devices
            if device.rule.name in self.mapping.recipe_rules
        }
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            listed = await list_devices(http, base_url)
            result.devices_listed = len(listed)
            result.devices_missing = sorted({p.device_id for p in expected} - listed)
            result.devices_unexpected = sorted(listed - {p.device_id for p in expected})
            for (device_id, metric), points in grouped.items():
                rows = await series(http, base_url, device_id, metric, (start, end))
                result.points_found += len(rows)
                if device_id in recipe_of:
                    self.recipe_points[recipe_of[device_id]] += len(rows)
                compare_series(points, rows, result)
        return result

    def _summary(
        self,
        bridge: Bridge,
        api: LocalApi,
        v: Verification,
        delivered_in_time: bool,
        checks: ApiChecks,
    ) -> int:
        fleet = self.fleet
        requests = api.store.requests
        per_request = [_points_in(r.body) for r in requests]
        biggest = max(per_request, default=0)
        accepted = sum(1 for r in requests if r.status == 201)
        limited = sum(1 for r in requests if r.status == 429)
        dead = _sum_samples(bridge, "metriqo_bridge_dead_letters_total")
        print()
        print("Summary")
        print(f"  messages published      {fleet.published:>7}  (acknowledged by the broker)")
        print(f"  points expected         {v.points_expected:>7}")
        print(f"  points delivered        {api.store.point_count():>7}  (accepted by the API)")
        print(
            f"  API requests            {len(requests):>7}  "
            f"({accepted} accepted, {limited} rate-limited, "
            f"{len(requests) - accepted - limited} other)"
        )
        print(f"  max points per request  {biggest:>7}  (API limit {MAX_POINTS_PER_REQUEST})")
        print(f"  dead letters            {int(dead):>7}")
        if bridge.spool.file.depth_points:
            print(
                f"  left in the spool       {bridge.spool.file.depth_points:>7}  "
                "(a real bridge sends them after a restart)"
            )
        print(
            f"  checked over HTTP       {v.points_found:>7}  points in {v.series} series of "
            f"{v.devices_listed} listed device(s)"
        )
        for recipe in self.mapping.recipes:
            found = self.recipe_points.get(recipe.name, 0)
            print(f"  {'from recipe ' + recipe.name:<24}{found:>7}  points read back")
        if v.receive_stamped:
            print(
                f"{'':26}({v.receive_stamped} stamped on receipt, no payload time: "
                "matched by value and count)"
            )
        if v.coalesced_series:
            print(f"{'':26}({v.coalesced_series} series coalesced: one point per window)")
        deliberate = _left_out_on_purpose(bridge, fleet)
        for line in checks.lines:
            print(line)
        print(f"  elapsed                 {time.monotonic() - self.started:>7.1f}  s")
        problems = v.problems()
        simulated = {self.mapping.recipe_rules.get(d.rule.name) for d in fleet.devices}
        problems.extend(
            f"no point of recipe {r.name} read back"
            for r in self.mapping.recipes
            if r.name in simulated and not self.recipe_points.get(r.name)
        )
        if biggest > MAX_POINTS_PER_REQUEST:
            problems.append(f"a request carried {biggest} points")
        lost = fleet.unrouted + fleet.rejected + fleet.unconfirmed
        if lost:
            problems.append(
                f"{fleet.unrouted} message(s) reached no subscriber, {fleet.rejected} refused, "
                f"{fleet.unconfirmed} unconfirmed by the broker"
            )
        if dead:
            problems.append(f"{int(dead)} dead letter(s)")
        problems.extend(deliberate + checks.problems)
        if not delivered_in_time and not problems:
            problems.append(f"delivery did not finish within {self.args.timeout:g} s")
        if problems:
            print(f"RESULT: FAILED — {', '.join(problems)}")
            return EX_FAILURE
        print(f"RESULT: OK — every published point arrived ({v.points_expected} points)")
        return EX_OK


async def _wait_connected(bridge: Bridge) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10.0):
            await bridge.started()
            # The bridge exposes its connection as state, not as an event: poll it briefly.
            while bridge.source is None or not bridge.source.state.connected:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            return True
    return False


def _kind(rule: Rule) -> str:
    """The rule's name and what it shows, for the setup lines."""
    shows = [
        what
        for what, present in (
            ("ignored", rule.ignore),
            (f"payload {rule.payload}", rule.payload != "json"),
            ("readings", rule.readings is not None),
            ("collect", rule.collect is not None),
            ("each", rule.each is not None),
            ("coalesced", rule.coalesce is not None),
        )
        if present
    ]
    return rule.name + (f": {', '.join(shows)}" if shows else "")


def _points_in(body: object) -> int:
    objects: Iterable[object] = body if isinstance(body, list) else [body]
    return sum(
        len(obj["metrics"])
        for obj in objects
        if isinstance(obj, dict) and isinstance(obj.get("metrics"), dict)
    )


def _left_out_on_purpose(bridge: Bridge, fleet: SensorFleet) -> list[str]:
    """Print what ignore rules and deadbands kept from the API, against what the fleet
    published for them; the mismatches, as problems."""
    problems = []
    ignored = int(_sum_samples(bridge, "metriqo_bridge_messages_ignored_total"))
    print(f"  ignored on purpose      {ignored:>7}  (of {fleet.ignored} sent to ignore rules)")
    if ignored != fleet.ignored:
        problems.append(f"{ignored} of {fleet.ignored} messages to ignore rules ignored")
    # The deadbands' decisions, predicted from what was published, against the counter.
    held = int(_sum_samples(bridge, "metriqo_bridge_points_held_back_total"))
    want_held = held_back(fleet.expected)
    if held or want_held:
        print(f"  held back by deadbands  {held:>7}  (of {want_held} expected: unchanged values)")
    if held != want_held:
        problems.append(f"{held} point(s) held back by deadbands, {want_held} expected")
    return problems


def _sum_samples(bridge: Bridge, name: str) -> float:
    return sum(
        sample.value
        for family in bridge.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    )
