"""The store's contract: what the collector writes and what the dashboard and CLI read.

Every backend implements Store and passes the one contract suite in tests/unit/test_store.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from collectors.flows.histogram import Histogram
from collectors.record import GroupLag, LagRow, MessageRecord, SpanRecord

# SDKs export spans in batches (every 5 s by default), so a message is tapped before its send
# span arrives; until this long after it was sent, a message with no send span is not yet
# counted as coming from an uninstrumented producer.
SEND_SPAN_SETTLE_MS = 15_000


class StoreError(Exception):
    """The store cannot be opened or is of an unknown schema."""


class StoreUnavailable(StoreError):
    """A write failed for a reason of the store's, not of the records (disk full, file
    read-only, I/O error, locked too long): nothing was written; the same write can succeed
    once the cause is gone, so a consumer must not commit past it."""


@dataclass(frozen=True)
class WriteResult:
    """What a write did: spans new to the store, spans already there, hops created."""

    written: int
    duplicates: int
    hops: int


@dataclass(frozen=True)
class EdgeRow:
    """One edge of the topology over a window: service -> topic or topic -> service.

    p50_ms/p95_ms: for service -> topic the time to send; for topic -> service the time a
    message waited in the topic (consume start minus produce end).
    """

    source: str
    target: str
    count: int
    errors: int
    retries: int
    p50_ms: float | None
    p95_ms: float | None
    processing_p50_ms: float | None = None
    processing_p95_ms: float | None = None


@dataclass(frozen=True)
class Topology:
    """Nodes (id -> 'service' or 'topic') and edges over a window; first_bucket_s: the start
    of the window's first bucket that holds anything (None when none does), so that rates
    can be taken over the part of the window the store has seen."""

    nodes: dict[str, str]
    edges: list[EdgeRow]
    first_bucket_s: int | None = None


@dataclass(frozen=True)
class FlowRow:
    """One flow: its id, status and size."""

    id: str
    status: str
    started_ns: int
    ended_ns: int
    hops: int
    retries: int
    errors: int
    services: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FailedStep:
    """A span of a flow that ended in error: what failed, where and when (error_type is the
    instrumented code's own text)."""

    start_ns: int
    service: str
    name: str
    kind: str
    error_type: str | None
    trace_id: str


@dataclass(frozen=True)
class HopRow:
    """One message's trip through a topic, with its timings (None where a side is unknown)."""

    topic: str
    partition: int | None
    offset: int | None
    producer_service: str | None
    consumer_service: str | None
    consumer_group: str | None
    produce_start_ns: int | None
    produce_end_ns: int | None
    consume_start_ns: int | None
    consume_end_ns: int | None
    retry_attempt: int | None
    error: bool
    trace_id: str

    @property
    def queue_ms(self) -> float | None:
        """Time the message waited in the topic."""
        if self.produce_end_ns is None or self.consume_start_ns is None:
            return None
        return max(0.0, (self.consume_start_ns - self.produce_end_ns) / 1e6)

    @property
    def processing_ms(self) -> float | None:
        """Time the consumer spent on it."""
        if self.consume_start_ns is None or self.consume_end_ns is None:
            return None
        return (self.consume_end_ns - self.consume_start_ns) / 1e6


@dataclass(frozen=True)
class PropagationRow:
    """How many messages on a topic, from one producer, carried a valid trace context."""

    topic: str
    producer: str  # the service whose send span names the message, or "unknown"
    messages: int
    with_context: int

    @property
    def share(self) -> float:
        """Fraction of messages with a valid W3C traceparent."""
        return self.with_context / self.messages if self.messages else 0.0


@dataclass
class FlowCounts:
    """The overview of a window: outcomes and starts in it and in the window before, and the
    flows in flight or stuck now."""

    now: Counter[str] = field(default_factory=Counter)  # completed, failed, ... by status
    before: Counter[str] = field(default_factory=Counter)
    started_now: int = 0
    started_before: int = 0
    in_flight: int = 0
    stuck: int = 0


@dataclass(frozen=True)
class EdgeBucket:
    """One edge in one time bucket (bucket_start in seconds): its counts."""

    bucket_start: int
    source: str
    target: str
    count: int
    errors: int
    retries: int


@dataclass(frozen=True)
class LatencyBucket:
    """End-to-end latency of the flows of one type that completed in one time bucket."""

    bucket_start: int
    flow_type: str  # the completion topic the flows reached
    count: int
    latency: Histogram


@dataclass(frozen=True)
class DeadLetter:
    """A message on a dead-letter topic; key, correlation ID and headers are untrusted text."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    correlation_id: str | None
    flow_id: str | None
    headers: tuple[tuple[str, str], ...]
    truncated: bool


@dataclass(frozen=True)
class ComponentRow:
    """One collector component as its last health report saw it; at_s is that report's time
    (a collector that stopped reporting leaves an old at_s)."""

    component: str
    state: str  # ok | starting | degraded | down
    reason: str | None
    since_s: float
    restarts: int
    at_s: float


class Store(Protocol):
    """Storage of spans, hops, flows and edge aggregates."""

    def write_spans(self, records: Sequence[SpanRecord]) -> WriteResult:
        """Write spans (idempotent by trace and span id) and everything derived from them."""
        ...

    def add_counters(self, counts: Mapping[str, int]) -> None:
        """Add to named counters (what could not be placed, what was rejected)."""
        ...

    def counters(self) -> dict[str, int]:
        """All counters."""
        ...

    def topology(self, since_ns: int) -> Topology:
        """The service/topic graph from the edge aggregates since since_ns."""
        ...

    def busiest_topology(self, since_ns: int, limit: int, by: str = "count",
                         touching: str | None = None) -> tuple[Topology, int]:
        """The graph of the `limit` busiest edges since since_ns (by messages, or by
        retries; those of the node `touching` first), and how many edges there are in all:
        what a reader draws, whatever senders created."""
        ...

    def flows(self, since_ns: int, now_ns: int, limit: int = 100) -> list[FlowRow]:
        """Flows active since since_ns, newest first."""
        ...

    def flow_head(self, flow_or_trace_id: str, now_ns: int, limit: int | None
                  ) -> tuple[FlowRow, list[HopRow], int] | None:
        """One flow with its first `limit` hops in time order, and how many more it has."""
        ...

    def flow(self, flow_or_trace_id: str, now_ns: int) -> tuple[FlowRow, list[HopRow]] | None:
        """One flow, by correlation ID or by any of its trace IDs, with its hops in time order."""
        ...

    def failed_steps(self, flow_id: str, limit: int = 50) -> list[FailedStep]:
        """The spans of a flow that ended in error, oldest first."""
        ...

    def write_messages(self, records: Sequence[MessageRecord]) -> int:
        """Record tapped messages (idempotent by coordinates); how many were new."""
        ...

    def propagation(self, since_ms: int, sample: int | None = None,
                    now_ms: int | None = None) -> list[PropagationRow]:
        """Per topic and producer, the messages since since_ms (the newest `sample` of them,
        when given) and those with trace context. With now_ms, a message younger than
        SEND_SPAN_SETTLE_MS whose send span has not arrived is left out: its producer is not
        known yet, nor that it has none."""
        ...

    def write_lag(self, rows: Sequence[LagRow], groups: Sequence[GroupLag]) -> None:
        """Record one lag poll: the current figures and the history."""
        ...

    def lag(self, group: str | None = None) -> tuple[list[LagRow], list[GroupLag]]:
        """The latest lag of every partition and group (or of one group)."""
        ...

    def lag_history(self, since_s: float, group: str | None = None) -> list[LagRow]:
        """Partition lag over time since since_s, oldest first."""
        ...

    def lag_trend(self, since_s: float) -> list[tuple[str, float, int, float | None]]:
        """Per group and poll since since_s: (group, at_s, total lag, largest lag seconds)."""
        ...

    def flow_counts(self, window_ns: int, now_ns: int) -> FlowCounts:
        """Outcomes and starts in this window and the one before; in flight and stuck now."""
        ...

    def topology_nodes(self, since_ns: int) -> dict[str, str]:
        """The nodes of the topology since since_ns (name -> 'service' or 'topic')."""
        ...

    def edge_buckets(self, since_ns: int, edges: Sequence[tuple[str, str]] | None = None
                     ) -> list[EdgeBucket]:
        """Every edge (or these (source, target) edges) per time bucket since since_ns,
        oldest first."""
        ...

    def flow_latency(self, since_ns: int) -> list[LatencyBucket]:
        """End-to-end latency histograms of completed flows per bucket and type."""
        ...

    def find_flows(self, text: str) -> list[str]:
        """Flow ids named by a correlation ID, trace ID, message id or message key."""
        ...

    def retry_attempts(self, since_ms: int, sample: int | None = None
                       ) -> list[tuple[str, int, int]]:
        """(topic, attempt, messages) of tapped messages since since_ms (the newest
        `sample` of them)."""
        ...

    def dead_letters(self, since_ms: int, limit: int = 200, flow_id: str | None = None
                     ) -> list[DeadLetter]:
        """Messages on dead-letter topics since since_ms (of one flow), newest first."""
        ...

    def apply_retention(self, now_ns: int) -> int:
        """Delete raw rows and aggregates past their retention; how many rows went."""
        ...

    def write_health(self, snapshot: Mapping[str, object], at_s: float) -> None:
        """Replace the collector's component health with this report (Health.snapshot())."""
        ...

    def collector_health(self) -> list[ComponentRow]:
        """The collector's components as last reported, by name."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...
