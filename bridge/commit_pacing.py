"""When the next group commit begins: adaptive group commit. Pure: times are arguments.

Every message waits for a durable commit (an fsync) before its PUBACK, so how commits are
grouped sets both the latency from publish to the API and what each message pays for the
commits (CPU in the kernel's fsync, bytes written: a commit writes a few pages whatever it
holds). A fixed interval between commits made the interval the latency floor at every rate.

Instead the gap between the beginnings of two commits is the longer of

- ``spacing`` times the duration of the recent commits: with ``spacing`` 1 a commit begins as
  soon as the previous one has ended, with every message that arrived meanwhile (classic group
  commit); larger values keep the disk busy with commits at most about 1/``spacing`` of the
  time. A slow disk (an SD card) groups more by itself, which is also what its wear asks for;
- the time the flow takes to bring ``GROUP`` messages at its recent rate: what a commit costs
  whatever it holds (about 0.2-0.8 ms of CPU, mostly the kernel's fsync, and a few pages
  written) is shared by enough messages that the CPU per message does not grow at live rates;

and at most ``ceiling``. So a quiet flow is committed at once (the previous commit began long
ago), a flow of a few hundred messages/s waits at most ``ceiling``, and a busy one waits less
(its groups fill sooner) while its groups grow. A backlog (``backlog`` messages or more
waiting) is committed at once, as before.
"""

from __future__ import annotations

import math

# Weight of the newest commit's duration in the smoothed one: a single slow fsync (another
# process flushing) does not stretch the next gap by itself.
_WEIGHT = 0.25
# Messages a live commit should carry: the fixed cost of a commit over 48 messages is a few
# µs of CPU and a few hundred bytes written per message (docs/design/performance.md, Round 2).
# 64 kept p99 publish -> API at 2,000 msg/s at 51-53 ms on the peer harness; 48 gives 45 ms
# (target 50) for 0.16 instead of 0.12-0.15 CPU-s per 1,000 messages; 32 gives 39 ms for
# 0.19-0.20, as much CPU as Node-RED uses there.
GROUP = 48


class CommitPacing:
    """The gap between the beginnings of two commits, from the durations of the recent ones."""

    def __init__(self, spacing: float, ceiling_s: float, backlog: int) -> None:
        self.spacing = spacing
        self.ceiling_s = ceiling_s
        self.backlog = backlog
        self.duration_s = 0.0  # smoothed duration of a commit
        self.rate = 0.0  # smoothed messages per second taken into commits
        self._began = -math.inf

    def delay(self, now: float, waiting: int) -> float:
        """Seconds to wait before the next commit begins, with ``waiting`` messages waiting
        (0: begin now)."""
        if waiting >= self.backlog:
            return 0.0
        fill = GROUP / self.rate if self.rate > 0 else 0.0
        gap = min(self.ceiling_s, max(self.spacing * self.duration_s, fill))
        return max(0.0, self._began + gap - now)

    def began(self, now: float, messages: int) -> None:
        """A commit of ``messages`` begins at ``now``."""
        elapsed = now - self._began
        if elapsed < 1.0:  # after a pause, the flow's rate is not known yet: count it as quiet
            self.rate += _WEIGHT * (messages / max(elapsed, 1e-3) - self.rate)
        else:
            self.rate = 0.0
        self._began = now

    def ended(self, now: float) -> None:
        """The commit that began last ended at ``now``."""
        took = max(0.0, now - self._began)
        if self.duration_s == 0.0:
            self.duration_s = took
        else:
            self.duration_s += _WEIGHT * (took - self.duration_s)
