"""Burrow-style lag status: needs no thresholds, only a sliding window of observations.

Burrow evaluates each partition over its last N offset commits. Flowscope polls committed
offsets instead of reading every commit, so a window entry is one poll, and "the last commit"
is the last poll at which the committed offset moved. The rules, in Burrow's order:

- lag 0 now: OK
- the committed offset has not moved for longer than the window spans: STOP
  (unless the log end has not moved past it either: nothing to consume)
- some lag in the window was 0: OK
- the committed offset went down: REWIND
- every committed offset in the window is the same: STALL
- lag never decreased across the window: WARN
- else OK

A group's status is its worst partition's; STOP, STALL and REWIND make the group ERR.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from store.records import GroupLag, LagRow
from store.vocabulary import KAFKA, GroupStatus, PartitionStatus

PARTITION_SEVERITY = {PartitionStatus.OK: 0, PartitionStatus.WARN: 1, PartitionStatus.REWIND: 2,
                      PartitionStatus.STALL: 3, PartitionStatus.STOP: 4}
GROUP_OF = {PartitionStatus.OK: GroupStatus.OK, PartitionStatus.WARN: GroupStatus.WARN,
            PartitionStatus.REWIND: GroupStatus.ERR, PartitionStatus.STALL: GroupStatus.ERR,
            PartitionStatus.STOP: GroupStatus.ERR}
DEFAULT_WINDOW = 10


@dataclass(frozen=True)
class Observation:
    """One poll of one partition."""

    at_s: float
    committed: int
    end: int

    @property
    def lag(self) -> int:
        """Messages behind at this poll (never below 0)."""
        return max(0, self.end - self.committed)


class PartitionWindow:
    """The last N observations of a partition, and when its committed offset last moved."""

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 2:
            raise ValueError("a lag window needs at least 2 observations")
        self.entries: deque[Observation] = deque(maxlen=size)
        self.last_move_s: float | None = None

    def add(self, observation: Observation) -> None:
        """Record a poll."""
        if not self.entries or observation.committed != self.entries[-1].committed:
            self.last_move_s = observation.at_s
        self.entries.append(observation)

    def status(self, now_s: float) -> PartitionStatus:
        """The partition's status now."""
        return evaluate(list(self.entries), self.last_move_s, now_s)


def evaluate(window: Sequence[Observation], last_move_s: float | None,  # noqa: PLR0911
             now_s: float) -> PartitionStatus:
    """Apply the rules above to a window of observations, oldest first."""
    if not window or window[-1].lag == 0:
        return PartitionStatus.OK
    span = window[-1].at_s - window[0].at_s
    latest = window[-1]
    if (len(window) > 1 and last_move_s is not None and now_s - last_move_s > span
            and latest.end > latest.committed):
        return PartitionStatus.STOP
    if any(o.lag == 0 for o in window):
        return PartitionStatus.OK
    if any(b.committed < a.committed for a, b in itertools.pairwise(window)):
        return PartitionStatus.REWIND
    if len(window) > 1 and all(o.committed == window[0].committed for o in window):
        return PartitionStatus.STALL
    if len(window) > 1 and all(b.lag >= a.lag for a, b in itertools.pairwise(window)):
        return PartitionStatus.WARN
    return PartitionStatus.OK


def group_status(partition_statuses: Iterable[PartitionStatus]
                 ) -> tuple[GroupStatus, PartitionStatus | None]:
    """(group status, worst partition status) from its partitions' statuses."""
    worst = max(partition_statuses, key=lambda s: PARTITION_SEVERITY[s], default=None)
    return (GROUP_OF[worst] if worst else GroupStatus.OK), worst


def group_lag(group: str, members: Sequence[LagRow], trends: Sequence[Trend], now_s: float,
              system: str = KAFKA) -> GroupLag:
    """A group's figures from its partitions' (or a queue's from its one row): status and
    worst partition, total lag, largest lag in seconds, rates and the time to catch up."""
    status, worst = group_status(r.status for r in members)
    seconds = [r.lag_seconds for r in members if r.lag_seconds is not None]
    total_lag = sum(r.lag or 0 for r in members)
    consume = sum(t.consume_rate for t in trends) if trends else None
    lag_rate = sum(t.lag_rate for t in trends) if trends else None
    if total_lag == 0:
        catch_up: float | None = 0.0
    elif lag_rate is not None and lag_rate < 0:
        catch_up = total_lag / -lag_rate
    else:
        catch_up = None
    return GroupLag(group, status, worst, total_lag, max(seconds) if seconds else None,
                    consume, lag_rate, catch_up, now_s, system)


class BacklogWindows:
    """A window of polls per queue or consumer, for a backlog without partitions (a RabbitMQ
    or Artemis queue, a JetStream consumer): one poll observes each it has, then end_poll
    forgets those it no longer had (deleted). A committed count that went down (the queue
    made again, the broker restarted) starts a new window."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        self.windows: dict[Hashable, PartitionWindow] = {}
        self._seen: set[Hashable] = set()

    def observe(self, key: Hashable, now_s: float, committed: int, lag: int
                ) -> PartitionWindow:
        """Add one poll of key; its window."""
        self._seen.add(key)
        window = self.windows.get(key)
        if window is None or (window.entries and committed < window.entries[-1].committed):
            window = self.windows[key] = PartitionWindow(self.window)
        window.add(Observation(now_s, committed, committed + lag))
        return window

    def end_poll(self) -> None:
        """Forget what this poll did not observe."""
        for gone in set(self.windows) - self._seen:
            del self.windows[gone]
        self._seen = set()


def single_group(row: LagRow, window: PartitionWindow, now_s: float) -> GroupLag:
    """The group figures of a backlog that is one row (a queue, a JetStream consumer)."""
    found = trend(list(window.entries))
    return group_lag(row.group, [row], [found] if found else [], now_s, row.system)


@dataclass(frozen=True)
class Trend:
    """How a partition's lag moves, in messages per second: consumed, and the change of lag
    (a group's time to catch up is its total lag over its summed lag_rate, see the poller)."""

    consume_rate: float
    lag_rate: float


def trend(window: Sequence[Observation]) -> Trend | None:
    """The trend over the window (None with fewer than two observations)."""
    if len(window) < 2 or window[-1].at_s <= window[0].at_s:
        return None
    first, last = window[0], window[-1]
    seconds = last.at_s - first.at_s
    consume = (last.committed - first.committed) / seconds
    lag_rate = (last.lag - first.lag) / seconds
    return Trend(consume, lag_rate)
