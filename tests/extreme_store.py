"""A store holding the extremes the store's schema allows, for the readers' tests and benchmarks:
times at 0 and at both ends of the int64 range, empty and 10 KB strings (HTML and Markdown
among them), thousands of edges, a flow of thousands of hops.

Rows are written with SQL, not through the collector's write path: readers must cope with
whatever the store holds, including what no current collector would write.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from base.settings import Settings
from store.factory import open_store
from store.histogram import MAX_INDEX, Histogram
from store.vocabulary import FlowFlag

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXTREME_TIMES = (INT64_MIN, 0, INT64_MAX)
SCRIPT = "<script>alert(1)</script>"
BOLD = "**bold**"
LONG = ((SCRIPT + BOLD + " [link](javascript:alert(1)) ") * 400)[:10_240]  # 10 KB
TERMINAL = "\x1b[2J\x1b[31mred\x1b[0m\nnext line\r"  # clears a terminal, breaks a table row
HOSTILE_NAMES = (SCRIPT, BOLD, LONG, "", TERMINAL)
LONG_FLOW = "long-flow"
EXTREME_FLOW = "extreme-times"
DEAD_TOPIC = "extreme.dlq"
HOP_GAP_S = 3  # longer than the waterfall's idle threshold: every gap between hops collapses
PENDING_SENDS = 50  # sends of the long flow that no consumer took yet
TAPPED_ONLY = 50  # and messages of it only the tap saw

SPAN_INSERT = (
    "INSERT INTO spans (trace_id, span_id, parent_span_id, links, service, name, kind, "
    "start_ns, end_ns, error, error_type, operation, system, topic, partition, \"offset\", "
    "message_id, consumer_group, correlation_id, message_key, retry_attempt, batch_count, "
    "flow_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
HOP_INSERT = "INSERT INTO hops VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
EDGE_INSERT = "INSERT OR REPLACE INTO edge_buckets VALUES (?,?,?,?,?,?,?,?,?,?)"
ROLLUP_INSERT = "INSERT OR REPLACE INTO edge_rollups VALUES (?,?,?,?,?,?,?,?,?,?,?)"
ROLLUP_S = 300  # the store's rollup width for its default 10 s buckets (meta rollup_s)
FLOW_INSERT = "INSERT OR REPLACE INTO flows VALUES (?,?,?,?,?,?,?,?,?,?)"
MESSAGE_INSERT = "INSERT OR REPLACE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
LAG_VALUES = "(?,?,?,?,?,?,?,?,?,?,?,?,?)"
GROUP_VALUES = "(?,?,?,?,?,?,?,?,?,?)"


@dataclass(frozen=True)
class Extreme:
    """What the store holds, for assertions."""

    path: Path
    now_ns: int
    edges: int  # distinct edges in every window
    hops: int  # matched hops of LONG_FLOW
    long_flow_rows: int  # rows of LONG_FLOW's hop list: hops, pending sends, tapped only


def _histogram(*values_ms: float) -> str:
    histogram = Histogram()
    for value in values_ms:
        histogram.add(value)
    return histogram.to_json()


def _rollup_rows(edge_rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The 5-minute rollups of these edge bucket rows, as the store keeps them beside the
    buckets (starts held to int64, as the seeded extremes are at its ends)."""
    merged: dict[tuple[object, ...], list[object]] = {}
    for bucket, source, source_kind, target, target_kind, count, errors, retries, \
            latency, processing in edge_rows:
        start = max(INT64_MIN, int(bucket) // ROLLUP_S * ROLLUP_S)  # type: ignore[call-overload]
        row = merged.setdefault((start, source, target), [
            start, source, source_kind, target, target_kind, 0, 0, 0, Histogram(),
            Histogram(), bucket])
        row[5] += count  # type: ignore[operator]
        row[6] += errors  # type: ignore[operator]
        row[7] += retries  # type: ignore[operator]
        row[8].merge(Histogram.from_json(latency))  # type: ignore[union-attr,arg-type]
        row[9].merge(Histogram.from_json(processing))  # type: ignore[union-attr,arg-type]
        row[10] = min(row[10], bucket)  # type: ignore[type-var]
    return [(*row[:8], row[8].to_json(), row[9].to_json(), row[10])  # type: ignore[union-attr]
            for row in merged.values()]


def _edge_rows(edges: int, buckets: int, now_s: int) -> list[tuple[object, ...]]:
    """`edges` edges (service -> topic and topic -> service), each in `buckets` buckets of the
    last few minutes, with counts spread so that "the busiest" is well defined; and edges
    with hostile names in buckets at 0, at both ends of int64 and now."""
    rows: list[tuple[object, ...]] = []
    latest = now_s // 10 * 10
    for index in range(edges):
        topic = f"extreme.topic-{index // 2:05d}"
        source, target = ((f"svc-{index % 97}", topic) if index % 2 == 0
                          else (topic, f"worker-{index % 89}"))
        kinds = ("service", "topic") if index % 2 == 0 else ("topic", "service")
        count = 1 + (index * 7919) % 5000
        for bucket in range(buckets):
            rows.append((latest - 10 * bucket, source, kinds[0], target, kinds[1], count,
                         count // 50, count // 20, _histogram(5.0, 40.0), _histogram(2.0)))
    for index, name in enumerate(HOSTILE_NAMES):
        for at in (*EXTREME_TIMES, latest):
            rows.append((at, name, "service", f"{name}.t{index}", "topic", 3, 1, 1,
                         _histogram(0.0001, 1e12), json.dumps({"0": 1, str(MAX_INDEX): 2})))
            rows.append((at, f"{name}.t{index}", "topic", name, "service", 3, 0, 2,
                         _histogram(7.0), ""))
    return rows


def _long_flow(now_ns: int, hops: int) -> tuple[list[tuple[object, ...]], ...]:
    """LONG_FLOW: `hops` matched hops HOP_GAP_S apart (each gap collapses in the waterfall),
    sends still waiting for a consumer, messages only the tap saw, and failed steps with
    10 KB error types."""
    spans, hop_rows, messages = [], [], []
    first = now_ns - (hops + PENDING_SENDS + 1) * HOP_GAP_S * 1_000_000_000
    trace = "ab" * 16
    for index in range(hops + PENDING_SENDS):
        start = first + index * HOP_GAP_S * 1_000_000_000
        topic = f"long.topic-{index % 40}"
        message_id = f"{topic}.0.{index}"
        send_id, consume_id = f"{2 * index:016x}", f"{2 * index + 1:016x}"
        spans.append((trace, send_id, None, None, "producer-svc", f"send {topic}", "producer",
                      start, start + 2_000_000, 0, None, "send", "kafka", topic, 0, index,
                      message_id, None, LONG_FLOW, f"key-{index}", None, None, LONG_FLOW))
        if index >= hops:
            continue  # not consumed (yet)
        error = index % 1000 == 1
        begin = start + 42_000_000
        spans.append((trace, consume_id, send_id, None, "consumer-svc", f"process {topic}",
                      "consumer", begin, begin + 10_000_000, int(error),
                      LONG if error else None, "process", "kafka", topic, 0, index, message_id,
                      "consumers", LONG_FLOW, f"key-{index}", None, None, LONG_FLOW))
        hop_rows.append((f"{trace}:{send_id}|consumer-svc", trace, send_id, trace, consume_id,
                         0, LONG_FLOW, topic, 0, index, message_id, "producer-svc",
                         "consumer-svc", "consumers", start, start + 2_000_000, begin,
                         begin + 10_000_000, 1 + index % 3, int(error), "kafka", None, None))
    for index in range(TAPPED_ONLY):
        at_ms = (first + index * HOP_GAP_S * 1_000_000_000) // 1_000_000 + 1
        messages.append(("long.tapped", 0, index, at_ms, f"key-t{index}", 10, LONG_FLOW, None,
                         None, None, 0, LONG_FLOW, f"long.tapped.0.{index}"))
    return spans, hop_rows, messages


def _extreme_flow(now_ns: int) -> tuple[list[tuple[object, ...]], ...]:
    """EXTREME_FLOW: hops, spans and tapped messages at both ends of int64, at 0 and now."""
    trace = "cd" * 16
    spans, hop_rows, messages = [], [], []
    for index, (start, end) in enumerate(((INT64_MIN, INT64_MAX), (0, 0), (INT64_MAX, INT64_MAX),
                                          (INT64_MIN, INT64_MIN), (0, INT64_MAX))):
        send_id, consume_id = f"{100 + 2 * index:016x}", f"{101 + 2 * index:016x}"
        topic = HOSTILE_NAMES[index]
        spans.append((trace, send_id, None, None, SCRIPT, BOLD, "producer", start, end, 0, None,
                      "send", "kafka", topic, 0, index, f"{topic}.0.{index}", None,
                      EXTREME_FLOW, LONG, None, None, EXTREME_FLOW))
        spans.append((trace, consume_id, send_id, None, LONG, SCRIPT, "consumer", start, end, 1,
                      LONG, "process", "kafka", topic, 0, index, f"{topic}.0.{index}", BOLD,
                      EXTREME_FLOW, LONG, INT64_MAX, None, EXTREME_FLOW))
        hop_rows.append((f"{trace}:{send_id}|{LONG}", trace, send_id, trace, consume_id, 0,
                         EXTREME_FLOW, topic, INT64_MIN, INT64_MAX, f"{topic}.0.{index}",
                         SCRIPT, LONG, BOLD, start, end, start, end, INT64_MAX, 1,
                         ("kafka", "rabbitmq", SCRIPT)[index % 3], LONG, SCRIPT))
    for index, at_ms in enumerate((*EXTREME_TIMES, now_ns // 1_000_000)):
        messages.append((DEAD_TOPIC, index, INT64_MAX - index, at_ms, LONG, INT64_MAX,
                         SCRIPT, "cd" * 16, INT64_MAX,
                         json.dumps([["dlq-reason", SCRIPT], ["x-long", LONG], ["", BOLD]]), 1,
                         EXTREME_FLOW, f"{DEAD_TOPIC}.{index}.{INT64_MAX - index}"))
    return spans, hop_rows, messages


def _flow_rows(now_ns: int, hops: int) -> list[tuple[object, ...]]:
    names = json.dumps(list(HOSTILE_NAMES))
    rows: list[tuple[object, ...]] = [
        (LONG_FLOW, now_ns - (hops + PENDING_SENDS + 1) * HOP_GAP_S * 1_000_000_000, now_ns,
         hops, hops // 3, hops // 1000, 0, json.dumps(["consumer-svc", "producer-svc"]),
         json.dumps([f"long.topic-{i}" for i in range(40)]), json.dumps(["ab" * 16])),
        (EXTREME_FLOW, INT64_MIN, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX,
         FlowFlag.DEAD_LETTERED, names, json.dumps([*HOSTILE_NAMES, DEAD_TOPIC]),
         json.dumps(["cd" * 16, SCRIPT]))]
    for index, name in enumerate(HOSTILE_NAMES):
        for at in EXTREME_TIMES:
            rows.append((f"{name}#{at}", at, at, 0, 0, 1, index % 2 * FlowFlag.COMPLETED, names,
                         names, json.dumps([name, "ef" * 16])))
        rows.append((name, now_ns - 1_000_000_000, now_ns, 1, 0, 0, 0, names, names, names))
    return rows


def _lag_rows(now_s: float) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Partitions and groups with hostile names, offsets at int64's ends and times at 0, at
    both ends of what a REAL holds as seconds, and now."""
    partitions, groups = [], []
    for index, name in enumerate(HOSTILE_NAMES):
        for step, at in enumerate((0.0, -9.2e18, 9.2e18, now_s, float("inf"))):
            partitions.append((name, f"{name}.t{index}", 10 * index + step, INT64_MIN,
                               INT64_MAX, INT64_MAX, float("inf") if index % 2 else 1e300,
                               name or "WARN", at, ("kafka", "rabbitmq", name)[step % 3],
                               INT64_MAX, INT64_MIN, INT64_MAX))
        groups.append((name, ("OK", "WARN", "ERR", SCRIPT, TERMINAL)[index], LONG, INT64_MAX,
                       1e300, -1e300, float("inf"), None, 9.2e18, ("kafka", "rabbitmq")[index % 2]))
    return partitions, groups


def build_extreme_store(path: Path, settings: Settings, *, edges: int = 5000,
                        hops: int = 10_000, buckets: int = 3,
                        extreme_values: bool = True) -> Extreme:
    """Write the extremes into a fresh store at path (settings must name it). edges: distinct
    edges of the last few minutes, each in `buckets` buckets; hops: of LONG_FLOW.
    extreme_values=False leaves out the rows with extreme times and hostile strings (for
    timing the sizes alone)."""
    now_ns = time.time_ns()
    now_s = now_ns // 1_000_000_000
    store = open_store(settings)
    try:
        db = store.db  # type: ignore[attr-defined]  # seeded as the SQLite backend lays rows out
        spans, hop_rows, messages = _long_flow(now_ns, hops)
        flows = _flow_rows(now_ns, hops)
        edge_rows = _edge_rows(edges, buckets, now_s)
        partitions, groups = _lag_rows(float(now_s))
        if extreme_values:
            more_spans, more_hops, more_messages = _extreme_flow(now_ns)
            spans, hop_rows, messages = spans + more_spans, hop_rows + more_hops, \
                messages + more_messages
        else:
            edge_rows = edge_rows[:edges * buckets]
            flows = flows[:1]
        with db:
            db.executemany(SPAN_INSERT, spans)
            db.executemany(HOP_INSERT, hop_rows)
            db.executemany(MESSAGE_INSERT, messages)
            db.executemany(FLOW_INSERT, flows)
            db.executemany(EDGE_INSERT, edge_rows)
            db.executemany(ROLLUP_INSERT, _rollup_rows(edge_rows))
            if extreme_values:
                db.executemany("INSERT OR REPLACE INTO flow_latency_buckets VALUES (?,?,?,?)", [
                    (at, name, 2, _histogram(0.0001, 1e12)) for name in HOSTILE_NAMES
                    for at in (*EXTREME_TIMES, now_s // 10 * 10)])
                db.executemany(f"INSERT OR REPLACE INTO lag_current VALUES {LAG_VALUES}",
                               partitions)
                db.executemany(f"INSERT OR REPLACE INTO lag_samples VALUES {LAG_VALUES}",
                               partitions)
                db.executemany(f"INSERT OR REPLACE INTO lag_groups VALUES {GROUP_VALUES}",
                               groups)
                db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)",
                               [(name, INT64_MAX) for name in HOSTILE_NAMES])
                db.executemany(
                    "INSERT OR REPLACE INTO collector_health VALUES (?,?,?,?,?,?)",
                    [(name, ("down", "degraded")[index % 2], LONG, since, INT64_MAX, now_s)
                     for index, (name, since) in enumerate(zip(
                         HOSTILE_NAMES, (0.0, -9.2e18, 9.2e18, float("inf"), now_s),
                         strict=True))])
    finally:
        store.close()
    return Extreme(path, now_ns, edges + (2 * len(HOSTILE_NAMES) if extreme_values else 0),
                   hops, hops + PENDING_SENDS + TAPPED_ONLY)
