"""Pure flow logic: what a topic means for a flow, a flow's status, and per-batch deltas.

A flow is everything that happened under one correlation ID (or, without one, one trace ID).
Its status comes from the topics its messages reached: a dead-letter topic, a compensation
topic or a completion topic (patterns, configurable), else failed when a step failed and
nothing ended it, stuck when nothing moved for a while, else in flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from collectors.flows.histogram import Histogram
from collectors.record import SpanRecord

DEAD_LETTERED, COMPENSATED, COMPLETED = 4, 2, 1
STATUSES = ("in flight", "completed", "failed", "dead-lettered", "compensated", "stuck")


@dataclass(frozen=True)
class FlowRules:
    """Topic patterns that end a flow, and how long without progress counts as stuck."""

    completed: tuple[str, ...]
    dead_letter: tuple[str, ...]
    compensated: tuple[str, ...]
    stuck_after_s: float

    def flag_of(self, topic: str | None) -> int:
        """The terminal flag a message on this topic sets (0: none)."""
        if not topic:
            return 0
        for patterns, flag in ((self.dead_letter, DEAD_LETTERED),
                               (self.compensated, COMPENSATED), (self.completed, COMPLETED)):
            if any(fnmatchcase(topic, p) for p in patterns):
                return flag
        return 0


def flow_status(flags: int, errors: int, last_ns: int, now_ns: int, stuck_after_s: float) -> str:
    """The status of a flow from its terminal flags, error count and last activity."""
    if flags & DEAD_LETTERED:
        return "dead-lettered"
    if flags & COMPENSATED:
        return "compensated"
    if flags & COMPLETED:
        return "completed"
    if errors:
        return "failed"
    if now_ns - last_ns > stuck_after_s * 1e9:
        return "stuck"
    return "in flight"


@dataclass
class FlowDelta:
    """What one batch of spans adds to one flow (hops and retries are counted as hops are
    matched, by the store)."""

    started_ns: int
    last_ns: int
    hops: int = 0
    retries: int = 0
    errors: int = 0
    flags: int = 0
    services: set[str] = field(default_factory=set)
    topics: set[str] = field(default_factory=set)
    trace_ids: set[str] = field(default_factory=set)

    def add(self, record: SpanRecord, rules: FlowRules) -> None:
        """Fold one span in."""
        self.started_ns = min(self.started_ns, record.start_ns)
        self.last_ns = max(self.last_ns, record.end_ns)
        self.services.add(record.service)
        self.trace_ids.add(record.trace_id)
        self.errors += int(record.error)
        if record.topic:
            self.topics.add(record.topic)
        if record.is_send:
            self.flags |= rules.flag_of(record.topic)


def flow_deltas(records: list[SpanRecord], rules: FlowRules,
                flow_of_trace: Mapping[str, str] | None = None) -> dict[str, FlowDelta]:
    """Per flow, what these spans add. A span without a correlation ID joins the flow its
    trace belongs to (flow_of_trace), else the flow of its trace ID."""
    by_trace = dict(flow_of_trace or {})
    by_trace.update({r.trace_id: r.correlation_id for r in records if r.correlation_id})
    deltas: dict[str, FlowDelta] = {}
    for record in records:
        flow_id = record.correlation_id or by_trace.get(record.trace_id) or record.trace_id
        delta = deltas.get(flow_id)
        if delta is None:
            delta = deltas[flow_id] = FlowDelta(record.start_ns, record.end_ns)
        delta.add(record, rules)
    return deltas


@dataclass
class EdgeDelta:
    """Counts and latencies of one edge in one time bucket."""

    count: int = 0
    errors: int = 0
    retries: int = 0
    latency: Histogram = field(default_factory=Histogram)
    processing: Histogram = field(default_factory=Histogram)


EdgeKey = tuple[int, str, str, str, str]  # bucket start (s), source, source kind, target, kind


def bucket_start(ns: int, bucket_s: int) -> int:
    """The start (unix seconds) of the time bucket holding ns."""
    return int(ns // 1_000_000_000) // bucket_s * bucket_s


def edge_deltas(records: list[SpanRecord], bucket_s: int) -> dict[EdgeKey, EdgeDelta]:
    """Edge counts from spans alone: service -> topic for sends (latency = send time) and
    topic -> service for consumes (processing time; time in queue comes with the hop)."""
    deltas: dict[EdgeKey, EdgeDelta] = {}
    for record in records:
        if record.is_send:
            key: EdgeKey = (bucket_start(record.end_ns, bucket_s), record.service, "service",
                            str(record.topic), "topic")
        elif record.is_consume:
            key = (bucket_start(record.start_ns, bucket_s), str(record.topic), "topic",
                   record.service, "service")
        else:
            continue
        delta = deltas.setdefault(key, EdgeDelta())
        delta.count += max(1, record.batch_count or 1) if record.is_consume else 1
        delta.errors += int(record.error)
        delta.retries += int((record.retry_attempt or 1) > 1)
        duration_ms = (record.end_ns - record.start_ns) / 1e6
        if record.is_send:
            delta.latency.add(duration_ms)
        else:
            delta.processing.add(duration_ms)
    return deltas
