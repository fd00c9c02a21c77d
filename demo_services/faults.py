"""Simulated failures, drawn deterministically so that a seed replays the same story.

A draw depends only on the seed and the message's identity (correlation ID, step, attempt),
so a service that restarts and reprocesses a message makes the same decision again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass


def draw(seed: int, *parts: object) -> float:
    """A number in [0, 1) fixed by seed and parts."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Simulation:
    """Failure probabilities and work time for one message (request overrides, else defaults)."""

    transient_failure: float
    permanent_failure: float
    callback_failure: float
    inventory_failure: float
    work_ms: int
    thumbnail_failure: float = 0.0
    tracking_failure: float = 0.0
    billing_failure: float = 0.0

    @classmethod
    def of(cls, defaults: Simulation, overrides: object) -> Simulation:
        """Defaults, with the valid fields of a message's `simulate` object applied."""
        if not isinstance(overrides, Mapping):
            return defaults
        values = dict(defaults.__dict__)
        for name, current in defaults.__dict__.items():
            value = overrides.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                bounded = min(value, 1.0) if isinstance(current, float) else value
                values[name] = type(current)(bounded)
        return cls(**values)
