"""Read queries of the SQLite store: topology, flows, one flow. They read aggregates and
indexed rows only, never a scan of raw spans."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from collectors.flows.histogram import Histogram
from collectors.store.interface import EdgeRow, FlowRow, HopRow, Topology

StatusOf = Callable[[int, int, int], str]  # (flags, errors, last_ns) -> status


def read_topology(db: sqlite3.Connection, since_bucket: int) -> Topology:
    """Merge the edge buckets since since_bucket into one graph."""
    merged: dict[tuple[str, str], list] = {}  # type: ignore[type-arg]
    nodes: dict[str, str] = {}
    first: int | None = None
    for start, source, source_kind, target, target_kind, count, errors, retries, latency, \
            processing in db.execute(
                "SELECT bucket_start, source, source_kind, target, target_kind, count, errors, "
                "retries, latency, processing FROM edge_buckets WHERE bucket_start >= ?",
                (since_bucket,)):
        first = start if first is None else min(first, start)
        nodes[source], nodes[target] = source_kind, target_kind
        entry = merged.setdefault((source, target), [0, 0, 0, Histogram(), Histogram()])
        entry[0] += count
        entry[1] += errors
        entry[2] += retries
        entry[3].merge(Histogram.from_json(latency))
        entry[4].merge(Histogram.from_json(processing))
    edges = [EdgeRow(source, target, c, e, r, lat.percentile(50), lat.percentile(95),
                     proc.percentile(50), proc.percentile(95))
             for (source, target), (c, e, r, lat, proc) in sorted(merged.items())]
    return Topology(dict(sorted(nodes.items())), edges, first)


FLOW_FIELDS = ("flow_id, started_ns, last_ns, hops, retries, errors, flags, services, topics, "
               "trace_ids")


def _flow_row(row: tuple, status_of: StatusOf) -> FlowRow:  # type: ignore[type-arg]
    flow_id, started, last, hops, retries, errors, flags, services, topics, traces = row
    return FlowRow(flow_id, status_of(flags, errors, last), started, last, hops, retries,
                   errors, json.loads(services), json.loads(topics), json.loads(traces))


def read_flows(db: sqlite3.Connection, since_ns: int, limit: int, status_of: StatusOf
               ) -> list[FlowRow]:
    """Flows active since since_ns, newest first."""
    rows = db.execute(f"SELECT {FLOW_FIELDS} FROM flows WHERE last_ns >= ? "
                      "ORDER BY last_ns DESC LIMIT ?", (since_ns, limit)).fetchall()
    return [_flow_row(row, status_of) for row in rows]


def read_flow(db: sqlite3.Connection, flow_or_trace_id: str, status_of: StatusOf
              ) -> tuple[FlowRow, list[HopRow]] | None:
    """One flow by correlation ID, or by a trace ID of one of its spans, with its hops."""
    row = db.execute(f"SELECT {FLOW_FIELDS} FROM flows WHERE flow_id = ?",
                     (flow_or_trace_id,)).fetchone()
    if row is None:
        owner = db.execute("SELECT flow_id FROM spans WHERE trace_id = ? LIMIT 1",
                           (flow_or_trace_id,)).fetchone()
        if owner is None:
            return None
        row = db.execute(f"SELECT {FLOW_FIELDS} FROM flows WHERE flow_id = ?",
                         (owner[0],)).fetchone()
        if row is None:
            return None
    flow = _flow_row(row, status_of)
    hops = [HopRow(*r[:11], bool(r[11]), r[12]) for r in db.execute(
        "SELECT topic, partition, \"offset\", producer_service, consumer_service, "
        "consumer_group, produce_start_ns, produce_end_ns, consume_start_ns, consume_end_ns, "
        "retry_attempt, error, consumer_trace_id FROM hops WHERE flow_id = ? "
        "ORDER BY COALESCE(produce_start_ns, consume_start_ns), consume_start_ns",
        (flow.id,))]
    matched = set(db.execute("SELECT producer_trace_id, producer_span_id FROM hops WHERE "
                             "flow_id = ? AND producer_span_id IS NOT NULL", (flow.id,)))
    pending = [HopRow(r[0], r[1], r[2], r[3], None, None, r[4], r[5], None, None,
                      r[6], bool(r[7]), r[8]) for r in db.execute(
        "SELECT s.topic, s.partition, s.\"offset\", s.service, s.start_ns, s.end_ns, "
        "s.retry_attempt, s.error, s.trace_id, s.span_id FROM spans s WHERE s.flow_id = ? "
        "AND s.operation IN ('send', 'create')", (flow.id,)) if (r[8], r[9]) not in matched]
    known = {(h.topic, h.partition, h.offset) for h in hops + pending}
    tapped = [HopRow(r[0], r[1], r[2], None, None, None, r[3] * 1_000_000, r[3] * 1_000_000,
                     None, None, r[4], False, r[5] or "")
              for r in db.execute(
                  "SELECT topic, partition, \"offset\", timestamp_ms, retry_attempt, "
                  "trace_id FROM messages WHERE flow_id = ?", (flow.id,))
              if (r[0], r[1], r[2]) not in known]
    ordered = sorted(hops + pending + tapped,
                     key=lambda h: (h.produce_start_ns or h.consume_start_ns or 0,
                                    h.consume_start_ns or 0))
    return flow, ordered
