"""The store's contract: what the collector writes and what the dashboard and CLI read.

Every backend implements Store and passes the one contract suite (tests/unit/test_store.py).
One time unit: every time a method takes is nanoseconds since the epoch (an argument's name
ends in _ns); rows keep the unit their field's name says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from store.histogram import Histogram
from store.records import (
    EdgeKey,
    EdgeTotals,
    FlowTotals,
    GroupLag,
    Hop,
    LagRow,
    MessageRecord,
    SpanKey,
    SpanRecord,
)
from store.vocabulary import ComponentState, FlowStatus

# SDKs export spans in batches (every 5 s by default), so a message is tapped before its send
# span arrives; until this long after it was sent, a message with no send span is not yet
# counted as coming from an uninstrumented producer.
SEND_SPAN_SETTLE_NS = 15 * 1_000_000_000


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
    status: FlowStatus
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

    now: Counter[FlowStatus] = field(default_factory=Counter)  # outcomes by status
    before: Counter[FlowStatus] = field(default_factory=Counter)
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
    state: ComponentState
    reason: str | None
    since_s: float
    restarts: int
    at_s: float
    collector: str = ""  # who reported it (host:pid) where several collectors share a store


class SpanWrites(Protocol):
    """What flow derivation (collectors/flows) asks of a backend, inside one transaction:
    set-based lookups and idempotent writes, no domain rules. Keys are (trace_id, span_id)."""

    def known_flows(self, trace_ids: set[str]) -> dict[str, str]:
        """The correlation ID already stored for each of these traces (trace ID -> flow)."""
        ...

    def adopt_flows(self, by_trace: Mapping[str, str]) -> list[tuple[str, FlowTotals]]:
        """Move what is stored under a trace's own flow (its trace ID) into its correlated
        flow (by_trace: trace ID -> correlation ID); the moved flows' totals, removed from
        the store, each with the flow it now belongs to."""
        ...

    def insert_spans(self, records: Sequence[SpanRecord], flow_ids: Sequence[str]
                     ) -> list[SpanRecord]:
        """Store spans not stored yet (by key), each in its flow; those that were new."""
        ...

    def spans(self, keys: set[SpanKey]) -> dict[SpanKey, tuple[SpanRecord, str]]:
        """Stored spans by key, each with its flow."""
        ...

    def sends_by_message_id(self, message_ids: set[str]
                            ) -> dict[str, tuple[SpanRecord, str]]:
        """A stored send span (with its flow) for each of these message ids that has one."""
        ...

    def consumes_of(self, parents: set[SpanKey]) -> list[tuple[SpanKey, SpanKey]]:
        """(parent, consume span) for stored consume spans whose parent is one of these."""
        ...

    def waiting(self) -> tuple[bool, bool, bool]:
        """Whether any hop waits for its send, any hop was seen through a batch consume only,
        and any link waits for its span: (waiting hops, batch hops, waiting links)."""
        ...

    def waiting_hops(self, message_ids: set[str]) -> list[tuple[str, SpanKey]]:
        """(message id, consume span) of hops waiting for their send, by message id."""
        ...

    def add_links(self, links: Sequence[tuple[SpanKey, SpanKey]]) -> None:
        """Keep (linked span, consume span) links until the linked span arrives."""
        ...

    def take_links(self, linked: set[SpanKey]) -> list[tuple[SpanKey, SpanKey]]:
        """Remove and return the waiting links to these spans: (linked span, consume span)."""
        ...

    def delete_hops(self, keys: set[str], *, batch_only: bool = False) -> set[str]:
        """Delete hops by key (only those seen through a batch consume); the keys deleted."""
        ...

    def insert_hops(self, hops: Sequence[Hop]) -> list[Hop]:
        """Store hops whose key is not stored yet; those stored."""
        ...

    def merge_flows(self, totals: Mapping[str, FlowTotals]) -> dict[str, FlowTotals]:
        """Add these totals into the stored flows; each flow's stored totals before (a flow
        new to the store is not in the result)."""
        ...

    def merge_edges(self, totals: Mapping[EdgeKey, EdgeTotals]) -> None:
        """Add these totals into the stored edge buckets."""
        ...

    def merge_flow_latency(self, latencies: Mapping[tuple[int, str], Histogram]) -> None:
        """Add completed flows' latencies, per (bucket start, flow type), into the store."""
        ...

    def insert_messages(self, records: Sequence[MessageRecord],
                        flow_ids: Sequence[str | None]) -> list[MessageRecord]:
        """Store tapped messages not stored yet (by coordinates); those that were new."""
        ...


class Store(Protocol):
    """Storage of spans, hops, flows, aggregates, lag and health: what readers query, and the
    writes that flow derivation (collectors/flows) makes through SpanWrites."""

    bucket_s: int  # the width of the aggregates' time buckets, in seconds

    def write_batch(self) -> AbstractContextManager[SpanWrites]:
        """One write transaction (all or nothing); StoreUnavailable when the store, not the
        records, made it fail."""
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
                  ) -> tuple[FlowRow, list[Hop], int] | None:
        """One flow with its first `limit` hops in time order, and how many more it has."""
        ...

    def flow(self, flow_or_trace_id: str, now_ns: int) -> tuple[FlowRow, list[Hop]] | None:
        """One flow, by correlation ID or by any of its trace IDs, with its hops in time order."""
        ...

    def failed_steps(self, flow_id: str, limit: int = 50) -> list[FailedStep]:
        """The spans of a flow that ended in error, oldest first."""
        ...

    def propagation(self, since_ns: int, sample: int | None = None,
                    now_ns: int | None = None) -> list[PropagationRow]:
        """Per topic and producer, the messages since since_ns (the newest `sample` of them,
        when given) and those with trace context. With now_ns, a message younger than
        SEND_SPAN_SETTLE_NS whose send span has not arrived is left out: its producer is not
        known yet, nor that it has none."""
        ...

    def write_lag(self, rows: Sequence[LagRow], groups: Sequence[GroupLag], *,
                  complete: str | None = None) -> None:
        """Record one lag poll: the current figures and the history. complete: a system
        whose every group or queue this poll holds, so that the current figures of those it
        does not hold (a queue deleted) are gone; the history keeps them."""
        ...

    def lag(self, group: str | None = None) -> tuple[list[LagRow], list[GroupLag]]:
        """The latest lag of every partition and group (or of one group)."""
        ...

    def lag_history(self, since_ns: int, group: str | None = None) -> list[LagRow]:
        """Partition lag over time since since_ns, oldest first."""
        ...

    def lag_trend(self, since_ns: int) -> list[tuple[str, float, int, float | None]]:
        """Per group and poll since since_ns: (group, at_s, total lag, largest lag seconds)."""
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

    def retry_attempts(self, since_ns: int, sample: int | None = None
                       ) -> list[tuple[str, int, int]]:
        """(topic, attempt, messages) of tapped messages since since_ns (the newest
        `sample` of them)."""
        ...

    def dead_letters(self, since_ns: int, limit: int = 200, flow_id: str | None = None
                     ) -> list[DeadLetter]:
        """Messages on dead-letter topics since since_ns (of one flow), newest first."""
        ...

    def apply_retention(self, now_ns: int) -> int:
        """Delete raw rows and aggregates past their retention; how many rows went."""
        ...

    def write_health(self, snapshot: Mapping[str, object], at_ns: int) -> None:
        """Replace the collector's component health with this report (Health.snapshot())."""
        ...

    def collector_health(self) -> list[ComponentRow]:
        """The collector's components as last reported, by name."""
        ...

    def lead(self, role: str) -> bool:
        """Whether this process does the work `role` names, which must run once for every
        collector writing the store (lag polling, retention): True while it holds the role,
        taken when free; a holder that dies (or loses the store) frees it for another."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...
