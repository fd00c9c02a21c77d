"""Retry policy: how many attempts, and how long to wait before each (exponential backoff); and
the backoff of a loop that reconnects or tries again after a failure."""

from __future__ import annotations

from dataclasses import dataclass

from demo_services.config import DemoConfig


@dataclass(frozen=True)
class RetryPolicy:
    """At most max_attempts in all; the wait doubles from base_ms up to max_ms."""

    max_attempts: int
    base_ms: int
    max_ms: int

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.base_ms <= self.max_ms:
            raise ValueError("backoff must satisfy 0 <= base_ms <= max_ms")

    @classmethod
    def of(cls, config: DemoConfig) -> RetryPolicy:
        """The policy the demo configuration sets."""
        return cls(config.max_attempts, config.backoff_base_ms, config.backoff_max_ms)

    def backoff_ms(self, failed_attempt: int) -> int:
        """How long to wait after attempt number failed_attempt (1-based) failed."""
        return min(self.max_ms, self.base_ms * 2 ** max(0, failed_attempt - 1))


@dataclass
class Backoff:
    """A wait that doubles after each failure, from first_s up to max_s, until reset."""

    first_s: float
    max_s: float
    current_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError("backoff must satisfy 0 < first_s <= max_s")

    def next_s(self) -> float:
        """The wait after one more failure."""
        self.current_s = min(self.max_s, self.current_s * 2) if self.current_s else self.first_s
        return self.current_s

    def reset(self) -> None:
        """Start from first_s again (after a success)."""
        self.current_s = 0.0
