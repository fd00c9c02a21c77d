"""A mergeable latency histogram with logarithmic buckets (about 19 % wide).

Buckets are fixed, so histograms from any time bucket or edge merge by adding counts, and a
percentile is read from the merged counts without touching raw rows. The error of a
percentile is at most one bucket's width.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

# Bucket i holds values in [2**((i - 1) / 4), 2**(i / 4)) milliseconds; bucket 0 holds <= 1 us.
STEPS_PER_DOUBLING = 4
LOWEST_MS = 0.001
MAX_INDEX = 160  # 0.001 ms * 2**40, about 12.7 days


def bucket_of(value_ms: float) -> int:
    """The bucket index of a latency in milliseconds."""
    if value_ms <= LOWEST_MS:
        return 0
    index = math.ceil(math.log2(value_ms / LOWEST_MS) * STEPS_PER_DOUBLING)
    return min(max(index, 1), MAX_INDEX)


def bucket_upper_ms(index: int) -> float:
    """The upper bound of a bucket, the value a percentile in it reports."""
    return LOWEST_MS * 2 ** (index / STEPS_PER_DOUBLING)


class Histogram:
    """Counts per bucket; add values, merge histograms, read percentiles."""

    __slots__ = ("counts",)

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})

    def add(self, value_ms: float, count: int = 1) -> None:
        """Record a latency."""
        index = bucket_of(value_ms)
        self.counts[index] = self.counts.get(index, 0) + count

    def merge(self, other: Histogram) -> Histogram:
        """Add another histogram's counts into this one; returns self."""
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        return self

    @property
    def total(self) -> int:
        """How many values were recorded."""
        return sum(self.counts.values())

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) in ms, None when empty."""
        total = self.total
        if total == 0:
            return None
        rank = max(1, math.ceil(q / 100 * total))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return bucket_upper_ms(index)
        return bucket_upper_ms(max(self.counts))

    def to_json(self) -> str:
        """A compact text form for storage."""
        return json.dumps({str(k): v for k, v in sorted(self.counts.items())},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Histogram:
        """The histogram stored by to_json ('' or None: empty)."""
        return cls({int(k): int(v) for k, v in json.loads(text).items()} if text else None)

    @classmethod
    def merged(cls, histograms: Iterable[Histogram]) -> Histogram:
        """One histogram holding all of them."""
        result = cls()
        for histogram in histograms:
            result.merge(histogram)
        return result
