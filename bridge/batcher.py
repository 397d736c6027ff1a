"""Packing spooled records into API requests. Pure: no I/O.

A request carries at most ``max_points`` data points (metric values) in total. Records are taken
oldest first and never split (the mapper already caps a record at 100 points), and records of
the same device and timestamp are merged into one object, as the API's body shape suggests.
When one device's backlog would fill the requests while others wait, :func:`take_fair_batches`
gives each device an equal quantum per request instead, each device's records still in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.mapping.timestamps import format_timestamp
from bridge.models import SpooledRecord, sorted_names


@dataclass(frozen=True, slots=True)
class Batch:
    """One request's worth of records, fixed for every retry of it."""

    records: tuple[SpooledRecord, ...]
    points: int

    @property
    def seqs(self) -> list[int]:
        """Spool positions of the records."""
        return [r.seq for r in self.records]

    @property
    def idempotency_key(self) -> str:
        """Same for every attempt of this batch, also after a restart: built from the seqs and
        metric names, since a refused record is retried as parts holding some of its metrics."""
        h = hashlib.blake2b(digest_size=12)
        for r in self.records:
            h.update(r.seq.to_bytes(8, "big") + sorted_names(tuple(r.metrics)) + b"\x01")
        return h.hexdigest()

    def body_objects(self) -> list[dict[str, object]]:
        """The request objects: one per (device, timestamp), metrics merged."""
        objects: list[dict[str, object]] = []
        by_key: dict[tuple[str, int], dict[str, float]] = {}
        for r in self.records:
            key = (r.device_id, r.ts_us)
            merged = by_key.get(key)
            if merged is not None and merged.keys().isdisjoint(r.metrics):
                merged.update(r.metrics)
                continue
            metrics = dict(r.metrics)
            by_key[key] = metrics
            objects.append(
                {
                    "device_id": r.device_id,
                    "timestamp": format_timestamp(r.ts_us),
                    "metrics": metrics,
                }
            )
        return objects


def take_batch(
    records: Sequence[SpooledRecord], max_points: int, *, single_object: bool = False
) -> Batch:
    """The longest prefix of ``records`` whose points fit in ``max_points`` (at least one).

    With ``single_object`` (for APIs that take one object per request) the prefix also stops at
    the first record that cannot merge into the first one's object.
    """
    taken: list[SpooledRecord] = []
    points = 0
    names: set[str] = set()
    for r in records:
        if taken and points + r.points > max_points:
            break
        if single_object and taken:
            first = taken[0]
            if (r.device_id, r.ts_us) != (first.device_id, first.ts_us) or not names.isdisjoint(
                r.metrics
            ):
                break
        taken.append(r)
        points += r.points
        if single_object:
            names.update(r.metrics)
    return Batch(tuple(taken), points)


def dominant_device(batches: Sequence[Batch]) -> str | None:
    """The device holding more than half of the points of ``batches``, if any."""
    per: dict[str, int] = {}
    total = 0
    for b in batches:
        total += b.points
        for r in b.records:
            per[r.device_id] = per.get(r.device_id, 0) + r.points
    device = max(per, key=per.__getitem__, default=None)
    return device if device is not None and 2 * per[device] > total else None


def take_fair_batches(
    queues: Sequence[Sequence[SpooledRecord]],
    count: int,
    max_points: int,
    *,
    single_object: bool = False,
) -> list[Batch]:
    """Up to ``count`` batches taken across per-device queues, round-robin (deficit round
    robin with a quantum of ``max_points / devices`` points, at least one record).

    Each queue holds one device's waiting records in seq order, and the queues come in the
    order devices should be served (oldest waiting record first). A device's records are
    taken in order and never skipped, so it stays in order; a batch's records are in seq
    order. As with oldest-first batches, a partial batch is returned only as the first one.
    With ``single_object`` each batch is one object of one device, the devices taking turns.
    """
    lanes = [list(q) for q in queues if q]
    pos = [0] * len(lanes)
    batches: list[Batch] = []
    turn = 0
    while len(batches) < count and lanes:
        if single_object:
            k = turn % len(lanes)
            batch = take_batch(lanes[k][pos[k] :], max_points, single_object=True)
            turn += 1
            pos[k] += len(batch.records)
        else:
            batch = _fair_round(lanes, pos, max_points, turn)
            turn += 1
        if not batch.records or (batches and batch.points < max_points):
            break
        batches.append(batch)
        lanes, pos = _left(lanes, pos)
    return batches


def _fair_round(
    lanes: list[list[SpooledRecord]], pos: list[int], max_points: int, turn: int
) -> Batch:
    """One batch: each lane in turn gives up to a quantum of points, until it is full."""
    quantum = max(1, max_points // len(lanes))
    taken: list[SpooledRecord] = []
    points = 0
    progressed = True
    while progressed and points < max_points:
        progressed = False
        for j in range(len(lanes)):
            k = (turn + j) % len(lanes)
            lane, i, got = lanes[k], pos[k], 0
            while i < len(lane) and (got == 0 or got + lane[i].points <= quantum):
                if points + lane[i].points > max_points:
                    break
                got += lane[i].points
                points += lane[i].points
                taken.append(lane[i])
                i += 1
            progressed = progressed or i > pos[k]
            pos[k] = i
            if points >= max_points:
                break
    taken.sort(key=lambda r: r.seq)
    return Batch(tuple(taken), points)


def _left(
    lanes: list[list[SpooledRecord]], pos: list[int]
) -> tuple[list[list[SpooledRecord]], list[int]]:
    """The lanes with records left, and their positions."""
    keep = [k for k in range(len(lanes)) if pos[k] < len(lanes[k])]
    return [lanes[k] for k in keep], [pos[k] for k in keep]
