"""``alerts apply``: create the planned alert rules one by one through the API client (its
alerts budget paces them at 60/min), each between an intent and its ledger entry.

Per alert: the intent is written (durably) before the ``POST``; after the ``201`` the created
entry (id, hash, time) replaces it. A failure that proves nothing was created (429 after the
client's retries, a refused token, a 400, a wrong URL) removes the intent again; one that may
have reached Metriqo (a timeout, a 5xx, an unreadable answer, or a network error, since the
client may have retried after a timeout) keeps it, so the next run says
"possibly created" rather than create a second alert silently. The first failure stops the
run: the remaining alerts are left for the next one.

Give it a client whose :class:`~bridge.api.client.RetryPolicy` makes one attempt
(:data:`ONE_ATTEMPT`): the client would otherwise send a ``POST`` again after a timeout or a
5xx that Metriqo may have processed, creating the alert twice without anyone knowing. Only a
429 (refused, so nothing was created) is sent again here, after the pause the client's pacer
took from its ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bridge import failpoints
from bridge.api.alert_ledger import Ledger, LedgerEntry, PlanItem, body_hash, now_iso
from bridge.api.client import ApiClient, RetryPolicy
from bridge.api.models import AlertCreated, AlertRule, format_time
from bridge.errors import ApiBadResponse, ApiError, ApiRateLimited, ApiUnavailable

ONE_ATTEMPT = RetryPolicy(attempts=1)
RATE_LIMITED_ATTEMPTS = 5  # 429s in a row for one alert before apply gives up (exit 75)


@dataclass(slots=True)
class ApplyResult:
    created: list[LedgerEntry] = field(default_factory=list)
    error: ApiError | None = None
    possibly_created: str | None = None  # the name left as an intent by ``error``


async def apply(
    items: Sequence[PlanItem],
    api: ApiClient,
    ledger: Ledger,
    progress: Callable[[str], None] = lambda _line: None,
) -> ApplyResult:
    """Creates every ``create`` item of ``items`` in order."""
    todo = [item for item in items if item.kind == "create"]
    result = ApplyResult()
    for n, item in enumerate(todo, 1):
        rule = item.rule
        assert rule is not None
        body = rule.body()
        digest = body_hash(body)
        ledger.put(LedgerEntry(rule.name, "intent", digest, body, now_iso()))
        try:
            created = await _create(api, rule)
        except ApiError as exc:
            result.error = exc
            if isinstance(exc, ApiUnavailable | ApiBadResponse):
                # A timeout, a 5xx or an unreadable 2xx (on this attempt or an earlier one the
                # client retried) may have created it: keep the intent, reported next time.
                result.possibly_created = rule.name
            else:
                ledger.drop(rule.name)  # the API answered without creating it
            return result
        failpoints.hit("alerts_after_create_before_ledger")  # tests crash here
        at = format_time(created.created_at) if created.created_at is not None else now_iso()
        entry = LedgerEntry(rule.name, "created", digest, body, at, created.id)
        ledger.put(entry)
        result.created.append(entry)
        progress(f"[{n}/{len(todo)}] created {created.id} {rule.name!r}")
    return result


async def _create(api: ApiClient, rule: AlertRule) -> AlertCreated:
    """One alert; a 429 is sent again (the pacer holds it for the ``Retry-After``)."""
    for attempt in range(1, RATE_LIMITED_ATTEMPTS + 1):
        try:
            return await api.create_alert(rule)
        except ApiRateLimited:
            if attempt == RATE_LIMITED_ATTEMPTS:
                raise
    raise AssertionError("unreachable")
