"""Packing spooled records into API requests. Pure: no I/O.

A request carries at most ``max_points`` data points (metric values) in total. Records are taken
oldest first and never split (the mapper already caps a record at 100 points), and records of
the same device and timestamp are merged into one object, as the API's body shape suggests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.mapping.timestamps import format_timestamp
from bridge.models import SpooledRecord


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
            h.update(r.seq.to_bytes(8, "big"))
            h.update("\x00".join(sorted(r.metrics)).encode("utf-8", "surrogatepass") + b"\x01")
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
        names.update(r.metrics)
    return Batch(tuple(taken), points)
