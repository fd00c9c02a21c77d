"""Lag of one partition from its offsets, as Kafka's ConsumerGroupCommand computes it."""

from __future__ import annotations


def compute_lag(committed: int | None, end: int | None) -> int | None:
    """Log-end offset minus committed offset; None ('-') when either is unknown."""
    if committed is None or committed < 0 or end is None:
        return None
    return end - committed
