"""``metriqo-bridge alerts plan|apply|forget|adopt``: the mapping file's ``alerts:`` as alert
rules in Metriqo, with a local ledger of what was created (:mod:`bridge.api.alert_ledger`,
docs/guide/alerts.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.cli.command import Subparsers
from bridge.cli.flags import add_settings_flags, settings_from
from bridge.errors import (
    EX_CONFIG,
    EX_FAILURE,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    ApiError,
    ApiNotFound,
    ApiRateLimited,
    ApiUnauthorized,
    ApiUnavailable,
)

if TYPE_CHECKING:
    from bridge.api.alert_ledger import Ledger, PlanItem
    from bridge.api.models import AlertRule
    from bridge.mapping.alert_rules import DesiredAlert
    from bridge.settings import Settings

KEYS = ("state_dir", "mapping.file", "api.base_url", "api.token_file", "log_level", "log_format")
EPILOG = (
    "exit codes: 0 nothing to do or everything done; 1 drift that needs action in the Metriqo "
    "dashboard (a changed or removed alert, or one that may have been created: each is printed "
    "with what to do), the API refused an alert (400), or the ledger is unreadable or belongs "
    "to another api.base_url; 69 the API is unavailable; 75 still rate limited (429) after the "
    "retries, or another alerts command is using the ledger: run again later; 78 the mapping "
    "file or the settings are invalid, the API refused the token, or api.base_url is wrong."
)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "alerts",
        help="create the mapping file's alert rules in Metriqo (plan, apply)",
        description="The mapping file's alerts: section as alert rules in Metriqo. The API can "
        "only create alerts, so a ledger in the state directory (alerts-ledger.json) records "
        "what apply created; plan and apply report drift (changed or removed entries) with "
        "what to do in the Metriqo dashboard. See docs/guide/alerts.md.",
        epilog=EPILOG,
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    plan = verbs.add_parser(
        "plan", help="show what apply would create, what exists, and drift", epilog=EPILOG
    )
    apply = verbs.add_parser(
        "apply", help="create the alerts not created yet (60/min), with progress", epilog=EPILOG
    )
    forget = verbs.add_parser(
        "forget",
        help="drop alerts from the ledger after deleting them in the dashboard",
        description="Drop NAME from the ledger: say so once the alert was deleted in the "
        "Metriqo dashboard (or was never created); the next apply creates the file's version.",
    )
    forget.add_argument("names", nargs="+", metavar="NAME", help="alert name as plan shows it")
    adopt = verbs.add_parser(
        "adopt",
        help="record an alert found in the dashboard (after a possibly-created report)",
        description="Record that alert NAME exists in Metriqo as ALERT_ID with the file's "
        "current content (after plan reported it as possibly created and the dashboard shows "
        "it).",
    )
    adopt.add_argument("name", metavar="NAME")
    adopt.add_argument("alert_id", metavar="ALERT_ID")
    for q in (plan, apply, forget, adopt):
        add_settings_flags(q, KEYS, print_config=False)
        q.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from bridge import failpoints
    from bridge.api.alert_ledger import LEDGER_NAME, Ledger, LedgerBusy, LedgerError, lock_ledger
    from bridge.config.pathnames import NamedBy
    from bridge.logs import setup_logging
    from bridge.mapping.loader import load_mapping_alerts

    settings = settings_from(args)
    setup_logging(settings.log_level, settings.log_format)
    failpoints.arm_from_env()
    named_by = NamedBy.setting(settings.origins, "mapping.file")
    _rules, desired, _index = load_mapping_alerts(settings.mapping.file, named_by)
    path = settings.state_dir / LEDGER_NAME
    lock = None
    try:
        if args.verb != "plan":  # plan only reads
            lock = lock_ledger(path)
        ledger = Ledger.load(path)
        ledger.claim(settings.sender.base_url)
        if args.verb == "forget":
            return _forget(ledger, args.names)
        if args.verb == "adopt":
            return _adopt(ledger, args.name, args.alert_id, [d.rule for d in desired])
        return _plan_or_apply(args.verb == "apply", settings, desired, ledger)
    except LedgerBusy as exc:
        print(f"metriqo-bridge: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except LedgerError as exc:
        print(f"metriqo-bridge: {exc}", file=sys.stderr)
        return EX_FAILURE
    finally:
        if lock is not None:
            os.close(lock)


def _plan_or_apply(
    apply: bool, settings: Settings, desired: list[DesiredAlert], ledger: Ledger
) -> int:
    from bridge.api.alert_ledger import NEEDS_ACTION, plan

    items = plan([d.rule for d in desired], ledger)
    print(f"{settings.mapping.file}: {len(desired)} alert rule(s); ledger {ledger.path}")
    for item in items:
        print(item.describe())
    creates = sum(item.kind == "create" for item in items)
    drift = [item for item in items if item.kind in NEEDS_ACTION]
    if not apply:
        print(
            f"plan: {creates} to create, "
            f"{sum(i.kind == 'unchanged' for i in items)} unchanged, {len(drift)} need(s) action"
        )
        return EX_FAILURE if drift else EX_OK
    code = _apply(settings, items, ledger, creates)
    if code != EX_OK:
        return code
    if drift:
        print(f"apply: {len(drift)} alert(s) need action in the Metriqo dashboard (above)")
        return EX_FAILURE
    return EX_OK


def _apply(settings: Settings, items: list[PlanItem], ledger: Ledger, creates: int) -> int:
    from bridge.api.alert_apply import ONE_ATTEMPT, apply
    from bridge.api.client import ApiClient
    from bridge.config.secrets import TokenSource
    from bridge.limits import ALERTS_REQUESTS_PER_MINUTE

    if creates == 0:
        print("apply: nothing to create")
        return EX_OK
    minutes = max(0, creates - 1) / ALERTS_REQUESTS_PER_MINUTE
    print(
        f"apply: creating {creates} alert(s) at up to {ALERTS_REQUESTS_PER_MINUTE}/min "
        f"(about {minutes * 60:.0f} s)"
    )
    token = TokenSource(settings.credentials)

    async def go() -> tuple[int, ApiError | None, str | None]:
        async with ApiClient(settings.sender, token, retry=ONE_ATTEMPT) as api:
            result = await apply(items, api, ledger, progress=lambda s: print(s, flush=True))
        return len(result.created), result.error, result.possibly_created

    done, error, unsure = asyncio.run(go())
    print(f"apply: {done} of {creates} created")
    if error is None:
        return EX_OK
    print(f"metriqo-bridge: alerts apply stopped: {error}", file=sys.stderr)
    if unsure is not None:
        print(
            f"metriqo-bridge: {unsure!r} may have been created; `metriqo-bridge alerts plan` "
            "says what to check",
            file=sys.stderr,
        )
    if isinstance(error, ApiUnavailable):
        return EX_UNAVAILABLE
    if isinstance(error, ApiRateLimited):
        return EX_TEMPFAIL
    if isinstance(error, ApiUnauthorized | ApiNotFound):
        return EX_CONFIG
    return EX_FAILURE


def _forget(ledger: Ledger, names: list[str]) -> int:
    missing = [n for n in names if n not in ledger.entries]
    if missing:
        print(
            f"metriqo-bridge: not in the ledger: {', '.join(map(repr, missing))}", file=sys.stderr
        )
        return EX_USAGE
    for name in names:
        entry = ledger.entries[name]
        ledger.drop(name)
        print(f"forgot {name!r} ({entry.id or 'possibly created'})")
    return EX_OK


def _adopt(ledger: Ledger, name: str, alert_id: str, rules: list[AlertRule]) -> int:
    from bridge.api.alert_ledger import LedgerEntry, body_hash, now_iso

    rule = next((r for r in rules if r.name == name), None)
    if rule is None:
        print(f"metriqo-bridge: no alert {name!r} in the mapping file", file=sys.stderr)
        return EX_USAGE
    body = rule.body()
    ledger.put(LedgerEntry(name, "created", body_hash(body), body, now_iso(), alert_id))
    print(f"recorded {name!r} as {alert_id}")
    return EX_OK


def ledger_path(state_dir: Path) -> Path:
    """Where the ledger of ``state_dir`` is (for docs and tests)."""
    from bridge.api.alert_ledger import LEDGER_NAME

    return state_dir / LEDGER_NAME
