"""Hop matching: a consume span with the send of its message, in any arrival order.

A consume span finds its send by its parent (a per-message consume), by its links (a batch
consume, or a consumer that links instead of parenting), else by message id
(topic.partition.offset for Kafka; the message id of a queue). A consume whose send is not
known yet is kept as a hop waiting for it ('?trace:span'), and a link whose span is not known
yet waits in the store; a send arriving later completes both. Every lookup is one set-based
query per batch, not one per span.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from store.contract import SpanWrites
from store.records import EdgeKey, EdgeTotals, FlowTotals, Hop, SpanKey, SpanRecord
from store.vocabulary import (
    DEFAULT_EXCHANGE,
    bucket_start,
    destination_node,
    waiting_node,
)

Span = tuple[SpanRecord, str]  # a span with its flow


@dataclass(slots=True)
class _Planned:
    """A hop to insert, and what it adds to the aggregates if it is new."""

    hop: Hop
    producer: SpanRecord | None
    consume: SpanRecord
    count: bool  # a message consumed (a hop only upgraded or completed was counted before)
    latency: bool  # add its time in queue


class HopMatcher:
    """Matches one batch's consume spans with their sends, and its sends with the consume
    spans waiting for them; adds what each new hop means to the flow and edge totals."""

    def __init__(self, writes: SpanWrites, new: Sequence[SpanRecord],
                 flow_ids: Mapping[SpanKey, str], bucket_s: int, *,
                 flows: dict[str, FlowTotals], edges: dict[EdgeKey, EdgeTotals]) -> None:
        self.writes, self.bucket_s = writes, bucket_s
        self.flows, self.edges = flows, edges
        self.batch: dict[SpanKey, Span] = {r.key: (r, flow_ids[r.key]) for r in new}
        self.consumes = [r for r in new if r.is_consume]
        self.sends = [r for r in new if r.is_send]
        self.created = 0

    def run(self) -> int:
        """Match, insert the hops, add their counts; how many messages were consumed."""
        waiting_hops, batch_hops, waiting_links = self.writes.waiting()
        if self.consumes:
            batch_hops = batch_hops or any(c.batch_count is not None for c in self.consumes)
            self._insert(self._match_consumes(batch_hops))
        if self.sends and (waiting_hops or waiting_links):
            self._insert(self._match_late_sends(waiting_hops, waiting_links))
        return self.created

    # -- consume spans of this batch -----------------------------------------------------

    def _match_consumes(self, batch_hops: bool) -> list[_Planned]:
        wanted: set[SpanKey] = set()
        for c in self.consumes:
            if c.parent_span_id and c.batch_count is None:
                wanted.add((c.trace_id, c.parent_span_id))
            wanted.update(c.links)
        known = self._spans(wanted)
        found = {c.key: self._producers_found(c, known) for c in self.consumes}
        by_message = self._sends_by_message_id(
            {c.message_id for c in self.consumes
             if c.message_id and c.batch_count is None and not found[c.key]})
        links: list[tuple[SpanKey, SpanKey]] = []
        planned: list[_Planned] = []
        upgrades: set[str] = set()
        for c in self.consumes:
            batch = c.batch_count is not None
            producers = found[c.key]
            # Links whose span is not known yet wait for it (a batch consume keeps them all).
            if not (producers and not batch):
                parent = (c.trace_id, c.parent_span_id)
                links += [(link, c.key) for link in c.links
                          if link not in known and link != parent]
            if not producers and not batch and c.message_id in by_message:
                producers = [by_message[c.message_id]]
            if not producers and not batch:
                planned.append(self._plan(None, c, count=True, latency=False))
            for producer in producers if batch else producers[:1]:
                plan = self._plan(producer, c, count=True, latency=True)
                if not batch and batch_hops:
                    upgrades.add(plan.hop.key)
                planned.append(plan)
        if links:
            self.writes.add_links(links)
        # A per-message consume span replaces a hop seen only through a batch span's link:
        # the message was counted then.
        upgraded = self.writes.delete_hops(upgrades, batch_only=True) if upgrades else set()
        for plan in planned:
            if plan.hop.key in upgraded and not plan.hop.consumer_is_batch:
                plan.count = plan.latency = False
        return planned

    def _producers_found(self, consume: SpanRecord, known: Mapping[SpanKey, Span]
                         ) -> list[Span]:
        """The sends a consume span names by parent (unless a batch) and by links."""
        candidates: list[SpanKey] = []
        if consume.parent_span_id and consume.batch_count is None:
            candidates.append((consume.trace_id, consume.parent_span_id))
        candidates.extend(consume.links)
        found: dict[SpanKey, Span] = {}
        for key in candidates:
            span = known.get(key)
            if span is not None and span[0].is_send:
                found[key] = span
        return list(found.values())

    # -- sends of this batch that consume spans were waiting for ---------------------------

    def _match_late_sends(self, waiting_hops: bool, waiting_links: bool) -> list[_Planned]:
        by_send: dict[SpanKey, list[tuple[SpanKey, bool]]] = {}  # consume, linked?
        if waiting_hops:
            for parent, consume in self.writes.consumes_of({s.key for s in self.sends}):
                by_send.setdefault(parent, []).append((consume, False))
            sends_of = {}
            for s in self.sends:
                if s.message_id:
                    sends_of.setdefault(s.message_id, s.key)
            for message_id, consume in self.writes.waiting_hops(set(sends_of)):
                by_send.setdefault(sends_of[message_id], []).append((consume, False))
        if waiting_links:
            for linked, consume in self.writes.take_links({s.key for s in self.sends}):
                by_send.setdefault(linked, []).append((consume, True))
        # Consume spans of this batch were matched already.
        for key, candidates in by_send.items():
            by_send[key] = [(c, linked) for c, linked in candidates if c not in self.batch]
        consumers = {c for candidates in by_send.values() for c, _ in candidates}
        if not consumers:
            return []
        waited = self.writes.delete_hops({_waiting_key(c) for c in consumers})
        spans = self.writes.spans(consumers)
        planned = []
        for send in self.sends:
            producer = self.batch[send.key]
            for consume_key, linked in by_send.get(send.key, ()):
                had = _waiting_key(consume_key) in waited
                waited.discard(_waiting_key(consume_key))
                consume = spans.get(consume_key)
                if consume is None or not (had or linked):
                    continue
                # A hop that waited was counted when its consume arrived; a link was not.
                planned.append(self._plan(producer, consume[0], count=not had, latency=True,
                                          consume_flow=consume[1]))
        return planned

    # -- lookups and writes ----------------------------------------------------------------

    def _spans(self, keys: set[SpanKey]) -> dict[SpanKey, Span]:
        """Spans by key: this batch's, then the store's."""
        found = {k: self.batch[k] for k in keys if k in self.batch}
        missing = keys - found.keys()
        if missing:
            found.update(self.writes.spans(missing))
        return found

    def _sends_by_message_id(self, message_ids: set[str | None]) -> dict[str, Span]:
        """A send for each message id: this batch's first, else the store's."""
        wanted = {m for m in message_ids if m}
        if not wanted:
            return {}
        found: dict[str, Span] = {}
        for send in self.sends:
            if send.message_id in wanted and send.message_id not in found:
                found[send.message_id] = self.batch[send.key]
        missing = wanted - found.keys()
        if missing:
            found.update(self.writes.sends_by_message_id(missing))
        return found

    def _plan(self, producer: Span | None, consume: SpanRecord, *, count: bool,
              latency: bool, consume_flow: str | None = None) -> _Planned:
        send = producer[0] if producer else None
        flow_id = producer[1] if producer else consume_flow or self.batch[consume.key][1]
        source = send or consume
        destination, queue = _route(send, consume)
        # Positional, in Hop's field order: this runs for every message.
        hop = Hop(destination, source.partition, source.offset,
                  send.service if send else None, consume.service, consume.consumer_group,
                  send.start_ns if send else None, send.end_ns if send else None,
                  consume.start_ns, consume.end_ns, consume.retry_attempt, consume.error,
                  consume.trace_id, flow_id, source.message_id, send.key if send else None,
                  consume.span_id, consume.batch_count is not None, source.system, queue,
                  source.routing_key or consume.routing_key)
        return _Planned(hop, send, consume, count, latency)

    def _insert(self, planned: Iterable[_Planned]) -> None:
        """Insert the planned hops; add what the new ones mean to the aggregates."""
        plans = {id(p.hop): p for p in planned}
        if not plans:
            return
        for hop in self.writes.insert_hops([p.hop for p in plans.values()]):
            self._count(plans[id(hop)])

    def _count(self, plan: _Planned) -> None:
        """Add a hop to its edges: topic -> service; or, where the message waited in a queue,
        exchange -> queue (messages routed) and queue -> service."""
        consume, producer, hop = plan.consume, plan.producer, plan.hop
        bucket = bucket_start(consume.start_ns, self.bucket_s)
        source, source_kind = destination_node(hop.system, hop.topic)
        routed = None
        if hop.queue is not None:
            # The exchange that delivered it into the queue (or the stream that holds it for
            # the consumer), as the consume names it: a message sent to a delay exchange comes
            # back through the work exchange.
            exchange = consume.topic if consume.queue is not None and consume.topic \
                else hop.topic
            queue, queue_kind = waiting_node(hop.system, exchange, hop.queue)
            if exchange:
                routed = (bucket, *destination_node(hop.system, exchange), queue, queue_kind)
            source, source_kind = queue, queue_kind
        key = (bucket, source, source_kind, consume.service, "service")
        edge = self.edges.get(key)
        if edge is None:
            edge = self.edges[key] = EdgeTotals()
        if producer is not None and plan.latency:
            edge.latency.add(max(0.0, (consume.start_ns - producer.end_ns) / 1e6))
        if not plan.count:
            return
        self.created += 1
        retried = (consume.retry_attempt or 1) > 1
        edge.count += 1
        edge.errors += consume.error
        edge.retries += retried
        edge.processing.add((consume.end_ns - consume.start_ns) / 1e6)
        if routed is not None:
            route = self.edges.get(routed)
            if route is None:
                route = self.edges[routed] = EdgeTotals()
            route.count += 1
            route.retries += retried
        flow = self.flows.get(plan.hop.flow_id)
        if flow is None:
            flow = self.flows[plan.hop.flow_id] = FlowTotals(consume.start_ns, consume.end_ns)
        flow.hops += 1
        flow.retries += retried


def _route(send: SpanRecord | None, consume: SpanRecord) -> tuple[str, str | None]:
    """The destination and queue of a hop. A consume span that names one destination only
    (aio-pika's, through RabbitMQ's default exchange) names the queue the send's routing key
    addressed; else the send names the destination, the consume its queue."""
    if send is None:
        return consume.topic or "", consume.queue
    if consume.queue is None and send.topic == DEFAULT_EXCHANGE and \
            consume.topic is not None and consume.topic == send.routing_key:
        return DEFAULT_EXCHANGE, consume.topic
    return send.topic or consume.topic or "", consume.queue


def _waiting_key(consume: SpanKey) -> str:
    """The key of the hop a consume span keeps while its send is not known."""
    return f"?{consume[0]}:{consume[1]}"
