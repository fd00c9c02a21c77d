"""Lag in seconds: how long ago the next message a group will consume was written.

As kafka-lag-exporter does it: per partition, a table of (log-end offset, time it was first
seen); the time at which the log end passed the group's committed offset is interpolated
between the two points around it, and lag in seconds is now minus that time. When the table
cannot place the committed offset (it is older than every point), the caller reads the
timestamp of the message at the committed offset itself, which is exact: that covers a
producer gone quiet while the consumer is still behind.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

DEFAULT_POINTS = 120


@dataclass
class EndOffsetTable:
    """(log-end offset, first time seen) points of one partition, oldest first."""

    max_points: int = DEFAULT_POINTS
    points: deque[tuple[int, float]] = field(default_factory=deque)

    def add(self, end: int, at_s: float) -> None:
        """Record the log end seen at at_s (only when it moved: the first sighting counts)."""
        if self.points and end <= self.points[-1][0]:
            if end < self.points[-1][0]:
                self.points.clear()  # the partition was truncated or recreated
            else:
                return
        self.points.append((end, at_s))
        while len(self.points) > self.max_points:
            self.points.popleft()

    def time_of(self, offset: int) -> float | None:
        """When the log end passed offset (interpolated); None when it is older than the
        table, which cannot tell."""
        if not self.points or offset < self.points[0][0]:
            return None
        offsets = [o for o, _ in self.points]
        i = bisect_right(offsets, offset)
        if i == len(offsets):
            return self.points[-1][1]
        lower, upper = self.points[i - 1], self.points[i]
        # The log end reached `lower` at its time and `upper` at its; offset lies between.
        fraction = (offset - lower[0]) / (upper[0] - lower[0])
        return lower[1] + fraction * (upper[1] - lower[1])


def lag_seconds(table: EndOffsetTable, committed: int | None, end: int, now_s: float,
                message_time_s: float | None = None) -> float | None:
    """Seconds behind: 0 when caught up; from the table, else from the message's own time."""
    if committed is None:
        return None
    if committed >= end:
        return 0.0
    passed = table.time_of(committed)
    if passed is None:
        passed = message_time_s
    return None if passed is None else max(0.0, now_s - passed)
