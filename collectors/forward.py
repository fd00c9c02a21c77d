"""Forward every span received, unchanged, to Jaeger over OTLP/HTTP.

Forwarding never blocks ingest: batches wait in a bounded queue (the oldest is dropped and
counted when it is full), and each is retried with backoff a bounded number of times.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque

import aiohttp

from base.settings import redact_url

log = logging.getLogger(__name__)


class JaegerForwarder:
    """A bounded queue of serialized export requests and a task that posts them."""

    def __init__(self, endpoint: str, *, max_batches: int = 1000, attempts: int = 4,
                 timeout_s: float = 10.0) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"Jaeger OTLP endpoint must be an http(s) URL, not {endpoint!r}")
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.queue: deque[bytes] = deque(maxlen=max_batches)
        self.ready = asyncio.Event()
        self.counters: Counter[str] = Counter()
        self.problem: str | None = None  # why the last batch could not be posted, if it failed

    def submit(self, body: bytes) -> None:
        """Queue one serialized ExportTraceServiceRequest (never waits)."""
        if len(self.queue) == self.queue.maxlen:
            self.counters["forward_dropped_batches"] += 1
        self.queue.append(body)
        self.ready.set()

    def take_counters(self) -> dict[str, int]:
        """The counters since the last call."""
        taken = dict(self.counters)
        self.counters.clear()
        return taken

    async def run(self, stopping: asyncio.Event) -> None:
        """Post queued batches until stopping is set, then drain what is queued (one try
        each; what fails then is counted and logged once)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)
                                         ) as session:
            while not (stopping.is_set() and not self.queue):
                if not self.queue:
                    self.ready.clear()
                    waiter = asyncio.ensure_future(self.ready.wait())
                    stop = asyncio.ensure_future(stopping.wait())
                    await asyncio.wait([waiter, stop], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    stop.cancel()
                    continue
                await self._post(session, self.queue.popleft(), stopping)
        if self.counters["forward_failed_batches"]:
            log.warning("%d batches could not be forwarded to Jaeger at %s",
                        self.counters["forward_failed_batches"], redact_url(self.url))

    async def _post(self, session: aiohttp.ClientSession, body: bytes,
                    stopping: asyncio.Event) -> None:
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                async with session.post(self.url, data=body, headers={
                        "Content-Type": "application/x-protobuf"}) as answer:
                    if answer.status < 300:
                        self.counters["forwarded_batches"] += 1
                        self.problem = None
                        return
                    problem = f"HTTP {answer.status}"
                    if answer.status < 500 and answer.status != 429:
                        break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.counters["forward_retries"] += 1
            if attempt < self.attempts and not stopping.is_set():
                await asyncio.sleep(delay)
                delay *= 2
        self.counters["forward_failed_batches"] += 1
        self.problem = f"posting to {redact_url(self.url)} failed: {problem}"
        if not stopping.is_set():
            log.warning("forwarding to Jaeger at %s failed: %s", redact_url(self.url), problem)
