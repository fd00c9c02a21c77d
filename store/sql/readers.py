"""Read queries of the SQL stores: topology, flows, one flow. They read aggregates and indexed
rows only, never a scan of raw spans; their SQL is what SQLite and PostgreSQL both speak (qmark
parameters: the PostgreSQL store passes them on as its own)."""

from __future__ import annotations

from store.contract import EdgeRow, FlowRow, Topology
from store.histogram import Histogram
from store.records import Hop
from store.sql.rows import (
    FLOW_FIELDS,
    Db,
    StatusOf,
    edge_rank,
    flow_hops,
    flow_row,
)
from store.vocabulary import SENDS, sql_list

NO_LIMIT = 2**62  # a LIMIT both databases read as none


def read_topology(db: Db, window: list[object], limit: int | None = None,
                  by: str = "count", touching: str | None = None) -> tuple[Topology, int]:
    """Merge a window's edge rows (window: window_edges' parameters) into one graph of the
    `limit` busiest edges (by messages, or with by="retries" by retries, then messages; the
    edges of the node `touching` first) and their nodes; and how many edges the window has
    in all. Edges are ranked by sums SQL takes, so that only the kept edges' histograms are
    decoded: decoding is what a window of thousands of edges costs."""
    totals = db.execute(
        "SELECT source, target, MIN(source_kind), MIN(target_kind), SUM(count * 1.0), "
        f"SUM(errors * 1.0), SUM(retries * 1.0), MIN(first_bucket) FROM {WINDOW_EDGES} "
        "GROUP BY source, target", window).fetchall()
    first = min((row[7] for row in totals), default=None)
    kept = totals if limit is None or len(totals) <= limit else \
        sorted(totals, key=edge_rank(by, touching))[:limit]
    histograms = _edge_histograms(db, window, None if len(kept) == len(totals)
                                  else [(r[0], r[1]) for r in kept])
    nodes: dict[str, str] = {}
    edges = []
    for source, target, source_kind, target_kind, count, errors, retries, _ in kept:
        nodes[source], nodes[target] = source_kind, target_kind
        latency, processing = histograms.get((source, target), (Histogram(), Histogram()))
        edges.append(EdgeRow(source, target, int(count), int(errors), int(retries),
                             latency.percentile(50), latency.percentile(95),
                             processing.percentile(50), processing.percentile(95)))
    edges.sort(key=lambda e: (e.source, e.target))
    return Topology(dict(sorted(nodes.items())), edges, first), len(totals)


# A window's edge rows: the edge buckets up to the first rollup bucket wholly inside it (or up
# to rollups_since, when that is later), the rollups from there on. Parameters: window_edges.
WINDOW_EDGES = (
    "(SELECT source, source_kind, target, target_kind, count, errors, retries, latency, "
    "processing, bucket_start AS first_bucket FROM edge_buckets WHERE bucket_start >= ? "
    "AND bucket_start < ? UNION ALL SELECT source, source_kind, target, target_kind, count, "
    "errors, retries, latency, processing, first_bucket FROM edge_rollups "
    "WHERE bucket_start >= ?) w")


def rollup_meta(db: Db) -> tuple[int, int]:
    """The edge rollups' width in seconds, and the bucket they are complete from: fixed when
    the writer first opens the store (before that, none: every window reads the buckets)."""
    meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN "
                           "('rollup_s', 'rollups_since')").fetchall())
    return int(meta.get("rollup_s", 300)), int(meta.get("rollups_since", 2**62))


def _edge_histograms(db: Db, window: list[object],
                     only: list[tuple[str, str]] | None
                     ) -> dict[tuple[str, str], tuple[Histogram, Histogram]]:
    """The merged latency and processing histograms of these edges (None: of every edge)."""
    merged: dict[tuple[str, str], tuple[Histogram, Histogram]] = {}
    if only == []:
        return merged
    among = ""
    params = list(window)
    if only is not None:
        among = f" WHERE (source, target) IN (VALUES {', '.join(['(?, ?)'] * len(only))})"
        params += [name for pair in only for name in pair]
    for source, target, latency, processing in db.execute(
            f"SELECT source, target, latency, processing FROM {WINDOW_EDGES}{among}", params):
        entry = merged.setdefault((source, target), (Histogram(), Histogram()))
        entry[0].merge(Histogram.from_json(latency))
        entry[1].merge(Histogram.from_json(processing))
    return merged




def read_flows(db: Db, since_ns: int, limit: int, status_of: StatusOf
               ) -> list[FlowRow]:
    """Flows active since since_ns, newest first."""
    rows = db.execute(f"SELECT {FLOW_FIELDS} FROM flows WHERE last_ns >= ? "
                      "ORDER BY last_ns DESC LIMIT ?", (since_ns, limit)).fetchall()
    return [flow_row(row, status_of) for row in rows]


HOP_SELECT = (
    "SELECT topic, partition, \"offset\", producer_service, consumer_service, consumer_group, "
    "produce_start_ns, produce_end_ns, consume_start_ns, consume_end_ns, retry_attempt, error, "
    "consumer_trace_id, system, queue, routing_key FROM hops WHERE flow_id = ? "
    "ORDER BY COALESCE(produce_start_ns, consume_start_ns), consume_start_ns LIMIT ?")
# Sends no consumer took (yet): no hop is keyed by their span (hop keys are
# 'trace:span|consumer service'; '}' is the character after '|'). Comparing flow_id || ''
# keeps SQLite from looking hops up by flow, which reads every hop of the flow for every send
# (the PostgreSQL store drops the hint: its planner does better with the plain equality).
PENDING_WHERE = (
    f"FROM spans s WHERE s.flow_id = ? AND s.operation IN {sql_list(SENDS)} AND NOT EXISTS ("
    "SELECT 1 FROM hops h WHERE h.hop_key >= s.trace_id || ':' || s.span_id || '|' "
    "AND h.hop_key < s.trace_id || ':' || s.span_id || '}' AND h.flow_id || '' = s.flow_id)")
PENDING_SELECT = (
    "SELECT s.topic, s.partition, s.\"offset\", s.service, s.start_ns, s.end_ns, "
    "s.retry_attempt, s.error, s.trace_id, s.system, s.queue, s.routing_key "
    f"{PENDING_WHERE} ORDER BY s.start_ns LIMIT ?")
# Messages only the tap saw: no send span and no hop of the flow names them (looked up by
# message id, as above).
TAPPED_WHERE = (
    "FROM messages m WHERE m.flow_id = ? AND NOT EXISTS (SELECT 1 FROM spans s WHERE "
    f"s.message_id = m.message_id AND s.operation IN {sql_list(SENDS)} AND "
    "s.flow_id || '' = m.flow_id) AND NOT EXISTS (SELECT 1 FROM hops h WHERE h.message_id = "
    "m.message_id AND h.producer_span_id IS NULL AND h.flow_id || '' = m.flow_id)")
TAPPED_SELECT = (
    "SELECT topic, partition, \"offset\", timestamp_ms, retry_attempt, trace_id "
    f"{TAPPED_WHERE} ORDER BY timestamp_ms LIMIT ?")


def read_flow(db: Db, flow_or_trace_id: str, status_of: StatusOf,
              limit: int | None = None) -> tuple[FlowRow, list[Hop], int] | None:
    """One flow by correlation ID, or by a trace ID of one of its spans, with its first
    `limit` hops in time order (its consumed messages, its sends no consumer took yet and
    the messages only the tap saw) and how many more it has."""
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
    flow = flow_row(row, status_of)
    bound = NO_LIMIT if limit is None else limit
    parts = [(db.execute(select, (flow.id, bound)).fetchall(),
              lambda where=where: int(db.execute(f"SELECT COUNT(*) {where}",
                                                 (flow.id,)).fetchone()[0]))
             for select, where in ((HOP_SELECT, "FROM hops WHERE flow_id = ?"),
                                   (PENDING_SELECT, PENDING_WHERE),
                                   (TAPPED_SELECT, TAPPED_WHERE))]
    ordered, more = flow_hops(flow.id, parts, limit)
    return flow, ordered, more
