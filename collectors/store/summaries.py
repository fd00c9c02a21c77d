"""Read queries behind the dashboard's summaries: flow counts, edge series, completed-flow
latencies, search, retry attempts and dead letters. Each reads an aggregate or an indexed
range, never a scan of raw spans."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter

from collectors.flows.assembler import flow_status
from collectors.flows.histogram import Histogram
from collectors.store.interface import DeadLetter, EdgeBucket, LatencyBucket

MESSAGE_ID = re.compile(r"^(?P<topic>.+)\.(?P<partition>\d+)\.(?P<offset>\d+)$")
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def count_flows(db: sqlite3.Connection, since_ns: int, until_ns: int, now_ns: int,
                stuck_after_s: float) -> tuple[Counter[str], int]:
    """Flows last active in [since_ns, until_ns) by status, and how many started in it."""
    stuck_cut = now_ns - int(stuck_after_s * 1e9)
    statuses: Counter[str] = Counter()
    started = 0
    for flags, errors, last_ns, new, count in db.execute(
            "SELECT flags, errors > 0, CASE WHEN last_ns < :cut THEN 0 ELSE :now END, "
            "started_ns >= :since, COUNT(*) FROM flows WHERE last_ns >= :since AND "
            "last_ns < :until GROUP BY 1, 2, 3, 4",
            {"cut": stuck_cut, "now": now_ns, "since": since_ns, "until": until_ns}):
        statuses[flow_status(flags, errors, last_ns, now_ns, stuck_after_s)] += count
        started += count if new else 0
    return statuses, started


def read_edge_buckets(db: sqlite3.Connection, since_bucket: int) -> list[EdgeBucket]:
    """Every edge's counts per time bucket since since_bucket, oldest first."""
    return [EdgeBucket(*row) for row in db.execute(
        "SELECT bucket_start, source, target, count, errors, retries FROM edge_buckets "
        "WHERE bucket_start >= ? ORDER BY bucket_start", (since_bucket,))]


def read_flow_latency(db: sqlite3.Connection, since_bucket: int) -> list[LatencyBucket]:
    """Completed flows' latency histograms per bucket and flow type, oldest first."""
    return [LatencyBucket(bucket, flow_type, count, Histogram.from_json(latency))
            for bucket, flow_type, count, latency in db.execute(
                "SELECT bucket_start, flow_type, count, latency FROM flow_latency_buckets "
                "WHERE bucket_start >= ? ORDER BY bucket_start", (since_bucket,))]


def find_flow_ids(db: sqlite3.Connection, text: str, limit: int = 20) -> list[str]:
    """Flows that a correlation ID, trace ID, message id (topic.partition.offset) or message
    key names, in that order of precedence."""
    text = text.strip()
    if not text:
        return []
    if db.execute("SELECT 1 FROM flows WHERE flow_id = ?", (text,)).fetchone():
        return [text]
    if TRACE_ID.match(text.lower()):
        row = db.execute("SELECT flow_id FROM spans WHERE trace_id = ? LIMIT 1",
                         (text.lower(),)).fetchone()
        if row:
            return [row[0]]
    found: list[str] = []
    match = MESSAGE_ID.match(text)
    if match:
        found += [r[0] for r in db.execute(
            "SELECT flow_id FROM spans WHERE message_id = ? AND operation IN ('send', 'create')",
            (text,))]
        found += [r[0] for r in db.execute(
            "SELECT flow_id FROM messages WHERE topic = ? AND partition = ? AND \"offset\" = ? "
            "AND flow_id IS NOT NULL", (match["topic"], int(match["partition"]),
                                        int(match["offset"])))]
    found += [r[0] for r in db.execute(
        "SELECT flow_id FROM spans WHERE message_key = ? AND message_key IS NOT NULL AND "
        "operation IN ('send', 'create') LIMIT ?", (text, limit))]
    found += [r[0] for r in db.execute(
        "SELECT flow_id FROM messages WHERE \"key\" = ? AND \"key\" IS NOT NULL AND "
        "flow_id IS NOT NULL LIMIT ?", (text, limit))]
    return list(dict.fromkeys(found))[:limit]


def read_retry_attempts(db: sqlite3.Connection, since_ms: int, sample: int | None
                        ) -> list[tuple[str, int, int]]:
    """(topic, attempt, messages) of tapped messages since since_ms, the newest `sample` of
    them when given (attempt 1: first try)."""
    newest = "ORDER BY timestamp_ms DESC LIMIT ?" if sample else ""
    return db.execute(
        "SELECT topic, COALESCE(retry_attempt, 1), COUNT(*) FROM (SELECT topic, retry_attempt "
        f"FROM messages WHERE timestamp_ms >= ? {newest}) GROUP BY 1, 2 ORDER BY 1, 2",
        (since_ms, sample) if sample else (since_ms,)).fetchall()


def read_dead_letters(db: sqlite3.Connection, topics: list[str], since_ms: int,
                      limit: int, flow_id: str | None = None) -> list[DeadLetter]:
    """Messages on the dead-letter topics since since_ms (of one flow, when given), newest
    first, with their headers."""
    if not topics:
        return []
    marks = ", ".join("?" * len(topics))
    of_flow, params = ("AND flow_id = ?", (flow_id,)) if flow_id else ("", ())
    rows = db.execute(
        "SELECT topic, partition, \"offset\", timestamp_ms, \"key\", correlation_id, flow_id, "
        f"headers, truncated FROM messages WHERE topic IN ({marks}) AND timestamp_ms >= ? "
        f"{of_flow} ORDER BY timestamp_ms DESC LIMIT ?", (*topics, since_ms, *params, limit))
    return [DeadLetter(topic, partition, offset, ts, key, correlation, flow,
                       tuple((str(k), str(v)) for k, v in json.loads(headers or "[]")),
                       bool(truncated))
            for topic, partition, offset, ts, key, correlation, flow, headers, truncated in rows]
