"""Stored rows as records, and records as rows: what every SQL backend shares, whatever its
dialect. No query lives here."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from store.contract import FlowCounts, FlowRow
from store.records import SPAN_COLUMNS, FlowTotals, Hop, SpanRecord
from store.vocabulary import FlowRules, FlowStatus


class Db(Protocol):
    """A connection the shared read queries run on (qmark or :name parameters)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any:
        """Run one statement; a cursor over its rows."""
        ...


StatusOf = Callable[[int, int, int], FlowStatus]  # (flags, errors, last_ns) -> status

ROLLUP_S = 300  # an edge rollup's width (a multiple of the bucket width: rollup_width)


def rollup_width(bucket_s: int) -> int:
    """The rollup width for edge buckets of bucket_s seconds: ROLLUP_S, rounded down to a
    multiple of bucket_s (and at least one bucket)."""
    return max(bucket_s, ROLLUP_S // bucket_s * bucket_s)


# The columns of a flow, in the tables' order: how writes and readers select a flow.
FLOW_FIELDS = ("flow_id, started_ns, last_ns, hops, retries, errors, flags, services, topics, "
               "trace_ids")
HOP_COLUMNS = ("hop_key", "producer_trace_id", "producer_span_id", "consumer_trace_id",
               "consumer_span_id", "consumer_is_batch", "flow_id", "topic", "partition",
               "offset", "message_id", "producer_service", "consumer_service", "consumer_group",
               "produce_start_ns", "produce_end_ns", "consume_start_ns", "consume_end_ns",
               "retry_attempt", "error", "system", "queue", "routing_key")
# The milliseconds whose nanoseconds an int64 holds, as every other time of the store.
MS_RANGE = (-(2**63 // 1_000_000), (2**63 - 1) // 1_000_000)

_NAMES_JSON: dict[tuple[str, ...], str] = {}
NAMES_JSON_CACHE = 4096


def names_json(names: set[str]) -> str:
    """A set of service or topic names as a sorted JSON list. Flows of one system reach the
    same few sets again and again: their text is kept (a bounded cache) instead of encoded
    for every flow of every batch."""
    key = tuple(sorted(names))
    text = _NAMES_JSON.get(key)
    if text is None:
        if len(_NAMES_JSON) >= NAMES_JSON_CACHE:
            _NAMES_JSON.clear()
        text = _NAMES_JSON[key] = json.dumps(key)
    return text


def flow_totals(row: Sequence) -> FlowTotals:  # type: ignore[type-arg]
    """A stored flow row (FLOW_FIELDS) as totals."""
    return FlowTotals(row[1], row[2], row[3], row[4], row[5], row[6], set(json.loads(row[7])),
                      set(json.loads(row[8])), set(json.loads(row[9])))


def flow_row(row: Sequence, status_of: StatusOf) -> FlowRow:  # type: ignore[type-arg]
    """A stored flow row (FLOW_FIELDS) as a reader shows it, with its status."""
    flow_id, started, last, hops, retries, errors, flags, services, topics, traces = row
    return FlowRow(flow_id, status_of(flags, errors, last), started, last, hops, retries,
                   errors, json.loads(services), json.loads(topics), json.loads(traces))


def hop_values(hop: Hop) -> tuple[object, ...]:
    """A hop as a row of HOP_COLUMNS."""
    producer = hop.producer or (None, None)
    return (hop.key, producer[0], producer[1], hop.trace_id, hop.consumer_span_id,
            int(hop.consumer_is_batch), hop.flow_id, hop.topic, hop.partition, hop.offset,
            hop.message_id, hop.producer_service, hop.consumer_service, hop.consumer_group,
            hop.produce_start_ns, hop.produce_end_ns, hop.consume_start_ns, hop.consume_end_ns,
            hop.retry_attempt, int(hop.error), hop.system, hop.queue, hop.routing_key)


def encode_links(links: tuple[tuple[str, str], ...]) -> str | None:
    """Links as stored: 'trace:span' pairs separated by commas."""
    return ",".join(f"{t}:{s}" for t, s in links) if links else None


def decode_links(text: str | None) -> tuple[tuple[str, str], ...]:
    """The links stored by encode_links."""
    if not text:
        return ()
    return tuple((part[:32], part[33:]) for part in text.split(","))


def span_record(row: Sequence[object]) -> SpanRecord:
    """A stored spans row (SPAN_COLUMNS) as a record."""
    values = dict(zip(SPAN_COLUMNS, row, strict=True))
    values["links"] = decode_links(values["links"])  # type: ignore[arg-type]
    values["error"] = bool(values["error"])
    return SpanRecord(**values)  # type: ignore[arg-type]


def hop_order(hop: Hop) -> tuple[int, int]:
    """A flow's hops in time order: by when produced (else consumed), then consumed."""
    start = hop.produce_start_ns if hop.produce_start_ns is not None else hop.consume_start_ns
    return (0 if start is None else start,
            0 if hop.consume_start_ns is None else hop.consume_start_ns)


def ms_to_ns(ms: int) -> int:
    """Milliseconds as nanoseconds, held to int64 as the store's other times are."""
    return min(max(ms, MS_RANGE[0]), MS_RANGE[1]) * 1_000_000


def header_pairs(text: str | None) -> tuple[tuple[str, str], ...]:
    """Stored headers ([[name, value], ...]) as text pairs; anything else is kept whole, as
    one pair with no name, rather than lost or an error."""
    try:
        decoded = json.loads(text or "[]")
        return tuple((str(k), str(v)) for k, v in decoded)
    except (ValueError, TypeError):
        return (("", str(text)),)


def edge_rank(by: str, touching: str | None) -> Callable[[tuple], tuple]:  # type: ignore[type-arg]
    """The sort key of a window's edge totals (source, target, kinds, count, errors, retries,
    first bucket), busiest first: by messages, or by retries then messages; the edges of the
    node `touching` first."""

    def key(row: tuple) -> tuple:  # type: ignore[type-arg]
        source, target, _, _, count, _, retries, _ = row
        elsewhere = touching is not None and touching not in (source, target)
        return (elsewhere, -retries if by == "retries" else 0, -count, source, target)

    return key


def window_edges(rollup: tuple[int, int], since_bucket: int) -> list[object]:
    """Where a window from since_bucket on reads its edges (rollup: the rollups' width and
    the bucket they are complete from): the edge buckets from since_bucket up to the first
    rollup bucket wholly inside the window (or up to the rollups' start, when that is later),
    the rollups from there on. [since_bucket, head_end, head_end]."""
    width, since = rollup
    head_end = max(-(-since_bucket // width) * width, since)
    return [since_bucket, head_end, head_end]


def consumed_hop(row: Sequence, flow_id: str) -> Hop:  # type: ignore[type-arg]
    """A stored hop (topic, partition, offset, producer, consumer, group, produce start and
    end, consume start and end, attempt, error, consumer trace, system, queue, routing key)."""
    return Hop(*row[:11], bool(row[11]), row[12], flow_id=flow_id, system=row[13],
               queue=row[14], routing_key=row[15])


def pending_hop(row: Sequence, flow_id: str) -> Hop:  # type: ignore[type-arg]
    """A send no consumer took yet (topic, partition, offset, service, start, end, attempt,
    error, trace, system, queue, routing key)."""
    (topic, partition, offset, service, start, end, attempt, error, trace_id, system, queue,
     routing_key) = row
    return Hop(topic, partition, offset, producer_service=service, consumer_service=None,
               consumer_group=None, produce_start_ns=start, produce_end_ns=end,
               consume_start_ns=None, consume_end_ns=None, retry_attempt=attempt,
               error=bool(error), trace_id=trace_id, flow_id=flow_id, system=system,
               queue=queue, routing_key=routing_key)


def tapped_hop(row: Sequence, flow_id: str) -> Hop:  # type: ignore[type-arg]
    """A message only the tap saw (topic, partition, offset, timestamp ms, attempt, trace)."""
    topic, partition, offset, at_ms, attempt, trace_id = row
    return Hop(topic, partition, offset, producer_service=None, consumer_service=None,
               consumer_group=None, produce_start_ns=ms_to_ns(at_ms),
               produce_end_ns=ms_to_ns(at_ms), consume_start_ns=None, consume_end_ns=None,
               retry_attempt=attempt, error=False, trace_id=trace_id or "", flow_id=flow_id)


def flow_hops(flow_id: str, parts: Sequence[tuple[Sequence[Sequence], Callable[[], int]]],  # type: ignore[type-arg]
              limit: int | None) -> tuple[list[Hop], int]:
    """A flow's first `limit` hops in time order from its three kinds of rows (consumed,
    pending, tapped: each the rows its query read, at most `limit`, with how to count all of
    them), and how many more it has."""
    hops: list[Hop] = []
    total = 0
    for (rows, count), make in zip(parts, (consumed_hop, pending_hop, tapped_hop),
                                   strict=True):
        hops += [make(row, flow_id) for row in rows]
        total += len(rows) if limit is None or len(rows) < limit else count()
    ordered = sorted(hops, key=hop_order)[:limit]
    return ordered, total - len(ordered)


def tally_flows(rows: Iterable[Sequence], now_ns: int, rules: FlowRules  # type: ignore[type-arg]
                ) -> FlowCounts:
    """The overview's counts from a window's flows grouped by (flags, failed, moved in this
    window, quiet past the stuck limit, started in this window (1), the one before (0) or
    earlier (-1), how many)."""
    counts = FlowCounts()
    for flags, failed, recent, is_quiet, started, count in rows:
        status = rules.status(flags, failed, 0 if is_quiet else now_ns, now_ns)
        if status == FlowStatus.IN_FLIGHT:
            counts.in_flight += count
        elif status == FlowStatus.STUCK:
            counts.stuck += count
        else:
            (counts.now if recent else counts.before)[status] += count
        if started == 1:
            counts.started_now += count
        elif started == 0:
            counts.started_before += count
    return counts
