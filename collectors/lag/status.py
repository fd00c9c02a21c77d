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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PARTITION_SEVERITY = {"OK": 0, "WARN": 1, "REWIND": 2, "STALL": 3, "STOP": 4}
GROUP_OF = {"OK": "OK", "WARN": "WARN", "REWIND": "ERR", "STALL": "ERR", "STOP": "ERR"}
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

    def status(self, now_s: float) -> str:
        """The partition's status now."""
        return evaluate(list(self.entries), self.last_move_s, now_s)


def evaluate(window: Sequence[Observation], last_move_s: float | None,  # noqa: PLR0911
             now_s: float) -> str:
    """Apply the rules above to a window of observations, oldest first."""
    if not window or window[-1].lag == 0:
        return "OK"
    span = window[-1].at_s - window[0].at_s
    latest = window[-1]
    if (len(window) > 1 and last_move_s is not None and now_s - last_move_s > span
            and latest.end > latest.committed):
        return "STOP"
    if any(o.lag == 0 for o in window):
        return "OK"
    if any(b.committed < a.committed for a, b in itertools.pairwise(window)):
        return "REWIND"
    if len(window) > 1 and all(o.committed == window[0].committed for o in window):
        return "STALL"
    if len(window) > 1 and all(b.lag >= a.lag for a, b in itertools.pairwise(window)):
        return "WARN"
    return "OK"


def group_status(partition_statuses: Iterable[str]) -> tuple[str, str | None]:
    """(group status, worst partition status) from its partitions' statuses."""
    worst = max(partition_statuses, key=lambda s: PARTITION_SEVERITY[s], default=None)
    return (GROUP_OF[worst] if worst else "OK"), worst


@dataclass(frozen=True)
class Trend:
    """How a partition's lag moves: messages per second in and out, and time to catch up."""

    consume_rate: float
    produce_rate: float
    lag_rate: float
    catch_up_s: float | None  # None: not catching up at this rate


def trend(window: Sequence[Observation]) -> Trend | None:
    """The trend over the window (None with fewer than two observations)."""
    if len(window) < 2 or window[-1].at_s <= window[0].at_s:
        return None
    first, last = window[0], window[-1]
    seconds = last.at_s - first.at_s
    consume = (last.committed - first.committed) / seconds
    produce = (last.end - first.end) / seconds
    lag_rate = (last.lag - first.lag) / seconds
    if last.lag == 0:
        catch_up: float | None = 0.0
    elif lag_rate < 0:
        catch_up = last.lag / -lag_rate
    else:
        catch_up = None
    return Trend(consume, produce, lag_rate, catch_up)
