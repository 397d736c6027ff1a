"""The demo's tour of the rest of the Metriqo API: the mapping file's alert rules applied, an
alert firing, the registry view and a verify run, each against the demo's local API and each
part of the demo's verdict.

- **alerts**: before the fleet publishes, the mapping file's ``alerts:`` are planned and applied
  (:mod:`bridge.api.alert_apply`, the code of ``alerts apply``) with a ledger in the demo's
  temporary directory. Every alert's ``notify`` URL is replaced by the URL of the demo's own
  :class:`~bridge.lab.webhook.WebhookReceiver`: the file's URLs point at the plant's receivers,
  and a notification must not leave the machine. At the end, every alert that a delivered point
  must have fired has called the receiver (the local API fires on the first point that meets
  the condition, see :mod:`bridge.lab.apiserver.alerts`; which ones must fire is predicted from
  what the fleet published, not from what the API stored).
- **registry**: what ``metriqo-bridge devices`` finds (:mod:`bridge.reconcile.registry`): the
  API's registry against the spool's table of devices delivered for; every finding must be 0.
- **verify**: what ``metriqo-bridge verify`` finds (:mod:`bridge.reconcile.landed`) for every
  minute of the spool's audit of accepted points, not a sample: all must agree.

The registry and verify queries are not paced at the contract's 300/min: the demo's local API
does not limit its GETs (the read-back is the demo's oracle), and a paced verify of every
series would double the demo's run time. The alerts keep their 60/min.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from bridge.api.alert_apply import ONE_ATTEMPT, apply
from bridge.api.alert_ledger import LEDGER_NAME, Ledger, LedgerError, plan
from bridge.api.client import ApiClient, Budgets
from bridge.api.models import AlertRule
from bridge.cli.api_tools import read_spool
from bridge.cli.devices import fetch_registry
from bridge.cli.verify import check_sample
from bridge.errors import ApiError
from bridge.lab.apiserver.server import LocalApi
from bridge.lab.demo_check import by_series, sent_points
from bridge.lab.fleet_devices import ExpectedPoint
from bridge.lab.webhook import WebhookReceiver
from bridge.mapping.loader import load_mapping_alerts
from bridge.reconcile.landed import Report
from bridge.reconcile.registry import FINDINGS, RegistryReport, reconcile
from bridge.settings import Settings
from bridge.spool.audit import AuditRow, DeliveredDevice
from bridge.spool.store import Spool

_UNPACED = Budgets(devices=60_000.0, metrics=60_000.0)  # see the module docstring
_WEBHOOK_WAIT_S = 10.0  # the notifier calls in the background, each with a 5 s timeout
_SILENT_FOR_S = 3600.0  # the `devices` default
_INDENT = " " * 11
# The conditions as the contract defines them (not the local API's own table: this is the oracle).
_MEETS: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_FINDING_WORDS = {
    "unknown": "unknown",
    "silent": "silent",
    "offline_delivering": "offline yet delivering",
    "online_not_delivered": "online not delivered",
}


@dataclass(slots=True)
class ApiChecks:
    """The summary lines of the tour and its failures (short phrases for the RESULT line)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class DemoApiTools:
    """The webhook receiver for the demo's run, the alerts applied, and the checks at the end.

    Use: ``async with DemoApiTools(mapping_file, tmp, token) as tools``, then
    :meth:`apply_alerts` once the API and the bridge run (before the fleet publishes), and
    :meth:`check` after delivery.
    """

    def __init__(self, mapping_file: Path, state_dir: Path, token: str) -> None:
        """Raises: ConfigError: the mapping file is invalid (the CLI exits 78)."""
        _rules, desired, _index = load_mapping_alerts(mapping_file)
        self.desired = [d.rule for d in desired]
        self.applied: list[AlertRule] = []
        self._ledger_path = state_dir / LEDGER_NAME
        self._token = token
        self._hook = WebhookReceiver()
        self._problems: list[str] = []

    async def __aenter__(self) -> Self:
        await self._hook.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._hook.__aexit__(*exc_info)

    async def apply_alerts(self, settings: Settings) -> None:
        """Plan and apply the file's alerts, their webhooks sent to the demo's receiver."""
        if not self.desired:
            print("  alerts   none in the mapping file (an alerts: section is applied here)")
            return
        rules = [dataclasses.replace(r, webhook_url=self._hook.url) for r in self.desired]
        print(
            f"  alerts   {len(rules)} in the mapping file, their webhooks sent to the demo's "
            f"receiver {self._hook.url}"
        )
        try:
            ledger = Ledger.load(self._ledger_path)
            ledger.claim(settings.sender.base_url)
            items = plan(rules, ledger)
            for item in items:
                print(f"{_INDENT}{item.describe()}")
            async with ApiClient(settings.sender, self._tokens, retry=ONE_ATTEMPT) as api:
                result = await apply(
                    items, api, ledger, lambda s: print(f"{_INDENT}{s}", flush=True)
                )
        except LedgerError as exc:
            self._problems.append(f"alerts apply failed: {exc}")
            return
        names = {e.name for e in result.created}
        self.applied = [r for r in rules if r.name in names]
        if result.error is not None:
            self._problems.append(f"alerts apply failed: {result.error}")

    async def check(
        self, settings: Settings, api: LocalApi, published: list[ExpectedPoint]
    ) -> ApiChecks:
        """The alerts fired, the registry view and a verify run; their lines and failures."""
        out = ApiChecks(problems=list(self._problems))
        await self._check_alerts(api, published, out)
        try:
            delivered, evicted, audit = read_spool(settings, _spool_tables)
            registry = await fetch_registry(
                ApiClient(settings.sender, self._tokens, budgets=_UNPACED)
            )
            view = reconcile(registry, delivered, datetime.now(UTC), _SILENT_FOR_S, evicted)
            client = ApiClient(settings.sender, self._tokens, budgets=_UNPACED)
            report = await check_sample(client, audit, len(audit))
        except ApiError as exc:
            out.problems.append(f"the registry view or verify failed: API: {exc}")
            return out
        _registry_lines(view, out)
        _verify_lines(report, out)
        return out

    async def _check_alerts(
        self, api: LocalApi, published: list[ExpectedPoint], out: ApiChecks
    ) -> None:
        if not self.applied:
            return
        must = must_fire(self.applied, published)
        deadline = time.monotonic() + _WEBHOOK_WAIT_S
        while not must <= self._fired() and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):  # checked by the loop
                await self._hook.wait_for(len(self._hook.received) + 1, left)
        fired = self._fired()
        calls = len(self._hook.received)
        names = ", ".join(repr(n) for n in sorted(fired)) or "none"
        out.lines.append(
            f"  {'alert webhook calls':<24}{calls:>7}  for {len(fired)} of {len(self.applied)} "
            f"alert(s): {names}"
        )
        silent = sorted(must - fired)
        if silent:
            out.problems.append(
                f"alert(s) {', '.join(map(repr, silent))} crossed by delivered points did not "
                "call the webhook"
            )
        failed = api.notifier.failed + api.notifier.dropped
        if failed:
            out.problems.append(f"{failed} alert webhook call(s) failed or dropped")
        if not must:
            out.lines.append(f"{'':26}(no published value crosses an alert's threshold)")

    def _fired(self) -> set[str]:
        return {
            str(call.get("name"))
            for call in self._hook.received
            if isinstance(call, dict) and "name" in call
        }

    def _tokens(self) -> str:
        return self._token


def must_fire(alerts: Sequence[AlertRule], published: list[ExpectedPoint]) -> set[str]:
    """The names of the alerts that a delivered point meets (so they fire at least once).

    Coalesced series are left out: the API gets each window's folded value, not the published
    ones. A series under a deadband counts only the points the spool sends.
    """
    out: set[str] = set()
    for (device_id, metric), points in by_series(published).items():
        if points[0].coalesce is not None:
            continue
        values = [p.value for p in sent_points(points)]
        for alert in alerts:
            if alert.metric != metric or alert.device_id not in ("*", device_id):
                continue
            meets = _MEETS[alert.condition]
            if any(meets(v, alert.threshold) for v in values):
                out.add(alert.name)
    return out


def _spool_tables(spool: Spool) -> tuple[list[DeliveredDevice], int, list[AuditRow]]:
    """The delivered devices, how many were evicted, and every audited minute."""
    return spool.audit.devices(), spool.audit.evicted(), spool.audit.rows(0, 2**62)


def _registry_lines(view: RegistryReport, out: ApiChecks) -> None:
    counts = view.counts()
    found = ", ".join(f"{counts[name]} {_FINDING_WORDS[name]}" for name in FINDINGS)
    out.lines.append(
        f"  {'registry (devices)':<24}{view.registered:>7}  registered, {view.delivered} "
        f"delivered for: {found}"
    )
    bad = [f"{counts[name]} {_FINDING_WORDS[name]}" for name in FINDINGS if counts[name]]
    if bad:
        out.problems.append(f"registry view: {', '.join(bad)}")


def _verify_lines(report: Report, out: ApiChecks) -> None:
    gaps = report.count("gap")
    mismatches = len(report.findings) - report.count("agree") - gaps
    out.lines.append(
        f"  {'verify':<24}{len(report.findings):>7}  accepted minute(s) checked with "
        f"{report.queries} GET /metrics queries: {report.count('agree')} agree, {gaps} gaps, "
        f"{mismatches} mismatches"
    )
    if not report.findings:
        out.problems.append("verify found no accepted minute in the spool's audit")
    elif not report.ok:
        out.problems.append(f"verify: {gaps} gap(s), {mismatches} mismatch(es)")
