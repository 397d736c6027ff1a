"""The local ledger of the alert rules ``metriqo-bridge alerts apply`` created, and the plan
that compares it with the mapping file's ``alerts:``.

Why a ledger: the API can create an alert rule but not list, update or delete one, so what
exists in Metriqo is known only from what the bridge itself created. The ledger
(``alerts-ledger.json`` in the state directory) holds per alert name the id Metriqo gave it, a
hash of the body it was created with (and the body, to say what changed) and the time.

The dangerous moment is between Metriqo's ``201`` and the ledger write: a crash there leaves an
alert in Metriqo that the ledger does not know, and the next ``apply`` would create it again.
So ``apply`` records an **intent** (written durably) before each ``POST``, and replaces it with
the created entry after the ``201``. An intent found later means "possibly created": it is
reported, never sent again on its own, until the user has looked in the dashboard and said
what is there (``alerts adopt NAME ID`` or ``alerts forget NAME``).

Every write is atomic (a temporary file, fsync, rename, fsync of the directory): a crash leaves
the previous ledger or the next one, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import orjson

from bridge.api.models import AlertRule

LEDGER_NAME = "alerts-ledger.json"
_VERSION = 1
_SYMBOL = {"gt": ">", "lt": "<", "gte": ">=", "lte": "<="}


class LedgerError(Exception):
    """The ledger file cannot be read or written (the CLI reports it with its path)."""


class LedgerBusy(LedgerError):
    """Another ``alerts`` command holds the ledger's lock."""


def lock_ledger(path: Path) -> int:
    """Takes the ledger's lock (``alerts-ledger.json.lock``, an flock released when the
    returned descriptor is closed, or the process ends): two applies at once could each
    create the same alert."""
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(f"{lock}: cannot open the alerts ledger's lock: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise LedgerBusy(
            f"{path}: another `metriqo-bridge alerts` command is using this ledger; "
            "run again when it has finished"
        ) from None
    return fd


def body_hash(body: dict[str, object]) -> str:
    """A stable hash of an alert's ``POST`` body (keys sorted)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One alert: ``created`` (``id`` known) or ``intent`` (sent, answer not recorded)."""

    name: str
    state: Literal["created", "intent"]
    hash: str
    body: dict[str, object]
    at: str  # ISO 8601: created_at of a created alert, the time of sending for an intent
    id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "id": self.id,
            "hash": self.hash,
            "body": self.body,
            "at": self.at,
        }


class Ledger:
    """The ledger file: :meth:`load`, look at :attr:`entries`, and :meth:`put` / :meth:`drop`
    (each writes the whole file atomically)."""

    def __init__(
        self,
        path: Path,
        entries: dict[str, LedgerEntry] | None = None,
        api: str | None = None,
    ) -> None:
        self.path = path
        self.entries: dict[str, LedgerEntry] = dict(entries or {})
        self.api = api  # the api.base_url the alerts were created at

    def claim(self, base_url: str) -> None:
        """Refuses a ledger of another API (say, staging's state directory used against
        production): its entries say nothing about what exists there."""
        if self.entries and self.api is not None and self.api != base_url:
            raise LedgerError(
                f"{self.path}: the alerts ledger records alerts created at {self.api}, not at "
                f"api.base_url {base_url}; use the state directory (--state-dir) of that API"
            )
        self.api = base_url

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """The ledger at ``path`` (empty if there is none yet)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise LedgerError(f"{path}: cannot read the alerts ledger: {exc.strerror}") from None
        try:
            doc = orjson.loads(raw)
            if doc.get("version") != _VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {_VERSION}")
            entries = {
                name: LedgerEntry(
                    name, e["state"], e["hash"], dict(e["body"]), e["at"], e.get("id")
                )
                for name, e in doc["alerts"].items()
            }
            api = doc.get("api")
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerError(
                f"{path}: the alerts ledger is unreadable ({exc}); it is left as it is"
            ) from None
        return cls(path, entries, api if isinstance(api, str) else None)

    def put(self, entry: LedgerEntry) -> None:
        self.entries[entry.name] = entry
        self._write()

    def drop(self, name: str) -> None:
        self.entries.pop(name, None)
        self._write()

    def _write(self) -> None:
        doc = {
            "version": _VERSION,
            "api": self.api,
            "alerts": {name: e.to_json() for name, e in sorted(self.entries.items())},
        }
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot write the alerts ledger: {exc}") from None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


Kind = Literal["create", "unchanged", "changed", "removed", "unsure"]
NEEDS_ACTION: frozenset[Kind] = frozenset({"changed", "removed", "unsure"})


@dataclass(frozen=True, slots=True)
class PlanItem:
    """What one alert name comes to: the file's rule and/or the ledger's entry."""

    kind: Kind
    name: str
    rule: AlertRule | None
    entry: LedgerEntry | None

    def describe(self) -> str:
        """One line (two for drift: what it is, and what the user must do)."""
        name, entry = self.name, self.entry
        if self.kind == "create":
            assert self.rule is not None
            return f"+ create {name!r}: {summary(self.rule.body())}"
        assert entry is not None
        if self.kind == "unchanged":
            return f"= {name!r} exists as {entry.id} (created {entry.at})"
        forget = f"`metriqo-bridge alerts forget {_quoted(name)}`"
        if self.kind == "changed":
            assert self.rule is not None
            return (
                f"! {name!r} ({entry.id}) differs from the file: "
                f"{differences(entry.body, self.rule.body())}\n"
                f"  The API cannot update an alert: delete alert {entry.id} {name!r} in the "
                f"Metriqo dashboard, then run {forget} and `metriqo-bridge alerts apply`; "
                "the new version will be created as a new alert (with a new id)."
            )
        if self.kind == "removed":
            return (
                f"! {name!r} ({entry.id}) is no longer in the file\n"
                f"  The API cannot delete an alert: delete alert {entry.id} {name!r} in the "
                f"Metriqo dashboard, then run {forget}."
            )
        return (
            f"? {name!r} was sent at {entry.at} but its answer was never recorded (the run "
            "stopped): it may exist in Metriqo\n"
            f"  Look for alert {name!r} in the Metriqo dashboard. If it is there, run "
            f"`metriqo-bridge alerts adopt {_quoted(name)} ALERT_ID` with its id; if it is "
            f"not, run {forget} and `metriqo-bridge alerts apply` creates it."
        )


def plan(desired: Sequence[AlertRule], ledger: Ledger) -> list[PlanItem]:
    """The file's alerts against the ledger: in the file's order, then the removed ones."""
    items: list[PlanItem] = []
    names = set()
    for rule in desired:
        names.add(rule.name)
        entry = ledger.entries.get(rule.name)
        if entry is None:
            items.append(PlanItem("create", rule.name, rule, None))
        elif entry.state == "intent":
            items.append(PlanItem("unsure", rule.name, rule, entry))
        elif entry.hash != body_hash(rule.body()):
            items.append(PlanItem("changed", rule.name, rule, entry))
        else:
            items.append(PlanItem("unchanged", rule.name, rule, entry))
    for name, entry in sorted(ledger.entries.items()):
        if name not in names:
            kind: Kind = "unsure" if entry.state == "intent" else "removed"
            items.append(PlanItem(kind, name, None, entry))
    return items


def summary(body: dict[str, object]) -> str:
    """``temp > 30 on line-1, notify https://hooks.example.com/…`` (the URL's path is left
    out: it often holds the receiver's secret)."""
    notify = body.get("notify")
    url = str(notify.get("url", "")) if isinstance(notify, dict) else ""
    parts = urlsplit(url)
    where = f"{parts.scheme}://{parts.netloc}/…" if parts.netloc else "?"
    device = body.get("device_id")
    devices = "every device" if device == "*" else str(device)
    cond = _SYMBOL.get(str(body.get("condition")), str(body.get("condition")))
    return f"{body.get('metric')} {cond} {body.get('threshold')} on {devices}, notify {where}"


def differences(old: dict[str, object], new: dict[str, object]) -> str:
    """``threshold 30.0 → 35.0; condition gt → gte`` (a webhook change is named, not shown)."""
    out = []
    for key in ("device_id", "metric", "condition", "threshold"):
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)} → {new.get(key)}")
    if old.get("notify") != new.get("notify"):
        out.append("notify URL changed")
    return "; ".join(out) or "its body changed"


def _quoted(name: str) -> str:
    return "'" + name.replace("'", "'\\''") + "'"
