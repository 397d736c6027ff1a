"""The settling side of the spool: every answer of the API to a request ends here.

Accepted records are counted as delivered in one transaction per call (the delivery loop
gathers several requests into one). They stay in ``records``, marked in the ``settled`` table,
until a sweep writes their audit, moves their ids to the delivered-id memory and deletes them,
for many settlements at once (:data:`~bridge.spool.schema.SETTLED` says what that saves);
meanwhile :class:`~bridge.spool.unswept.Unswept` keeps them out of everything that reads
waiting records. Refused records (all of a record, or some of its metrics) go to the dead
letters at once. The async side, which gathers the API's answers, is :mod:`bridge.settlement`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson

from bridge.spool import schema
from bridge.spool.audit import DeliveryAudit
from bridge.spool.file import IN_CHUNK, SpoolFile, due
from bridge.spool.schema import forget_delivered

_PRUNE_EVERY_S = 60.0
# A sweep of the settled records is due at this many, or this long after the first of them
# was settled. Not when nothing else waits: a live flow empties the spool at nearly every
# settlement. 512 records is a quarter of a second at 2,000 msg/s; 128 wrote 6 % more bytes
# per point in `bench disk`, 2,048 1 % more (round 14).
SWEEP_RECORDS = 512
SWEEP_EVERY_S = 5.0


class Settler:
    """Settles records handed out by the outbox; ``forget`` tells the outbox which left."""

    def __init__(
        self, file: SpoolFile, audit: DeliveryAudit, forget: Callable[[Sequence[int]], None]
    ) -> None:
        self._file = file
        self.audit = audit
        self._forget = forget
        self._next_prune = 0.0

    def delivered(self, seqs: Sequence[int], points: Sequence[int] | None = None) -> None:
        """Count delivered records as settled, in one transaction; sweep them out of the
        spool when a sweep is due (:meth:`sweep`).

        The delivery loop batches the seqs of several accepted requests into one call, so the
        commit of this transaction is shared by all of them. Seqs no longer waiting in the
        spool are skipped. ``points``, when given, are the points of each record as it was
        handed out (in the order of ``seqs``): records never change once stored, so when all
        are still there they are not read again.
        """
        file = self._file
        already = file.unswept.seqs  # the set itself: no method call per seq
        if points is None:
            seqs, known = [seq for seq in seqs if seq not in already], None
        else:
            pairs = [(seq, n) for seq, n in zip(seqs, points, strict=True) if seq not in already]
            seqs, known = [seq for seq, _n in pairs], [n for _seq, n in pairs]
        if seqs:
            file.freeing(lambda: self._settle(seqs, known))
        unswept = file.unswept
        if unswept.seqs and (
            len(unswept) >= SWEEP_RECORDS
            or due(file.clock(), (unswept.since or 0.0) + SWEEP_EVERY_S, SWEEP_EVERY_S)
        ):
            self.sweep()

    def _settle(self, seqs: Sequence[int], known: Sequence[int] | None) -> None:
        file = self._file
        db = file.conn
        now = file.clock()
        at_us = int(now * 1_000_000)
        points = 0
        settled: list[int] = []
        with file.transaction("delete", sync=False):
            for start in range(0, len(seqs), IN_CHUNK):
                chunk = tuple(seqs[start : start + IN_CHUNK])
                marks = ",".join("?" * len(chunk))
                # The audit of these points is written at their sweep, with this time. None of
                # them is in `settled` yet (see delivered), so the rows inserted are the records
                # still here: usually all of them, and then this is the only statement.
                inserted = db.execute(
                    f"INSERT OR IGNORE INTO settled (seq, at_us) "  # noqa: S608
                    f"SELECT seq, ? FROM records WHERE seq IN ({marks})",
                    (at_us, *chunk),
                ).rowcount
                if inserted == len(chunk) and known is not None:
                    settled += chunk
                    points += sum(known[start : start + IN_CHUNK])
                    continue
                found = db.execute(
                    f"SELECT seq, n FROM records WHERE seq IN ({marks})",  # noqa: S608
                    chunk,
                ).fetchall()
                settled += [seq for seq, _n in found]
                points += sum(int(n) for _seq, n in found)
            if due(now, self._next_prune, _PRUNE_EVERY_S):
                self._next_prune = now + _PRUNE_EVERY_S
                forget_delivered(db, at_us, file.settings.dedup_window_s)
            file.add_to_meta(db, "delivered_points", points)
        self._forget(seqs)
        file.unswept.add(settled, now)
        file.depth_records -= len(settled)
        file.depth_points -= points
        file.delivered_points_total += points
        file.refresh_oldest()

    def sweep(self) -> None:
        """Move the settled records out: their points into the audit, their ids into the
        delivered-id memory, the records deleted, in one transaction for many settlements
        (schema.SETTLED says why)."""
        file = self._file
        file.freeing(self._sweep)
        file.refresh_size()

    def _sweep(self) -> None:
        file = self._file
        with file.transaction("delete", sync=False):
            self.audit.record_settled(file.conn)
            schema.sweep_settled(file.conn)
        file.unswept.clear()

    def reject(self, seqs: Sequence[int], reason: str, detail: str) -> None:
        """Move records the API refused to the dead letters, in one transaction. Seqs no
        longer waiting in the spool are skipped."""
        already = self._file.unswept.seqs
        seqs = [seq for seq in seqs if seq not in already]
        if seqs:
            self._file.freeing(lambda: self._reject(seqs, reason, detail))

    def _reject(self, seqs: Sequence[int], reason: str, detail: str) -> None:
        file = self._file
        db = file.conn
        marks = ",".join("?" * len(seqs))
        with file.transaction("delete"):
            rows = db.execute(
                f"SELECT device_id, ts_us, metrics, n, received_us FROM records "  # noqa: S608
                f"WHERE seq IN ({marks})",
                tuple(seqs),
            ).fetchall()
            db.executemany(
                "INSERT INTO dead_letters (at_us, reason, rule, topic, payload, payload_size,"
                " detail) VALUES (?1, ?2, '', '', ?3, length(?3), ?4)",
                [
                    (
                        received_us,
                        reason,
                        orjson.dumps(
                            {"device_id": device, "ts_us": ts, "metrics": orjson.loads(metrics)}
                        ),
                        detail,
                    )
                    for device, ts, metrics, _n, received_us in rows
                ],
            )
            db.execute(f"DELETE FROM records WHERE seq IN ({marks})", tuple(seqs))  # noqa: S608
        self._forget(seqs)
        file.depth_records -= len(rows)
        file.depth_points -= sum(int(r[3]) for r in rows)
        file.dead_letters.measure(db)  # they count apart from the cap (see dlbudget.py)
        file.refresh_oldest()
        file.refresh_size()

    def settle_partly(self, seq: int, refused: dict[str, float], reason: str, detail: str) -> None:
        """The API accepted some metrics of record ``seq`` and refused ``refused``: in one
        transaction dead-letter the refused ones (as a record of just those) and delete the
        record, counting the rest as delivered. A record no longer waiting is left alone."""
        if seq in self._file.unswept.seqs:
            return  # settled already (a late answer): its sweep removes it
        self._file.freeing(lambda: self._settle_partly(seq, refused, reason, detail))

    def _settle_partly(self, seq: int, refused: dict[str, float], reason: str, detail: str) -> None:
        file = self._file
        db = file.conn
        with file.transaction("delete"):
            row = db.execute(
                "SELECT rid, device_id, ts_us, n, received_us, metrics FROM records WHERE seq = ?",
                (seq,),
            ).fetchone()
            if row is None:
                return
            rid, device, ts_us, n, received_us, metrics = row
            if refused:
                payload = orjson.dumps({"device_id": device, "ts_us": ts_us, "metrics": refused})
                db.execute(
                    "INSERT INTO dead_letters (at_us, reason, rule, topic, payload, payload_size,"
                    " detail) VALUES (?, ?, '', '', ?, ?, ?)",
                    (received_us, reason, payload, len(payload), detail),
                )
            at_us = int(file.clock() * 1_000_000)
            db.execute(
                "INSERT OR REPLACE INTO delivered_ids (rid, at_us) VALUES (?, ?)", (rid, at_us)
            )
            accepted = {k: v for k, v in orjson.loads(metrics).items() if k not in refused}
            self.audit.record(db, [(device, ts_us, accepted)], at_us)
            db.execute("DELETE FROM records WHERE seq = ?", (seq,))
            delivered = int(n) - len(refused)
            file.add_to_meta(db, "delivered_points", delivered)
        self._forget((seq,))
        file.depth_records -= 1
        file.depth_points -= int(n)
        file.delivered_points_total += delivered
        if refused:
            file.dead_letters.measure(db)  # they count apart from the cap (see dlbudget.py)
        file.refresh_oldest()
        file.refresh_size()
