"""Read queries behind the dashboard's summaries: flow counts, edge series, completed-flow
latencies, search, retry attempts and dead letters. Each reads an aggregate or an indexed
range, never a scan of raw spans, in SQL that SQLite and PostgreSQL both speak."""

from __future__ import annotations

import re
from collections.abc import Sequence

from store.contract import DeadLetter, EdgeBucket, FlowCounts, LatencyBucket
from store.histogram import Histogram
from store.sql.rows import Db, header_pairs, tally_flows
from store.vocabulary import NS_PER_S, SENDS, FlowRules, sql_list

MESSAGE_ID = re.compile(r"^(?P<topic>.+)\.(?P<partition>\d+)\.(?P<offset>\d+)$")
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def count_flows(db: Db, window_ns: int, now_ns: int, rules: FlowRules
                ) -> FlowCounts:
    """Outcomes (by the time a flow last moved) and starts in this window and the one before,
    and the flows in flight or stuck now; one range scan of a covering index.

    In-flight and stuck are gauges of now: the store keeps only a flow's latest activity, so
    how many were in flight at the end of the previous window is not known."""
    since, before = now_ns - window_ns, now_ns - 2 * window_ns
    quiet = now_ns - int(rules.stuck_after_s * NS_PER_S)
    return tally_flows(db.execute(
        "SELECT flags, errors > 0, last_ns >= :since, last_ns < :quiet, "
        "CASE WHEN started_ns >= :since THEN 1 WHEN started_ns >= :before THEN 0 "
        "ELSE -1 END, COUNT(*) FROM flows WHERE last_ns >= :before "
        "GROUP BY 1, 2, 3, 4, 5",
        {"since": since, "before": before, "quiet": quiet}), now_ns, rules)


def read_edge_buckets(db: Db, since_bucket: int,
                      edges: Sequence[tuple[str, str]] | None = None) -> list[EdgeBucket]:
    """Every edge's (or these (source, target) edges') counts per time bucket since
    since_bucket, oldest first."""
    if edges is not None and not edges:
        return []
    among = "" if edges is None else \
        f" AND (source, target) IN (VALUES {', '.join(['(?, ?)'] * len(edges))})"
    params = [since_bucket, *(name for pair in edges or () for name in pair)]
    return [EdgeBucket(*row) for row in db.execute(
        "SELECT bucket_start, source, target, count, errors, retries FROM edge_buckets "
        f"WHERE bucket_start >= ?{among} ORDER BY bucket_start", params)]


def read_flow_latency(db: Db, since_bucket: int) -> list[LatencyBucket]:
    """Completed flows' latency histograms per bucket and flow type, oldest first."""
    return [LatencyBucket(bucket, flow_type, count, Histogram.from_json(latency))
            for bucket, flow_type, count, latency in db.execute(
                "SELECT bucket_start, flow_type, count, latency FROM flow_latency_buckets "
                "WHERE bucket_start >= ? ORDER BY bucket_start", (since_bucket,))]


def find_flow_ids(db: Db, text: str, limit: int = 20) -> list[str]:
    """Flows that a correlation ID, trace ID, message id (topic.partition.offset) or message
    key names, in that order of precedence."""
    text = text.strip()
    if not text or not _storable(text):
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
    # Lengths first: int() refuses strings of over 4,300 digits (a ValueError).
    if match and len(match["partition"]) <= 10 and len(match["offset"]) <= 19 \
            and int(match["partition"]) < 2**31 and int(match["offset"]) < 2**63:
        found += [r[0] for r in db.execute(
            f"SELECT flow_id FROM spans WHERE message_id = ? AND operation IN {sql_list(SENDS)}",
            (text,))]
        found += [r[0] for r in db.execute(
            "SELECT flow_id FROM messages WHERE topic = ? AND partition = ? AND \"offset\" = ? "
            "AND flow_id IS NOT NULL", (match["topic"], int(match["partition"]),
                                        int(match["offset"])))]
    found += [r[0] for r in db.execute(
        "SELECT flow_id FROM spans WHERE message_key = ? AND message_key IS NOT NULL AND "
        f"operation IN {sql_list(SENDS)} LIMIT ?", (text, limit))]
    found += [r[0] for r in db.execute(
        "SELECT flow_id FROM messages WHERE \"key\" = ? AND \"key\" IS NOT NULL AND "
        "flow_id IS NOT NULL LIMIT ?", (text, limit))]
    return list(dict.fromkeys(found))[:limit]


def _storable(text: str) -> bool:
    """False for text SQLite cannot take (lone surrogates are not UTF-8); the store holds
    none, so such a search matches nothing."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_retry_attempts(db: Db, since_ms: int, sample: int | None
                        ) -> list[tuple[str, int, int]]:
    """(topic, attempt, messages) of tapped messages since since_ms, the newest `sample` of
    them when given (attempt 1: first try)."""
    newest = "ORDER BY timestamp_ms DESC LIMIT ?" if sample else ""
    return db.execute(
        "SELECT topic, COALESCE(retry_attempt, 1), COUNT(*) FROM (SELECT topic, retry_attempt "
        f"FROM messages WHERE timestamp_ms >= ? {newest}) m GROUP BY 1, 2 ORDER BY 1, 2",
        (since_ms, sample) if sample else (since_ms,)).fetchall()


def tapped_topics(db: Db) -> list[str]:
    """The topics the tap has seen, one index seek each (the table is keyed by topic first)."""
    return [topic for (topic,) in db.execute(
        "WITH RECURSIVE seen(topic) AS (SELECT MIN(topic) FROM messages UNION ALL "
        "SELECT (SELECT MIN(topic) FROM messages WHERE topic > seen.topic) FROM seen "
        "WHERE seen.topic IS NOT NULL) SELECT topic FROM seen WHERE topic IS NOT NULL")]


def read_dead_letters(db: Db, topics: list[str], since_ms: int,
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
                       header_pairs(headers), bool(truncated))
            for topic, partition, offset, ts, key, correlation, flow, headers, truncated in rows]
