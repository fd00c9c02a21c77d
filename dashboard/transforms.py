"""Pure pandas: store records in, the frames the pages and charts draw out. No Streamlit here.

Units are fixed across the dashboard: latency in milliseconds, lag in messages and in seconds,
rates in messages (or flows) per second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict

import pandas as pd

from store.contract import (
    DeadLetter,
    EdgeBucket,
    EdgeRow,
    FailedStep,
    FlowCounts,
    FlowRow,
    LatencyBucket,
    PropagationRow,
    Topology,
)
from store.histogram import Histogram
from store.records import GroupLag, Hop, LagRow
from store.vocabulary import KAFKA, NodeKind, destination_node, waiting_node

WINDOWS = {"5m": 300, "15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}
DEFAULT_WINDOW = "15m"
STATUS_RANK = {"OK": 0, "WARN": 1, "ERR": 2, "STOP": 2, "STALL": 2, "REWIND": 2}
REASON_HEADERS = ("dlq-reason", "kafka_dlt-exception-message", "x-exception-message",
                  "error", "reason")
TEXT_LIMIT = 200  # characters of untrusted text a table cell shows
# pandas holds times as int64 nanoseconds: from 1677-09-21 to 2262-04-11; -2**63 is NaT.
TIME_RANGE_NS = (-(2**63) + 1, 2**63 - 1)
TIME_RANGE_S = (-9_223_372_036.0, 9_223_372_036.0)
UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "ns": 1}


def cut_text(text: object, limit: int = TEXT_LIMIT) -> str:
    """Text of at most `limit` characters, marked with '…' where it was cut."""
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def cut_columns(frame: pd.DataFrame, keep: Iterable[str] = (), limit: int = TEXT_LIMIT
                ) -> pd.DataFrame:
    """The frame with the text of its columns cut to `limit` characters, except the columns
    in `keep` (links, which must stay whole to work)."""
    kept = set(keep)
    texts = [c for c in frame.columns if c not in kept and (
        frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c].dtype))]
    if not texts:
        return frame
    return frame.assign(**{c: frame[c].map(lambda v: cut_text(v, limit) if isinstance(v, str)
                                           else v) for c in texts})


def utc_time(value: float | None, unit: str = "ns") -> pd.Timestamp:
    """A time as a UTC timestamp; one beyond the years pandas holds (1677 to 2262) is shown
    at that end instead of raising, and None is NaT."""
    if value is None or pd.isna(value):
        return pd.NaT
    if isinstance(value, int):
        ns = min(max(value * UNIT_NS[unit], TIME_RANGE_NS[0]), TIME_RANGE_NS[1])
        return pd.Timestamp(ns, unit="ns", tz="UTC")
    seconds = min(max(value * UNIT_NS[unit] / 1e9, TIME_RANGE_S[0]), TIME_RANGE_S[1])
    return pd.Timestamp(seconds, unit="s", tz="UTC")


def utc_times(values: pd.Series, unit: str = "s") -> pd.Series:
    """A column of times as UTC timestamps, held to the years pandas holds as utc_time."""
    seconds = pd.to_numeric(values, errors="coerce").astype("float64") * (UNIT_NS[unit] / 1e9)
    return pd.to_datetime(seconds.clip(*TIME_RANGE_S), unit="s", utc=True)


def window_seconds(name: str | None) -> int:
    """The window a name like '15m' stands for (the default for anything unknown)."""
    return WINDOWS.get(name or "", WINDOWS[DEFAULT_WINDOW])


def observed_seconds(window_s: float, first_bucket_s: float | None, now_s: float,
                     bucket_s: float = 10.0) -> float:
    """The part of the window the store has data for: the whole window, or, when the first
    data came later (a demo started a minute ago), from its bucket until now. Rates over it
    say what flows now, not an average diluted by the minutes before anything ran."""
    if first_bucket_s is None:
        return max(window_s, 1.0)
    return max(min(window_s, now_s - first_bucket_s), bucket_s, 1.0)


def build_edges(topology: Topology, rate_over_s: float) -> pd.DataFrame:
    """One row per edge with rates (messages/s over rate_over_s: the window, or the observed
    part of it, see observed_seconds), error and retry shares, p95s in ms."""
    rows = [asdict(e) for e in topology.edges]
    columns = ["source", "target", "count", "errors", "retries", "p50_ms", "p95_ms",
               "processing_p50_ms", "processing_p95_ms"]
    frame = pd.DataFrame(rows, columns=columns)
    # produce: service -> topic or exchange; consume: topic or queue -> service; route:
    # exchange -> queue (the messages an exchange routed into a queue).
    frame["kind"] = ["produce" if topology.nodes.get(s) == NodeKind.SERVICE else
                     "consume" if topology.nodes.get(t) == NodeKind.SERVICE else "route"
                     for s, t in zip(frame["source"], frame["target"], strict=True)]
    frame["rate"] = frame["count"] / max(rate_over_s, 1.0)
    counts = frame["count"].where(frame["count"] > 0)
    frame["error_rate"] = (frame["errors"] / counts).fillna(0.0)
    frame["retry_rate"] = (frame["retries"] / counts).fillna(0.0)
    return frame


def with_bound_queues(topology: Topology, lag_rows: Sequence[LagRow]) -> Topology:
    """The topology with the queues no span names (a delay queue, a dead-letter queue, a
    JetStream consumer no instrumented service reads: no consumer took anything from them)
    drawn where the broker says they are bound: each such queue of an exchange (or consumer
    of a stream) on the map, with an edge of no messages from it."""
    nodes, edges = dict(topology.nodes), list(topology.edges)
    for row in lag_rows:
        if row.system == KAFKA or row.topic == row.group:
            continue
        source, _ = destination_node(row.system, row.topic)
        queue, kind = waiting_node(row.system, row.topic, row.group)
        if source in nodes and queue not in nodes:
            nodes[queue] = kind
            edges.append(EdgeRow(source, queue, 0, 0, 0, None, None))
    if len(edges) == len(topology.edges):
        return topology
    return Topology(nodes, edges, topology.first_bucket_s)


def focus_edges(edges: pd.DataFrame, focus: str | None) -> pd.DataFrame:
    """The edges touching the focused node (all edges when nothing is focused)."""
    return focus_rows(edges, focus, ("source", "target"))


def focus_rows(frame: pd.DataFrame, focus: str | None, columns: Sequence[str]) -> pd.DataFrame:
    """The rows where one of `columns` is the focused node (every row when nothing is
    focused): a topic, a service, a producer."""
    if not focus or frame.empty:
        return frame
    touching = pd.Series(False, index=frame.index)
    for column in columns:
        touching |= frame[column] == focus
    return frame[touching]


def busiest(frame: pd.DataFrame, limit: int, column: str) -> pd.DataFrame:
    """The `limit` rows with the most `column`, most first, for a chart that cannot draw
    every row; the frame as it is when it has no more rows than that."""
    return frame.nlargest(limit, column) if len(frame) > limit else frame


def edge_pairs(edges: pd.DataFrame, limit: int, by: str | None = None
               ) -> list[tuple[str, str]]:
    """(source, target) of the first `limit` edges: of those with the most `by` when given,
    else in the frame's order."""
    chosen = edges.nlargest(limit, by) if by else edges.head(limit)
    return list(zip(chosen["source"], chosen["target"], strict=True))


def edge_table(edges: pd.DataFrame) -> pd.DataFrame:
    """The columns of the flow map's table of edges."""
    return edges[["source", "target", "rate", "count", "p50_ms", "p95_ms", "processing_p95_ms",
                  "error_rate", "retry_rate"]]


def lag_node(row: LagRow) -> str:
    """The flow map node a lag row is the backlog of: a Kafka group's topic, the queue, or
    the JetStream consumer."""
    if row.system == KAFKA:
        return row.topic
    return waiting_node(row.system, row.topic, row.group)[0]


def group_services(edges: pd.DataFrame, lag_rows: Sequence[LagRow]
                   ) -> dict[tuple[str, str], str]:
    """Which service each consumer group (or queue) belongs to, by (system, group), from the
    topics or queues both consume: the only consumer, else the one whose name the group's
    name contains."""
    consumers = edges[edges["kind"] == "consume"].groupby("source")["target"].apply(set)
    owners: dict[tuple[str, str], str] = {}
    for row in lag_rows:
        services = consumers.get(lag_node(row), set())
        key = (row.system, row.group)
        if len(services) == 1:
            owners.setdefault(key, next(iter(services)))
            continue
        named = [s for s in services if s in row.group or row.group in s]
        if named:
            owners.setdefault(key, max(named, key=len))
    return owners


def node_statuses(nodes: dict[str, str], edges: pd.DataFrame, lag_rows: Sequence[LagRow],
                  groups: Sequence[GroupLag]) -> dict[str, str]:
    """Each node's worst consumer-group (or queue) lag status; 'none' where none is known."""
    group_status = {(g.system, g.group): g.status for g in groups}
    owners = group_services(edges, lag_rows)
    worst: dict[str, str] = {}

    def raise_to(node: str, status: str) -> None:
        if STATUS_RANK.get(status, 0) >= STATUS_RANK.get(worst.get(node, "OK"), 0):
            worst[node] = status

    for row in lag_rows:
        key = (row.system, row.group)
        status = group_status.get(key, "OK")
        raise_to(lag_node(row), status)
        if key in owners:
            raise_to(owners[key], status)
    return {n: worst.get(n, "none") for n in nodes}


def overview_metrics(counts: FlowCounts, window_s: float, observed_s: float | None = None
                     ) -> list[tuple[str, str, str | None]]:
    """(label, value, delta) for the overview row: outcomes with their change against the
    window before; in flight and stuck are counts of now, without a change. Flows/s is over
    the observed part of the window (observed_seconds), against the whole window before."""
    rate = counts.started_now / (observed_s or window_s)
    metrics = [("Flows/s", f"{rate:.2f}", f"{rate - counts.started_before / window_s:+.2f}")]
    for status in ("completed", "failed", "dead-lettered"):
        now, before = counts.now.get(status, 0), counts.before.get(status, 0)
        metrics.append((status.capitalize(), f"{now:,}", f"{now - before:+,}"))
    metrics += [("Stuck", f"{counts.stuck:,}", None), ("In flight", f"{counts.in_flight:,}", None)]
    return metrics


def worst_group(groups: Sequence[GroupLag]) -> GroupLag | None:
    """The group furthest behind: worst status, then most seconds, then most messages."""
    return rank_groups(groups)[0] if groups else None


def rank_groups(groups: Sequence[GroupLag]) -> list[GroupLag]:
    """Groups furthest behind first: worst status, then most seconds, then most messages."""
    return sorted(groups, key=lambda g: (-STATUS_RANK.get(g.status, 0), -(g.lag_seconds or 0.0),
                                         -g.lag, g.group))


def group_belongs_to(group: str, service: str) -> bool:
    """True for the groups named after a service: 'processor', 'processor-retry', and the same
    under an environment prefix ('staging.processor')."""
    name = group.rsplit(".", 1)[-1]
    return service in (group, name) or name.startswith(f"{service}-")


def lag_table(rows: Sequence[LagRow], focus: str | None = None) -> pd.DataFrame:
    """The latest lag per group, topic and partition (narrowed to a focused topic or group)."""
    frame = pd.DataFrame([asdict(r) for r in rows],
                         columns=["system", "group", "topic", "partition", "committed", "end",
                                  "lag", "lag_seconds", "status", "at_s", "ready",
                                  "unacknowledged", "consumers"])
    if focus:  # a topic or queue, or a service and the groups named after it
        nodes = pd.Series([lag_node(r) for r in rows], index=frame.index, dtype=object)
        frame = frame[(frame["topic"] == focus) | (nodes == focus)
                      | frame["group"].map(lambda g: group_belongs_to(g, focus))]
    return frame.drop(columns=["at_s"])


def partitions_by_lag(partitions: pd.DataFrame) -> pd.DataFrame:
    """A lag_table with the partitions furthest behind first."""
    return partitions.sort_values(["lag", "group", "topic", "partition"],
                                  ascending=[False, True, True, True])


def shown_groups(groups: Sequence[GroupLag], partitions: pd.DataFrame) -> list[GroupLag]:
    """The groups with a partition in `partitions` (a lag_table), furthest behind first."""
    shown = set(zip(partitions["system"], partitions["group"], strict=True))
    return rank_groups([g for g in groups if (g.system, g.group) in shown])


def group_table(groups: Sequence[GroupLag]) -> pd.DataFrame:
    """Per group: status, lag in messages and seconds, rates and the catch-up outlook."""
    return pd.DataFrame([{
        "system": g.system, "group": g.group, "status": g.status, "lag": g.lag,
        "lag_seconds": g.lag_seconds, "consume_rate": g.consume_rate, "lag_rate": g.lag_rate,
        "outlook": catch_up_text(g)}
        for g in groups], columns=["system", "group", "status", "lag", "lag_seconds",
                                   "consume_rate", "lag_rate", "outlook"])


def trend_of(trend: pd.DataFrame, groups: Sequence[GroupLag]) -> pd.DataFrame:
    """The lag trend (see lag_trend) of these groups only."""
    return trend[trend["group"].isin({g.group for g in groups})]


def lag_trend(rows: Sequence[tuple[str, float, int, float | None]]) -> pd.DataFrame:
    """Per group and poll: total offset lag and the largest lag in seconds."""
    trend = pd.DataFrame(list(rows), columns=["group", "at_s", "lag", "lag_seconds"])
    trend["time"] = utc_times(trend["at_s"])
    return trend.drop(columns=["at_s"])


def catch_up_text(group: GroupLag) -> str:
    """How a group is doing against its lag, in words a person acts on."""
    if group.lag == 0:
        return "caught up"
    rate = group.consume_rate or 0.0
    if group.catch_up_s is not None:
        return f"draining at {rate:,.1f} msg/s; caught up in about {_duration(group.catch_up_s)}"
    # A lag the group works off within a second is messages in flight between two polls, not
    # a group falling behind, however the last few polls moved it.
    in_flight = rate > 0 and group.lag <= rate
    if group.lag_rate is not None and group.lag_rate > 0.05 and not in_flight:
        return f"falling behind by {group.lag_rate:,.1f} msg/s; will not catch up at this rate"
    if in_flight:
        return f"keeping pace at {rate:,.1f} msg/s; the lag is under a second of work"
    if rate > 0:
        return f"keeping pace at {rate:,.1f} msg/s; the lag holds"
    return "not draining: no commits in the window"


def duration_text(seconds: float) -> str:
    """A duration as people read it: ms under a second, then s, min, h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return _duration(seconds)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def retry_rates(edges: pd.DataFrame) -> pd.DataFrame:
    """Per topic and consuming service: messages, retries, retry share and errors."""
    consumed = edges[edges["kind"] == "consume"]
    frame = consumed.rename(columns={"source": "topic", "target": "service"})
    return frame[["topic", "service", "count", "retries", "retry_rate", "errors",
                  "error_rate"]].sort_values("retry_rate", ascending=False)


def attempts_table(rows: Iterable[tuple[str, int, int]]) -> pd.DataFrame:
    """Messages per attempt number (1 is the first try) of the topics that saw a retry."""
    frame = pd.DataFrame(list(rows), columns=["topic", "attempt", "messages"])
    retried = set(frame.loc[frame["attempt"] > 1, "topic"])
    return frame[frame["topic"].isin(retried)].reset_index(drop=True)


def dead_letter_table(letters: Sequence[DeadLetter]) -> pd.DataFrame:
    """Dead letters with their reason pulled from the usual headers; everything is text."""
    rows = []
    for letter in letters:
        headers = {k.lower(): v for k, v in letter.headers}
        reason = next((headers[h] for h in REASON_HEADERS if h in headers), "")
        rows.append({"time": utc_time(letter.timestamp_ms, "ms"),
                     "topic": letter.topic,
                     "message": f"{letter.topic}.{letter.partition}.{letter.offset}",
                     "reason": reason, "correlation_id": letter.correlation_id or "",
                     "key": letter.key or "", "flow": letter.flow_id or "",
                     "headers": "; ".join(f"{k}={v}" for k, v in letter.headers),
                     "truncated": letter.truncated})
    return pd.DataFrame(rows, columns=["time", "topic", "message", "reason", "correlation_id",
                                       "key", "flow", "headers", "truncated"])


def with_flow_links(letters: pd.DataFrame, link: Callable[[str], str]) -> pd.DataFrame:
    """Dead letters (a dead_letter_table) with an 'open' column: the link to each one's flow,
    None where the flow is not known."""
    return letters.assign(open=[link(f) if f else None for f in letters["flow"]])


def dead_letter_details(letters: pd.DataFrame, message: str) -> dict[str, object]:
    """What a dead letter's details show of the one with this message id: its reason,
    correlation id, key and headers (untrusted text, for a code block)."""
    row = letters[letters["message"] == message].iloc[0]
    return {name: row[name] for name in ("reason", "correlation_id", "key", "headers")}


def match_table(matches: Sequence[str], link: Callable[[str], str]) -> pd.DataFrame:
    """Flows a search matched, each with its link."""
    return pd.DataFrame({"flow": list(matches), "open": [link(m) for m in matches]},
                        columns=["flow", "open"])


def failed_step_table(steps: Sequence[FailedStep]) -> pd.DataFrame:
    """A flow's failed steps: when, where, what and the error's type."""
    return pd.DataFrame([{
        "at": utc_time(step.start_ns), "service": step.service, "step": step.name,
        "kind": step.kind, "error": step.error_type or "(no type given)",
        "trace_id": step.trace_id} for step in steps],
        columns=["at", "service", "step", "kind", "error", "trace_id"])


def flow_hop_table(hops: Sequence[Hop]) -> pd.DataFrame:
    """A flow's hops: the system, where each message went (a topic; or an exchange with its
    routing key and the queue it waited in), who sent and took it, and its times in ms."""
    return pd.DataFrame([{
        "system": h.system or KAFKA, "topic": h.topic, "routing_key": h.routing_key,
        "queue": h.queue, "partition": h.partition, "offset": h.offset,
        "producer": h.producer_service, "consumer": h.consumer_service,
        "group": h.consumer_group, "attempt": h.retry_attempt, "queue_ms": h.queue_ms,
        "processing_ms": h.processing_ms, "error": h.error, "trace_id": h.trace_id}
        for h in hops], columns=["system", "topic", "routing_key", "queue", "partition",
                                 "offset", "producer", "consumer", "group", "attempt",
                                 "queue_ms", "processing_ms", "error", "trace_id"])


def recent_flow_table(flows: Sequence[FlowRow], link: Callable[[str], str]) -> pd.DataFrame:
    """Flows, each with its link, status, start, duration and size."""
    return pd.DataFrame([{
        "open": link(f.id), "flow": f.id, "status": f.status,
        "started": utc_time(f.started_ns), "duration_ms": (f.ended_ns - f.started_ns) / 1e6,
        "hops": f.hops, "retries": f.retries, "errors": f.errors} for f in flows],
        columns=["open", "flow", "status", "started", "duration_ms", "hops", "retries",
                 "errors"])


def latency_series(buckets: Sequence[LatencyBucket], since_s: float, window_s: float,
                   points: int = 30) -> pd.DataFrame:
    """End-to-end latency percentiles (ms) per flow type at `points` times across the window,
    each from the merged histograms of the store's buckets in that stretch."""
    columns = ["time", "flow_type", "flows", "p50_ms", "p95_ms", "p99_ms"]
    width = max(window_s / points, 1.0)
    merged: dict[tuple[float, str], tuple[int, Histogram]] = {}
    for bucket in buckets:
        # a bucket stamped past the window's end (a sender's clock) counts in its last point
        slot = min((bucket.bucket_start - since_s) // width, max(window_s // width - 1, 0))
        key = (since_s + max(slot, 0) * width, bucket.flow_type)
        count, histogram = merged.get(key, (0, Histogram()))
        merged[key] = (count + bucket.count, histogram.merge(bucket.latency))
    rows = [(start, flow_type, count, histogram.percentile(50), histogram.percentile(95),
             histogram.percentile(99))
            for (start, flow_type), (count, histogram) in sorted(merged.items())]
    series = pd.DataFrame(rows, columns=["start", *columns[1:]])
    series["time"] = utc_times(series["start"])
    return series[columns]


def hop_breakdown(edges: pd.DataFrame) -> pd.DataFrame:
    """Per hop (topic -> consuming service): median and p95 time waiting and processing."""
    consumed = edges[edges["kind"] == "consume"].copy()
    consumed["hop"] = consumed["source"] + " → " + consumed["target"]
    return consumed[["hop", "source", "target", "count", "p50_ms", "p95_ms",
                     "processing_p50_ms", "processing_p95_ms"]].rename(
        columns={"source": "topic", "target": "service", "p50_ms": "queue_p50_ms",
                 "p95_ms": "queue_p95_ms"})


def hop_timing_table(hops: pd.DataFrame) -> pd.DataFrame:
    """The latency page's table of hops (a hop_breakdown): the hop, its messages and times."""
    return hops.drop(columns=["topic", "service"])


def edge_series(buckets: Sequence[EdgeBucket], bucket_s: int, since_s: float, now_s: float
                ) -> pd.DataFrame:
    """Per edge and bucket over the whole window: messages/s and retries/s;
    a bucket where an edge carried nothing is a zero, not a gap."""
    columns = ["bucket_start", "source", "target", "count", "errors", "retries"]
    frame = pd.DataFrame([(b.bucket_start, b.source, b.target, b.count, b.errors, b.retries)
                          for b in buckets], columns=columns)
    if not frame.empty:
        first = int(since_s // bucket_s * bucket_s)
        grid = pd.MultiIndex.from_product(
            [range(first, int(now_s) + 1, bucket_s),
             list(frame[["source", "target"]].drop_duplicates().itertuples(index=False))],
            names=["bucket_start", "edge_key"])
        frame["edge_key"] = list(zip(frame["source"], frame["target"], strict=True))
        frame = frame.set_index(["bucket_start", "edge_key"]).drop(
            columns=["source", "target"]).reindex(grid)
        frame[["count", "errors", "retries"]] = frame[["count", "errors", "retries"]].fillna(0)
        frame = frame.reset_index()
        frame["source"] = [k[0] for k in frame["edge_key"]]
        frame["target"] = [k[1] for k in frame["edge_key"]]
        frame = frame[columns]
    frame["time"] = utc_times(frame["bucket_start"])
    frame["edge"] = frame["source"] + " → " + frame["target"]
    frame["rate"] = frame["count"] / bucket_s
    frame["retry_rate"] = frame["retries"] / bucket_s
    return frame.reset_index(drop=True)


def propagation_table(rows: Sequence[PropagationRow]) -> pd.DataFrame:
    """Per topic and producer: messages, those with trace context, and the share (0-1)."""
    return pd.DataFrame([{"topic": r.topic, "producer": r.producer, "messages": r.messages,
                          "with_context": r.with_context, "share": r.share} for r in rows],
                        columns=["topic", "producer", "messages", "with_context", "share"])
