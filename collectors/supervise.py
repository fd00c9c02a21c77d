"""Supervision of the collector's background components, and their health.

Every component (the OTLP receiver, the spans-topic consumer, the message tap, the lag poller,
the Jaeger forwarder, maintenance) runs under `supervise`: a failure it does not expect is
logged with its stack, counted, shown as `down` with its reason, and the component is started
again after a backoff. Nothing ends silently. `Health` is what `/health`, `/metrics`, the store
(for the dashboard) and `flowscope demo` read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from store.vocabulary import ComponentState

log = logging.getLogger(__name__)
MAX_REASON = 300


@dataclass
class ComponentHealth:
    """One component: its state since `since_s`, why, and how often it was restarted."""

    name: str
    state: ComponentState
    reason: str | None
    since_s: float
    restarts: int = 0


class Health:
    """The state of every component, changed by the components themselves."""

    def __init__(self) -> None:
        self.components: dict[str, ComponentHealth] = {}

    def register(self, name: str) -> None:
        """A component that will start soon."""
        self.components.setdefault(
            name, ComponentHealth(name, ComponentState.STARTING, None, time.time()))

    def set(self, name: str, state: ComponentState, reason: str | None = None) -> None:
        """Record a component's state; `since_s` moves only when the state changes."""
        current = self.components.get(name)
        reason = reason[:MAX_REASON] if reason else None
        if current is None:
            self.components[name] = ComponentHealth(name, state, reason, time.time())
        elif current.state != state:
            current.state, current.reason, current.since_s = state, reason, time.time()
        else:
            current.reason = reason

    def ok(self, name: str) -> None:
        """The component does all of its work."""
        self.set(name, ComponentState.OK)

    def degraded(self, name: str, reason: str) -> None:
        """The component runs but cannot do all of its work."""
        self.set(name, ComponentState.DEGRADED, reason)

    def standby(self, name: str, reason: str) -> None:
        """The component waits while another collector of the cluster does its work."""
        self.set(name, ComponentState.STANDBY, reason)

    def down(self, name: str, reason: str) -> None:
        """The component is not running."""
        self.set(name, ComponentState.DOWN, reason)

    @property
    def status(self) -> ComponentState:
        """The collector's state: its worst component's (starting counts as ok)."""
        states = {c.state for c in self.components.values()}
        for state in (ComponentState.DOWN, ComponentState.DEGRADED):
            if state in states:
                return state
        return ComponentState.OK

    def snapshot(self) -> dict[str, object]:
        """What /health answers."""
        return {"status": str(self.status), "components": {
            name: {**asdict(c), "state": str(c.state)} for name, c in
            sorted(self.components.items())}}


async def supervise(name: str, run: Callable[[], Awaitable[None]], *, health: Health,
                    counters: Counter[str], stopping: asyncio.Event,
                    max_backoff_s: float = 30.0) -> None:
    """Run `run()` until stopping is set, starting it again (with backoff) whenever it fails
    or ends by itself; every failure is logged with its stack, counted and shown in health."""
    health.register(name)
    delay = 1.0
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await run()
            if stopping.is_set():
                return
            delay = _next_delay(delay, started, max_backoff_s)
            reason = "ended by itself"
            log.error("%s ended by itself; starting it again in %.0fs", name, delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = _next_delay(delay, started, max_backoff_s)
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("%s failed; starting it again in %.0fs", name, delay)
        counters[f"{name}_failures"] += 1
        health.down(name, f"{reason} (starting again in {delay:.0f}s)")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        delay = min(delay * 2, max_backoff_s)
        if not stopping.is_set():
            health.components[name].restarts += 1
            counters[f"{name}_restarts"] += 1
            health.set(name, ComponentState.STARTING, f"restart {health.components[name].restarts}")


def _next_delay(delay: float, started: float, max_backoff_s: float) -> float:
    """The wait before a restart: a component that ran well for a while starts over with short
    waits, one that fails at once waits longer each time."""
    return 1.0 if time.monotonic() - started > 5 * max_backoff_s else delay
