"""When the next group commit begins: adaptive group commit. Pure: times are arguments.

Every message waits for a durable commit (an fsync) before its PUBACK, so how commits are
grouped sets both the latency from publish to the API and what each message pays for the
commits (CPU in the kernel's fsync, bytes written: a commit writes a few pages whatever it
holds). A fixed interval between commits made the interval the latency floor at every rate.

Instead a commit may begin ``spacing`` times the duration of the recent commits after the previous
one began, and at the latest ``ceiling`` after it:

- a quiet flow is committed at once, since the previous commit began long ago;
- with ``spacing`` 1 a commit begins as soon as the previous one has ended, with every message
  that arrived meanwhile (classic group commit); larger values keep the disk busy with commits
  at most about 1/``spacing`` of the time, so each commit carries more messages;
- a busy flow groups more by itself: a larger group takes longer to commit, which spaces the
  next commit further, up to ``ceiling``. A slow disk (an SD card) groups more too, for the
  same reason, which is also what its wear asks for.

A backlog (``backlog`` messages or more waiting) is committed at once, as before.
"""

from __future__ import annotations

import math

# Weight of the newest commit's duration in the smoothed one: a single slow fsync (another
# process flushing) does not stretch the next gap by itself.
_WEIGHT = 0.25


class CommitPacing:
    """The gap between the beginnings of two commits, from the durations of the recent ones."""

    def __init__(self, spacing: float, ceiling_s: float, backlog: int) -> None:
        self.spacing = spacing
        self.ceiling_s = ceiling_s
        self.backlog = backlog
        self.duration_s = 0.0  # smoothed duration of a commit
        self._began = -math.inf

    def delay(self, now: float, waiting: int) -> float:
        """Seconds to wait before the next commit begins, with ``waiting`` messages waiting
        (0: begin now)."""
        if waiting >= self.backlog:
            return 0.0
        gap = min(self.ceiling_s, self.spacing * self.duration_s)
        return max(0.0, self._began + gap - now)

    def began(self, now: float) -> None:
        """A commit begins at ``now``."""
        self._began = now

    def ended(self, now: float) -> None:
        """The commit that began last ended at ``now``."""
        took = max(0.0, now - self._began)
        if self.duration_s == 0.0:
            self.duration_s = took
        else:
            self.duration_s += _WEIGHT * (took - self.duration_s)
