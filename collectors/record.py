"""The one internal record of a span, whatever instrumentation and convention version sent it."""

from __future__ import annotations

from dataclasses import dataclass, fields

# What the store's integers hold: numbers from outside beyond these are dropped or clamped.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@dataclass(slots=True)
class SpanRecord:
    """A span as Flowscope keeps it: identity, timing, outcome, and the message it handled.

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
    kind: str  # producer | consumer | client | server | internal
    start_ns: int
    end_ns: int
    error: bool
    error_type: str | None
    operation: str | None = None  # send | receive | process | settle | create
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

    @property
    def is_send(self) -> bool:
        """True for a span that put a message on a topic."""
        return self.topic is not None and self.operation in ("send", "create")

    @property
    def is_consume(self) -> bool:
        """True for a span that took a message (or a batch) off a topic."""
        return self.topic is not None and self.operation in ("process", "receive")

    @property
    def flow_id(self) -> str:
        """The flow this span belongs to: its correlation ID, else its trace ID."""
        return self.correlation_id or self.trace_id


SPAN_COLUMNS = tuple(f.name for f in fields(SpanRecord))


@dataclass(frozen=True)
class LagRow:
    """One partition of one consumer group at one poll."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int | None
    lag: int | None
    lag_seconds: float | None
    status: str  # OK | WARN | STOP | STALL | REWIND
    at_s: float


@dataclass(frozen=True)
class GroupLag:
    """A consumer group at one poll: status, worst partition, totals and trend."""

    group: str
    status: str  # OK | WARN | ERR
    worst_partition: str | None
    lag: int
    lag_seconds: float | None
    consume_rate: float | None  # messages/s committed
    lag_rate: float | None  # change of lag, messages/s
    catch_up_s: float | None  # None: not catching up
    at_s: float


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
