"""Pure pandas: store records in, the frames the pages and charts draw out. No Streamlit here.

Units are fixed across the dashboard: latency in milliseconds, lag in messages and in seconds,
rates in messages (or flows) per second.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict

import pandas as pd

from collectors.flows.histogram import Histogram
from collectors.record import GroupLag, LagRow
from collectors.store.interface import (
    DeadLetter,
    EdgeBucket,
    HopRow,
    LatencyBucket,
    PropagationRow,
    Topology,
)

WINDOWS = {"5m": 300, "15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}
DEFAULT_WINDOW = "15m"
STATUS_RANK = {"OK": 0, "WARN": 1, "ERR": 2, "STOP": 2, "STALL": 2, "REWIND": 2}
REASON_HEADERS = ("dlq-reason", "kafka_dlt-exception-message", "x-exception-message",
                  "error", "reason")


def window_seconds(name: str | None) -> int:
    """The window a name like '15m' stands for (the default for anything unknown)."""
    return WINDOWS.get(name or "", WINDOWS[DEFAULT_WINDOW])


def build_edges(topology: Topology, window_s: float) -> pd.DataFrame:
    """One row per edge with rates: messages/s, error and retry shares, p95s in ms."""
    rows = [asdict(e) for e in topology.edges]
    columns = ["source", "target", "count", "errors", "retries", "p50_ms", "p95_ms",
               "processing_p50_ms", "processing_p95_ms"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["kind"] = ["produce" if topology.nodes.get(s) == "service" else "consume"
                     for s in frame["source"]]
    frame["rate"] = frame["count"] / max(window_s, 1)
    counts = frame["count"].where(frame["count"] > 0)
    frame["error_rate"] = (frame["errors"] / counts).fillna(0.0)
    frame["retry_rate"] = (frame["retries"] / counts).fillna(0.0)
    return frame


def focus_edges(edges: pd.DataFrame, focus: str | None) -> pd.DataFrame:
    """The edges touching the focused node (all edges when nothing is focused)."""
    if not focus or edges.empty:
        return edges
    return edges[(edges["source"] == focus) | (edges["target"] == focus)]


def layout_nodes(nodes: dict[str, str], edges: pd.DataFrame) -> pd.DataFrame:
    """A layered left-to-right layout: cycles (retry loops, saga replies) are broken by a
    greedy feedback-arc ordering, each node goes one layer right of its furthest
    predecessor, and a few barycentre sweeps order each layer to cut crossings."""
    pairs = list(zip(edges["source"], edges["target"], strict=True))
    names = sorted(set(nodes) | {n for pair in pairs for n in pair})
    order = {n: i for i, n in enumerate(_feedback_order(names, pairs))}
    forward = [(s, t) for s, t in pairs if order[s] < order[t]]
    layer = dict.fromkeys(names, 0)
    for node in sorted(names, key=order.__getitem__):
        for source, target in forward:
            if source == node:
                layer[target] = max(layer[target], layer[node] + 1)
    rank = _order_layers(layer, pairs)
    frame = pd.DataFrame({"node": names, "layer": [layer[n] for n in names],
                          "rank": [rank[n] for n in names]})
    frame["kind"] = [nodes.get(n, "topic") for n in frame["node"]]
    frame = frame.sort_values(["layer", "rank"]).reset_index(drop=True)
    sizes = frame.groupby("layer")["node"].transform("count")
    frame["y"] = -(frame.groupby("layer").cumcount().astype(float) - (sizes - 1) / 2)
    frame["x"] = frame["layer"].astype(float)
    return frame.drop(columns=["rank"])


def _feedback_order(names: list[str], pairs: list[tuple[str, str]]) -> list[str]:
    """Eades-Lin-Smyth: peel sinks to the back and sources to the front, else the node with
    the most out- over in-edges; the edges that point backwards form a small feedback set."""
    left = set(names)
    front: list[str] = []
    back: list[str] = []
    while left:
        live = [(s, t) for s, t in pairs if s in left and t in left and s != t]
        ins = dict.fromkeys(left, 0)
        outs = dict.fromkeys(left, 0)
        for source, target in live:
            outs[source] += 1
            ins[target] += 1
        sinks = sorted(n for n in left if outs[n] == 0)
        sources = sorted(n for n in left if ins[n] == 0 and outs[n] > 0)
        if sinks:
            back = sinks + back
            left -= set(sinks)
        elif sources:
            front += sources
            left -= set(sources)
        else:
            placed = set(front)
            fed = {n: sum(1 for s, t in pairs if t == n and s in placed) for n in left}
            best = max(sorted(left), key=lambda n: (outs[n] - ins[n], fed[n]))
            front.append(best)
            left.remove(best)
    return front + back


def _order_layers(layer: dict[str, int], pairs: list[tuple[str, str]], sweeps: int = 4
                  ) -> dict[str, float]:
    """Order nodes within each layer by the mean position of their neighbours."""
    rank = {n: float(i) for i, n in enumerate(sorted(layer, key=lambda n: (layer[n], n)))}
    neighbours: dict[str, list[str]] = {n: [] for n in layer}
    for source, target in pairs:
        neighbours[source].append(target)
        neighbours[target].append(source)
    for _ in range(sweeps):
        for node in layer:
            if neighbours[node]:
                rank[node] = sum(rank[m] for m in neighbours[node]) / len(neighbours[node])
        for depth in set(layer.values()):
            members = sorted((n for n in layer if layer[n] == depth), key=lambda n: (rank[n], n))
            for position, node in enumerate(members):
                rank[node] = float(position)
    return rank


def group_services(edges: pd.DataFrame, lag_rows: Sequence[LagRow]) -> dict[str, str]:
    """Which service each consumer group belongs to, from the topics both consume: the only
    consumer of a topic, else the one whose name the group's name contains."""
    consumers = edges[edges["kind"] == "consume"].groupby("source")["target"].apply(set)
    owners: dict[str, str] = {}
    for row in lag_rows:
        services = consumers.get(row.topic, set())
        if len(services) == 1:
            owners.setdefault(row.group, next(iter(services)))
            continue
        named = [s for s in services if s in row.group or row.group in s]
        if named:
            owners.setdefault(row.group, max(named, key=len))
    return owners


def node_statuses(nodes: dict[str, str], edges: pd.DataFrame, lag_rows: Sequence[LagRow],
                  groups: Sequence[GroupLag]) -> dict[str, str]:
    """Each node's worst consumer-group lag status; 'none' where no group is known."""
    group_status = {g.group: g.status for g in groups}
    owners = group_services(edges, lag_rows)
    worst: dict[str, str] = {}

    def raise_to(node: str, status: str) -> None:
        if STATUS_RANK.get(status, 0) >= STATUS_RANK.get(worst.get(node, "OK"), 0):
            worst[node] = status

    for row in lag_rows:
        status = group_status.get(row.group, "OK")
        raise_to(row.topic, status)
        if row.group in owners:
            raise_to(owners[row.group], status)
    return {n: worst.get(n, "none") for n in nodes}


def overview_metrics(now: dict[str, int], before: dict[str, int], started_now: int,
                     started_before: int, window_s: float) -> list[tuple[str, str, str | None]]:
    """(label, value, delta) for the overview row; deltas compare with the window before."""
    metrics = [("Flows/s", f"{started_now / window_s:.2f}",
                f"{(started_now - started_before) / window_s:+.2f}")]
    for status in ("completed", "failed", "dead-lettered", "stuck", "in flight"):
        count, previous = now.get(status, 0), before.get(status, 0)
        metrics.append((status.capitalize(), f"{count:,}", f"{count - previous:+,}"))
    return metrics


def worst_group(groups: Sequence[GroupLag]) -> GroupLag | None:
    """The group furthest behind: worst status, then most seconds, then most messages."""
    return rank_groups(groups)[0] if groups else None


def rank_groups(groups: Sequence[GroupLag]) -> list[GroupLag]:
    """Groups furthest behind first: worst status, then most seconds, then most messages."""
    return sorted(groups, key=lambda g: (-STATUS_RANK.get(g.status, 0), -(g.lag_seconds or 0.0),
                                         -g.lag, g.group))


def lag_table(rows: Sequence[LagRow], focus: str | None = None) -> pd.DataFrame:
    """The latest lag per group, topic and partition (narrowed to a focused topic or group)."""
    frame = pd.DataFrame([asdict(r) for r in rows],
                         columns=["group", "topic", "partition", "committed", "end", "lag",
                                  "lag_seconds", "status", "at_s"])
    if focus:
        frame = frame[(frame["topic"] == focus) | (frame["group"].str.contains(focus,
                                                                                 regex=False))]
    return frame.drop(columns=["at_s"])


def lag_trend(rows: Sequence[tuple[str, float, int, float | None]]) -> pd.DataFrame:
    """Per group and poll: total offset lag and the largest lag in seconds."""
    trend = pd.DataFrame(list(rows), columns=["group", "at_s", "lag", "lag_seconds"])
    trend["time"] = pd.to_datetime(trend["at_s"], unit="s", utc=True)
    return trend.drop(columns=["at_s"])


def catch_up_text(group: GroupLag) -> str:
    """How a group is doing against its lag, in words a person acts on."""
    if group.lag == 0:
        return "caught up"
    rate = group.consume_rate or 0.0
    if group.catch_up_s is not None:
        return f"draining at {rate:,.1f} msg/s; caught up in about {_duration(group.catch_up_s)}"
    if group.lag_rate is not None and group.lag_rate > 0.05:
        return f"falling behind by {group.lag_rate:,.1f} msg/s; will not catch up at this rate"
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
        rows.append({"time": pd.Timestamp(letter.timestamp_ms, unit="ms", tz="UTC"),
                     "topic": letter.topic,
                     "message": f"{letter.topic}.{letter.partition}.{letter.offset}",
                     "reason": reason, "correlation_id": letter.correlation_id or "",
                     "key": letter.key or "", "flow": letter.flow_id or "",
                     "headers": "; ".join(f"{k}={v}" for k, v in letter.headers),
                     "truncated": letter.truncated})
    return pd.DataFrame(rows, columns=["time", "topic", "message", "reason", "correlation_id",
                                       "key", "flow", "headers", "truncated"])


def latency_series(buckets: Sequence[LatencyBucket], since_s: float, window_s: float,
                   points: int = 30) -> pd.DataFrame:
    """End-to-end latency percentiles (ms) per flow type at `points` times across the window,
    each from the merged histograms of the store's buckets in that stretch."""
    columns = ["time", "flow_type", "flows", "p50_ms", "p95_ms", "p99_ms"]
    width = max(window_s / points, 1.0)
    merged: dict[tuple[float, str], tuple[int, Histogram]] = {}
    for bucket in buckets:
        key = (since_s + ((bucket.bucket_start - since_s) // width) * width, bucket.flow_type)
        count, histogram = merged.get(key, (0, Histogram()))
        merged[key] = (count + bucket.count, histogram.merge(bucket.latency))
    rows = [(start, flow_type, count, histogram.percentile(50), histogram.percentile(95),
             histogram.percentile(99))
            for (start, flow_type), (count, histogram) in sorted(merged.items())]
    series = pd.DataFrame(rows, columns=["start", *columns[1:]])
    series["time"] = pd.to_datetime(series["start"], unit="s", utc=True)
    return series[columns]


def hop_breakdown(edges: pd.DataFrame) -> pd.DataFrame:
    """Per hop (topic -> consuming service): median and p95 time waiting and processing."""
    consumed = edges[edges["kind"] == "consume"].copy()
    consumed["hop"] = consumed["source"] + " → " + consumed["target"]
    return consumed[["hop", "count", "p50_ms", "p95_ms", "processing_p50_ms",
                     "processing_p95_ms"]].rename(
        columns={"p50_ms": "queue_p50_ms", "p95_ms": "queue_p95_ms"})


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
    frame["time"] = pd.to_datetime(frame["bucket_start"], unit="s", utc=True)
    frame["edge"] = frame["source"] + " → " + frame["target"]
    frame["rate"] = frame["count"] / bucket_s
    frame["retry_rate"] = frame["retries"] / bucket_s
    return frame.reset_index(drop=True)


def propagation_table(rows: Sequence[PropagationRow]) -> pd.DataFrame:
    """Per topic and producer: messages, those with trace context, and the share (0-1)."""
    return pd.DataFrame([{"topic": r.topic, "producer": r.producer, "messages": r.messages,
                          "with_context": r.with_context, "share": r.share} for r in rows],
                        columns=["topic", "producer", "messages", "with_context", "share"])


def waterfall(hops: Sequence[HopRow], collapse_after_ms: float = 2000.0,
              collapsed_ms: float = 300.0) -> tuple[pd.DataFrame, list[tuple[float, float]]]:
    """The segments of a flow's waterfall on a display axis (ms from the flow's start) where
    every stretch longer than collapse_after_ms with nothing being produced or processed is
    drawn collapsed_ms wide. Returns the segments and the collapsed stretches as
    (display position, true length in ms)."""
    segments = []
    for index, hop in enumerate(hops):
        label = _hop_label(index, hop)
        for kind, start, end in (("produce", hop.produce_start_ns, hop.produce_end_ns),
                                 ("wait", hop.produce_end_ns, hop.consume_start_ns),
                                 ("process", hop.consume_start_ns, hop.consume_end_ns)):
            if start is not None and end is not None and end >= start:
                segments.append({"row": index, "hop": label, "kind": kind, "start_ns": start,
                                 "end_ns": end, "error": hop.error and kind == "process"})
    columns = ["row", "hop", "kind", "start_ns", "end_ns", "error", "start_ms", "width_ms",
               "true_ms"]
    if not segments:
        return pd.DataFrame(columns=columns), []
    frame = pd.DataFrame(segments)
    origin = int(frame["start_ns"].min())
    busy = sorted((s - origin, e - origin) for s, e, k in zip(
        frame["start_ns"], frame["end_ns"], frame["kind"], strict=True) if k != "wait")
    gaps = _idle_gaps(busy, int(frame["end_ns"].max()) - origin, collapse_after_ms * 1e6)
    to_display = _display_axis(gaps, collapsed_ms * 1e6)
    frame["start_ms"] = [to_display(s - origin) / 1e6 for s in frame["start_ns"]]
    frame["width_ms"] = [to_display(e - origin) / 1e6 - a for e, a in
                         zip(frame["end_ns"], frame["start_ms"], strict=True)]
    frame["true_ms"] = (frame["end_ns"] - frame["start_ns"]) / 1e6
    breaks = [(to_display(start) / 1e6, (end - start) / 1e6) for start, end in gaps]
    return frame[columns], breaks


def _hop_label(index: int, hop: HopRow) -> str:
    where = f"{hop.producer_service or '?'} → {hop.topic} → {hop.consumer_service or '…'}"
    attempt = f" (attempt {hop.retry_attempt})" if hop.retry_attempt and hop.retry_attempt > 1 \
        else ""
    return f"{index + 1}. {where}{attempt}"


def _idle_gaps(busy: list[tuple[int, int]], end: int, longer_than: float
               ) -> list[tuple[int, int]]:
    """Stretches of [0, end] not covered by any busy interval and longer than longer_than."""
    gaps, covered = [], 0
    for start, stop in busy:
        if start - covered > longer_than:
            gaps.append((covered, start))
        covered = max(covered, stop)
    if end - covered > longer_than:
        gaps.append((covered, end))
    return gaps


def _display_axis(gaps: list[tuple[int, int]], width: float):  # type: ignore[no-untyped-def]
    """Map true ns offsets to display ns offsets, each gap squeezed to width."""

    def to_display(t: float) -> float:
        removed = 0.0
        for start, end in gaps:
            if t >= end:
                removed += (end - start) - width
            elif t > start:
                removed += (t - start) * (1 - width / (end - start))
                break
            else:
                break
        return t - removed

    return to_display
