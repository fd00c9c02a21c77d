"""The collector's write path: spans and tapped messages in, with everything derived from them
(hops, flows, edge and latency aggregates), in one store transaction per batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from collectors.flows.assembler import edge_deltas, flow_deltas, message_deltas
from collectors.flows.hops import HopMatcher
from store.contract import SpanWrites, Store, WriteResult
from store.histogram import Histogram
from store.records import FlowTotals, MessageRecord, SpanRecord, flow_of
from store.vocabulary import FlowFlag, FlowRules, bucket_start


class FlowWriter:
    """Writes spans (idempotent by trace and span id) and tapped messages (by coordinates)
    into a store, with the hops, flows and aggregates they make."""

    def __init__(self, store: Store, rules: FlowRules, bucket_s: int) -> None:
        self.store, self.rules, self.bucket_s = store, rules, bucket_s

    def write_spans(self, records: Sequence[SpanRecord]) -> WriteResult:
        """Write spans and what derives from them, all or nothing; StoreUnavailable when the
        store, not the records, made it fail."""
        unique = list({r.key: r for r in records}.values())
        with self.store.write_batch() as writes:
            correlated = {r.trace_id: r.correlation_id for r in unique if r.correlation_id}
            by_trace = writes.known_flows({r.trace_id for r in unique} - correlated.keys())
            by_trace.update(correlated)
            # Spans stored under their trace ID before the trace's correlation ID was known
            # (an HTTP span ahead of the first message) move into the correlated flow.
            adopted = writes.adopt_flows(by_trace)
            flow_ids = {r.key: flow_of(r.correlation_id, r.trace_id, by_trace) for r in unique}
            new = writes.insert_spans(unique, [flow_ids[r.key] for r in unique])
            flows = flow_deltas(new, flow_ids, self.rules)
            edges = edge_deltas([r for r in new if r.is_send], self.bucket_s)
            hops = HopMatcher(writes, new, flow_ids, self.bucket_s, flows=flows,
                              edges=edges).run()
            for flow_id, totals in adopted:
                flows.setdefault(flow_id, FlowTotals(totals.started_ns,
                                                     totals.last_ns)).merge(totals)
            self._merge_flows(writes, flows)
            writes.merge_edges(edges)
        return WriteResult(len(new), len(records) - len(new), hops)

    def write_messages(self, records: Sequence[MessageRecord]) -> int:
        """Record tapped messages and fold them into their flows; how many were new."""
        with self.store.write_batch() as writes:
            known = writes.known_flows({r.trace_id for r in records
                                        if r.trace_id and not r.correlation_id})
            flow_ids = [flow_of(r.correlation_id, r.trace_id, known) if r.trace_id
                        else r.correlation_id for r in records]
            flow_at = {(r.topic, r.partition, r.offset): f
                       for r, f in zip(records, flow_ids, strict=True)}
            new = writes.insert_messages(records, flow_ids)
            deltas = message_deltas(new, flow_at, self.rules)
            self._merge_flows(writes, deltas)
        return len(new)

    def _merge_flows(self, writes: SpanWrites, deltas: Mapping[str, FlowTotals]) -> None:
        """Merge flow totals; the end-to-end latency of the flows that just completed."""
        if not deltas:
            return
        before = writes.merge_flows(deltas)
        latencies: dict[tuple[int, str], Histogram] = {}
        for flow_id, delta in deltas.items():
            stored = before.get(flow_id)
            if not delta.flags & FlowFlag.COMPLETED or (
                    stored is not None and stored.flags & FlowFlag.COMPLETED):
                continue
            flow = FlowTotals(delta.started_ns, delta.last_ns, topics=set(delta.topics))
            if stored is not None:
                flow.merge(stored)
            flow_type = next((t for t in sorted(flow.topics)
                              if self.rules.flag_of(t) == FlowFlag.COMPLETED), "other")
            latencies.setdefault((bucket_start(flow.last_ns, self.bucket_s), flow_type),
                                 Histogram()).add((flow.last_ns - flow.started_ns) / 1e6)
        if latencies:
            writes.merge_flow_latency(latencies)
