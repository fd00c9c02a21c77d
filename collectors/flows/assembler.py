"""What one batch of spans adds to flows and to edges, before hops are matched.

A flow is everything that happened under one correlation ID (or, without one, one trace ID).
Its status comes from the topics its messages reached (store/vocabulary.py: FlowRules).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from store.records import EdgeKey, EdgeTotals, FlowTotals, MessageRecord, SpanKey, SpanRecord
from store.vocabulary import NS_PER_MS, FlowRules, bucket_start, destination_node


def flow_deltas(records: Sequence[SpanRecord], flow_ids: Mapping[SpanKey, str],
                rules: FlowRules) -> dict[str, FlowTotals]:
    """Per flow, what these spans add (flow_ids: the flow of each span, by key); hops and
    retries are added as hops are matched."""
    deltas: dict[str, FlowTotals] = {}
    flag_of = rules.flag_of
    for record in records:
        flow_id = flow_ids[record.key]
        delta = deltas.get(flow_id)
        if delta is None:
            delta = deltas[flow_id] = FlowTotals(record.start_ns, record.end_ns)
        else:
            delta.started_ns = min(delta.started_ns, record.start_ns)
            delta.last_ns = max(delta.last_ns, record.end_ns)
        delta.services.add(record.service)
        delta.trace_ids.add(record.trace_id)
        if record.error:
            delta.errors += 1
        if record.topic:
            delta.topics.add(record.topic)
            if record.is_send:
                # A subject or routing key can name the dead-letter destination where the
                # topic is a stream or an exchange that serves several.
                delta.flags |= flag_of(record.topic) | flag_of(record.routing_key)
        if record.queue:
            delta.topics.add(record.queue)
    return deltas


def message_deltas(records: Sequence[MessageRecord],
                   flow_at: Mapping[tuple[str, int, int], str | None], rules: FlowRules
                   ) -> dict[str, FlowTotals]:
    """Per flow, what tapped messages add (flow_at: the flow of each message, by topic,
    partition and offset; None: no correlation ID and no trace context, no flow to join)."""
    deltas: dict[str, FlowTotals] = {}
    for record in records:
        flow_id = flow_at[(record.topic, record.partition, record.offset)]
        if flow_id is None:
            continue
        at_ns = record.timestamp_ms * NS_PER_MS
        delta = deltas.setdefault(flow_id, FlowTotals(at_ns, at_ns))
        delta.started_ns = min(delta.started_ns, at_ns)
        delta.last_ns = max(delta.last_ns, at_ns)
        delta.topics.add(record.topic)
        delta.flags |= rules.flag_of(record.topic)
        if record.trace_id:
            delta.trace_ids.add(record.trace_id)
    return deltas


def edge_deltas(records: Sequence[SpanRecord], bucket_s: int) -> dict[EdgeKey, EdgeTotals]:
    """Edge counts from sends alone: service -> topic (or exchange), latency = send time.
    What consumes add comes with their hops (collectors/flows/hops.py)."""
    deltas: dict[EdgeKey, EdgeTotals] = {}
    for record in records:
        if not record.is_send:
            continue
        target, kind = destination_node(record.system, str(record.topic))
        key: EdgeKey = (bucket_start(record.end_ns, bucket_s), record.service, "service",
                        target, kind)
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = EdgeTotals()
        delta.count += 1
        delta.errors += record.error
        delta.retries += (record.retry_attempt or 1) > 1
        delta.latency.add((record.end_ns - record.start_ns) / 1e6)
    return deltas
