"""The ingest pipeline: decode, normalise, write to the store, forward to Jaeger.

One writer: writes run one at a time in a worker thread, so the event loop keeps serving
while SQLite works, and batches from HTTP and from Kafka never interleave inside a write.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collectors.forward import JaegerForwarder
from collectors.normalize import NormalizeReport, normalize_request
from collectors.record import MessageRecord
from collectors.store.interface import Store, WriteResult

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Pipeline:
    """Everything between a decoded export request and the store."""

    store: Store
    forwarder: JaegerForwarder | None = None
    counters: Counter[str] = field(default_factory=Counter)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ingest(self, request: ExportTraceServiceRequest, raw: bytes | None, source: str
                     ) -> tuple[WriteResult, NormalizeReport]:
        """Store one export request (idempotently) and queue it for Jaeger."""
        report = NormalizeReport()
        records = list(normalize_request(request, report))
        async with self._lock:
            result = await asyncio.to_thread(self.store.write_spans, records)
        self.counters[f"spans_received_{source}"] += report.spans
        self.counters["spans_written"] += result.written
        self.counters["spans_duplicate"] += result.duplicates
        for reason, count in report.problems.items():
            self.counters[f"unplaced: {reason}"] += count
        if self.forwarder is not None and report.spans:
            self.forwarder.submit(raw if raw is not None else request.SerializeToString())
        return result, report

    async def write_messages(self, records: list[MessageRecord]) -> None:
        """Store what the message tap saw."""
        new = await self.exclusive(self.store.write_messages, records)
        self.counters["messages_tapped"] += new
        self.counters["messages_truncated"] += sum(r.truncated for r in records)

    async def exclusive(self, work: Callable[..., T], *args: object) -> T:
        """Run work(*args) in a worker thread while no write is in progress."""
        async with self._lock:
            return await asyncio.to_thread(work, *args)

    def count(self, name: str, amount: int = 1) -> None:
        """Count something that happened (a rejected body, garbage on the spans topic)."""
        self.counters[name] += amount

    async def flush_counters(self) -> None:
        """Move the counters into the store, where inspect and the dashboard read them."""
        pending = dict(self.counters)
        if self.forwarder is not None:
            pending.update(self.forwarder.take_counters())
        self.counters.clear()
        if pending:
            await self.exclusive(self.store.add_counters, pending)
