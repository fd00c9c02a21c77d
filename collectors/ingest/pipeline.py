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

from base.settings import IngestLimits
from collectors.flows.writer import FlowWriter
from collectors.forward import JaegerForwarder
from collectors.normalize import NormalizeReport, normalize_request
from store.contract import Store, WriteResult
from store.records import MessageRecord

log = logging.getLogger(__name__)
T = TypeVar("T")


WRITE_CHUNK = 2000  # spans per write: a large request never holds the writer for long


@dataclass
class Pipeline:
    """Everything between a decoded export request and the store."""

    writer: FlowWriter
    forwarder: JaegerForwarder | None = None
    limits: IngestLimits = field(default_factory=IngestLimits)
    counters: Counter[str] = field(default_factory=Counter)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ingest(self, request: ExportTraceServiceRequest, raw: bytes | None, source: str
                     ) -> tuple[WriteResult, NormalizeReport]:
        """Store one export request (idempotently) and queue it for Jaeger when any of its
        spans was new (a replay is not forwarded twice). Normalising runs in a worker thread,
        and the spans are written in chunks, so that other senders' writes interleave."""
        report = NormalizeReport()
        records = await asyncio.to_thread(
            lambda: list(normalize_request(request, report, self.limits)))
        written = duplicates = hops = 0
        try:
            for start in range(0, len(records), WRITE_CHUNK):
                result = await self.exclusive(self.writer.write_spans,
                                              records[start:start + WRITE_CHUNK])
                written += result.written
                duplicates += result.duplicates
                hops += result.hops
        finally:
            self.counters[f"spans_received_{source}"] += report.spans
            self.counters["spans_written"] += written
            self.counters["spans_duplicate"] += duplicates
            for reason, count in report.problems.items():
                self.counters[f"unplaced: {reason}"] += count
        if self.forwarder is not None and written:
            self.forwarder.submit(raw if raw is not None else request.SerializeToString())
        return WriteResult(written, duplicates, hops), report

    async def write_messages(self, records: list[MessageRecord]) -> None:
        """Store what the message tap saw."""
        new = await self.exclusive(self.writer.write_messages, records)
        self.counters["messages_tapped"] += new
        self.counters["messages_truncated"] += sum(r.truncated for r in records)

    @property
    def store(self) -> Store:
        """The store the pipeline writes to."""
        return self.writer.store

    async def exclusive(self, work: Callable[..., T], *args: object) -> T:
        """Run work(*args) in a worker thread while no write is in progress."""
        async with self._lock:
            return await asyncio.to_thread(work, *args)

    def count(self, name: str, amount: int = 1) -> None:
        """Count something that happened (a rejected body, garbage on the spans topic)."""
        self.counters[name] += amount

    async def flush_counters(self) -> None:
        """Move the counters into the store, where inspect and the dashboard read them; when
        the store cannot take them they are kept for the next flush."""
        pending = Counter(self.counters)
        if self.forwarder is not None:
            pending.update(self.forwarder.take_counters())
        self.counters.clear()
        if not pending:
            return
        try:
            await self.exclusive(self.store.add_counters, dict(pending))
        except BaseException:
            self.counters.update(pending)
            raise
