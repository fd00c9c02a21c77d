"""The store's records, defined once and used by ingest, derivation, backends and readers:
a span (whatever instrumentation and convention version sent it), a hop, a tapped message and
the lag of a partition and of a group.

Times are nanoseconds since the epoch where a record's field ends in _ns; fields in other units
say so in their name (timestamp_ms as Kafka gives it, at_s of a poll).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from store.histogram import Histogram
from store.vocabulary import (
    CONSUMES,
    KAFKA,
    SENDS,
    GroupStatus,
    Operation,
    PartitionStatus,
    SpanKind,
)

# What the store's integers hold: numbers from outside beyond these are dropped or clamped.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@dataclass(slots=True)
class SpanRecord:
    """A span as Flowscope keeps it: identity, timing, outcome, and the message it handled.

    topic is the destination a message was sent to, in its system's terms: a Kafka topic, a
    RabbitMQ exchange (the default exchange as amq.default); queue is where it waited to be
    consumed, in a system that has queues.

    Treated as immutable; not frozen, because a frozen dataclass's __init__ costs a third of
    normalising a span, and ingest runs it for every span.

    The messaging fields are None for spans that did not send or handle a message (HTTP
    requests, internal work); they still belong to their trace.
    """

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str | None
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id) of linked spans
    service: str
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    error: bool
    error_type: str | None
    operation: Operation | None = None
    system: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    message_id: str | None = None  # topic.partition.offset when known
    consumer_group: str | None = None
    correlation_id: str | None = None
    message_key: str | None = None
    retry_attempt: int | None = None
    batch_count: int | None = None
    queue: str | None = None  # where the message waited, in a system with queues (RabbitMQ)
    routing_key: str | None = None

    @property
    def is_send(self) -> bool:
        """True for a span that put a message on a destination (a topic, an exchange)."""
        return self.topic is not None and self.operation in SENDS

    @property
    def is_consume(self) -> bool:
        """True for a span that took a message (or a batch) off a topic or queue."""
        return (self.topic is not None or self.queue is not None) and \
            self.operation in CONSUMES

    @property
    def key(self) -> SpanKey:
        """(trace_id, span_id): how a span is named by parents, links and the store."""
        return (self.trace_id, self.span_id)


SpanKey = tuple[str, str]  # (trace_id, span_id)
SPAN_COLUMNS = tuple(f.name for f in fields(SpanRecord))


def flow_of(correlation_id: str | None, trace_id: str, known: Mapping[str, str]) -> str:
    """The flow a span or message belongs to: its correlation ID, else the flow its trace was
    already seen in (known: trace ID -> correlation ID), else its trace ID. The one rule."""
    return correlation_id or known.get(trace_id) or trace_id


@dataclass(slots=True)
class Hop:
    """One message's trip through a topic (or an exchange and a queue): a send matched with a
    consume, a consume whose send is not known (yet), a send no consumer took (yet), or a
    message only the tap saw. Written by flow derivation, read back by the flow pages; None
    where a side is unknown. trace_id is the trace the hop is shown under (the consumer's,
    when consumed). topic is the destination in its system's terms (see SpanRecord)."""

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
    flow_id: str = ""
    message_id: str | None = None
    producer: SpanKey | None = None
    consumer_span_id: str | None = None
    consumer_is_batch: bool = False
    system: str | None = None  # the messaging system (None: not said, read as Kafka)
    queue: str | None = None
    routing_key: str | None = None

    @property
    def key(self) -> str:
        """What makes a hop unique: its send and consuming service ('trace:span|service'),
        the queue it was consumed from where a send reaches several (a fanout exchange:
        'trace:span|service|queue'), and the delivery when the broker delivered the same
        message again ('...#2': a JetStream redelivery); until its send is known, its consume
        span ('?trace:span')."""
        if self.producer is None:
            return f"?{self.trace_id}:{self.consumer_span_id}"
        key = f"{self.producer[0]}:{self.producer[1]}|{self.consumer_service}"
        if self.queue is not None:
            key = f"{key}|{self.queue}"
        attempt = self.retry_attempt
        return key if attempt is None or attempt <= 1 else f"{key}#{attempt}"

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
class LagRow:
    """One partition of one consumer group at one poll; or one queue (partition, committed and
    end None): group is the queue, topic the exchange that feeds it (else the queue), and its
    lag is its ready and unacknowledged messages, given apart with its consumers."""

    group: str
    topic: str
    partition: int | None
    committed: int | None
    end: int | None
    lag: int | None
    lag_seconds: float | None
    status: PartitionStatus
    at_s: float
    system: str = KAFKA
    ready: int | None = None
    unacknowledged: int | None = None
    consumers: int | None = None


@dataclass(frozen=True)
class GroupLag:
    """A consumer group (or a queue's consumers) at one poll: status, worst partition, totals
    and trend."""

    group: str
    status: GroupStatus
    worst_partition: str | None
    lag: int
    lag_seconds: float | None
    consume_rate: float | None  # messages/s committed (acknowledged, for a queue)
    lag_rate: float | None  # change of lag, messages/s
    catch_up_s: float | None  # None: not catching up
    at_s: float
    system: str = KAFKA


LAG_COLUMNS = tuple(f.name for f in fields(LagRow))
GROUP_LAG_COLUMNS = tuple(f.name for f in fields(GroupLag))


@dataclass(slots=True)
class MessageRecord:
    """One message as the tap saw it on a topic (header values are untrusted text)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    size: int
    correlation_id: str | None
    trace_id: str | None  # from a valid W3C traceparent, else None
    retry_attempt: int | None
    headers: str | None  # JSON [[name, value], ...], kept for dead-letter topics only
    truncated: bool

    @property
    def message_id(self) -> str:
        """topic.partition.offset, as spans name the same message."""
        return f"{self.topic}.{self.partition}.{self.offset}"


MESSAGE_COLUMNS = tuple(f.name for f in fields(MessageRecord))


# How many trace IDs a flow keeps (a flow of a million traces would otherwise grow without end).
FLOW_TRACE_IDS = 50


@dataclass
class FlowTotals:
    """A flow's aggregate (or what one batch adds to it): when it started and last moved, its
    hops, retries and errors, the terminal flags its messages set, and where it went."""

    started_ns: int
    last_ns: int
    hops: int = 0
    retries: int = 0
    errors: int = 0
    flags: int = 0
    services: set[str] = field(default_factory=set)
    topics: set[str] = field(default_factory=set)
    trace_ids: set[str] = field(default_factory=set)

    def merge(self, other: FlowTotals) -> None:
        """Add another aggregate of the same flow into this one."""
        self.started_ns = min(self.started_ns, other.started_ns)
        self.last_ns = max(self.last_ns, other.last_ns)
        self.hops += other.hops
        self.retries += other.retries
        self.errors += other.errors
        self.flags |= other.flags
        self.services |= other.services
        self.topics |= other.topics
        self.trace_ids |= other.trace_ids

    def kept_trace_ids(self) -> list[str]:
        """The trace IDs a store keeps of the flow: the first FLOW_TRACE_IDS, sorted."""
        return sorted(self.trace_ids)[:FLOW_TRACE_IDS]


@dataclass
class EdgeTotals:
    """Counts and latencies of one edge in one time bucket (or what one batch adds to them)."""

    count: int = 0
    errors: int = 0
    retries: int = 0
    latency: Histogram = field(default_factory=Histogram)
    processing: Histogram = field(default_factory=Histogram)

    def merge(self, other: EdgeTotals) -> None:
        """Add another aggregate of the same edge and bucket into this one."""
        self.count += other.count
        self.errors += other.errors
        self.retries += other.retries
        self.latency.merge(other.latency)
        self.processing.merge(other.processing)


# bucket start (s), source, source kind, target, target kind
EdgeKey = tuple[int, str, str, str, str]
