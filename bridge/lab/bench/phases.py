"""A backlog drain's two phases, told apart from the bench's samples and what the API stored.
Pure: no I/O.

While the broker floods the bridge, its intake (read, map, commit, acknowledge) and its
delivery (fetch, request body, POST, settlement) share one interpreter; once every message is
in the spool, delivery runs alone. That second phase gives delivery's own CPU per point, and
with it the first phase's CPU splits into the intake's part and delivery's: which of the two
halves sets a drain's pace, and so what a second process would relieve
(docs/design/performance.md, round 10).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.lab.bench.report import Report, Sample


@dataclass(frozen=True, slots=True)
class DrainPhases:
    """The two phases of a drain (see the module docstring).

    Attributes:
        intake_s: From the bridge's connect until every message was taken in (spooled or
            already delivered), interpolated between the samples around that moment.
        intake_messages_per_s: The messages over ``intake_s``.
        delivery_points_per_s: Points delivered per second once the intake was done.
        delivery_cpu_us_per_point: The bridge's CPU per point delivered once the intake was done.
        intake_cpu_us_per_message: The first phase's CPU less what delivering its points
            costs at delivery's own rate, per message taken in: an estimate.
        delivery_share_of_cpu: Delivery's part of a drain's CPU at those two costs.
    """

    intake_s: float
    intake_messages_per_s: float
    delivery_points_per_s: float
    delivery_cpu_us_per_point: float
    intake_cpu_us_per_message: float
    delivery_share_of_cpu: float


def drain_phases(
    samples: Sequence[Sample],
    deliveries: Sequence[tuple[float, int]],
    *,
    messages: int,
    points: int,
    connected: float,
) -> DrainPhases | None:
    """The phases of a drain of ``messages`` messages holding ``points`` points.

    Args:
        samples: The bench's looks at the bridge, seconds since its start, in time order.
        deliveries: (seconds since the start, points stored) of each accepted request.
        connected: When the bridge was connected, seconds since its start.

    Returns None when the samples cannot tell the phases apart: the intake was not seen to
    finish, or no look came after it with points still to deliver.
    """
    if not messages or not points or len(samples) < 3:
        return None
    ordered = sorted(deliveries)
    times = [t for t, _n in ordered]
    done = [0, *itertools.accumulate(n for _t, n in ordered)]

    def delivered(t: float) -> int:
        return done[bisect.bisect_right(times, t)]

    def taken(s: Sample) -> float:
        # Points in requests the API stored but the bridge has not settled yet count twice:
        # at most the requests in flight, so the intake may be seen done that much early.
        return s.spool_points + delivered(s.t)

    start = next((i for i, s in enumerate(samples) if s.t >= connected), 0)
    if taken(samples[start]) >= points:
        return None  # taken in before the first look: nothing to tell the intake's pace by
    end = next((i for i in range(start + 1, len(samples)) if taken(samples[i]) >= points), None)
    if end is None or end + 1 >= len(samples):
        return None
    first, boundary, last = samples[start], samples[end], samples[-1]
    before = samples[end - 1]
    gained = taken(boundary) - taken(before)
    share = (points - taken(before)) / gained if gained > 0 else 1.0
    intake_s = before.t + min(1.0, max(0.0, share)) * (boundary.t - before.t) - connected

    after_points = delivered(last.t) - delivered(boundary.t)
    after_wall = (times[-1] if times else last.t) - boundary.t
    after_cpu = last.cpu_s - boundary.cpu_s
    if after_points <= 0 or after_wall <= 0:
        return None
    per_point = after_cpu / after_points
    per_message_points = points / messages
    intake_messages = (points - taken(first)) / per_message_points
    intake_cpu = (boundary.cpu_s - first.cpu_s) - (
        delivered(boundary.t) - delivered(first.t)
    ) * per_point
    per_message = intake_cpu / intake_messages if intake_messages > 0 else math.nan
    total = points * per_point + messages * per_message
    return DrainPhases(
        intake_s=round(intake_s, 3),
        intake_messages_per_s=round(messages / intake_s, 1) if intake_s > 0 else math.nan,
        delivery_points_per_s=round(after_points / after_wall, 1),
        delivery_cpu_us_per_point=round(per_point * 1e6, 2),
        intake_cpu_us_per_message=round(per_message * 1e6, 2),
        delivery_share_of_cpu=round(points * per_point / total, 3) if total > 0 else math.nan,
    )


# The report's fields that add_phases fills (left out where a mode never measures them).
FIELDS = (
    "intake_seconds_from_connect",
    "intake_messages_per_s",
    "delivery_after_intake_points_per_s",
    "delivery_after_intake_cpu_us_per_point",
    "intake_cpu_us_per_message_estimated",
    "delivery_share_of_cpu_estimated",
)


def add_phases(report: Report, phases: DrainPhases | None) -> None:
    """Put a drain's phases into its report (left NaN when they could not be told apart)."""
    if phases is None:
        return
    report.intake_seconds_from_connect = phases.intake_s
    report.intake_messages_per_s = phases.intake_messages_per_s
    report.delivery_after_intake_points_per_s = phases.delivery_points_per_s
    report.delivery_after_intake_cpu_us_per_point = phases.delivery_cpu_us_per_point
    report.intake_cpu_us_per_message_estimated = phases.intake_cpu_us_per_message
    report.delivery_share_of_cpu_estimated = phases.delivery_share_of_cpu
