"""`flowscope inspect`: read the store and print it, as a table for people or JSON for scripts."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from store.contract import FlowRow, Store, Topology
from store.records import Hop
from store.vocabulary import ACTIVEMQ, KAFKA, NATS, node_parts

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Senders create services and topics at will: a command prints the busiest edges and a
# flow's first hops, and says how many it left out.
EDGES_SHOWN = 500
HOPS_SHOWN = 1000
CELL_LIMIT = 120  # characters of a table cell; --json prints every character
STALE_REPORT_S = 30  # the collector writes its health every second
PROPAGATION_SAMPLE = 10_000  # the newest messages of the window, as the dashboard takes them
# Control characters (a terminal's escape sequences, line breaks) in untrusted text are
# printed as escapes, so that a name cannot rewrite the terminal or break a table's rows.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_duration(text: str) -> float:
    """Seconds in '90s', '15m', '2h', '1d' (a bare number is seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 2h or 1d")
    return float(match[1]) * UNITS[match[2] or "s"]


def _datetime(ns: int) -> datetime:
    """A time in ns since 1970; one beyond what datetime holds is shown at that end."""
    try:
        return EPOCH + timedelta(microseconds=ns // 1000)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if ns > 0 else datetime.min.replace(tzinfo=UTC)


def _time(ns: int | None) -> str:
    if ns is None:
        return "-"
    return _datetime(ns).strftime("%H:%M:%S.%f")[:-3]


def _iso(ns: int | None) -> str | None:
    return None if ns is None else _datetime(ns).isoformat()


def _finite(value: float | None) -> float | None:
    """A number JSON can carry (json.dumps writes Infinity and NaN, which is not JSON)."""
    return value if value is None or math.isfinite(value) else None


def _decimal(value: float | None) -> str:
    """A duration (ms or s, as its column says) with one decimal; '-' when unknown."""
    return "-" if value is None else f"{value:.1f}"


def cell(value: object) -> str:
    """A value as a table cell: control characters escaped, cut to CELL_LIMIT characters."""
    text = CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", "-" if value is None else str(value))
    return text if len(text) <= CELL_LIMIT else text[:CELL_LIMIT - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows under a header, columns aligned."""
    cells = [list(header)] + [[cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def topology_json(topology: Topology) -> dict[str, object]:
    """nodes (id, kind, system, name) and edges (source, target: node ids; count, errors,
    retries, p50_ms, p95_ms)."""
    return {"nodes": [{"id": n, "kind": k, "system": system, "name": name}
                      for n, k in topology.nodes.items()
                      for system, name in (node_parts(n, k),)],
            "edges": [{"source": e.source, "target": e.target, "count": e.count,
                       "errors": e.errors, "retries": e.retries, "p50_ms": e.p50_ms,
                       "p95_ms": e.p95_ms, "processing_p50_ms": e.processing_p50_ms,
                       "processing_p95_ms": e.processing_p95_ms} for e in topology.edges]}


def flow_json(flow: FlowRow) -> dict[str, object]:
    """id, status, started, ended, hops, retries (and what else a flow knows)."""
    return {"id": flow.id, "status": flow.status, "started": _iso(flow.started_ns),
            "ended": _iso(flow.ended_ns), "hops": flow.hops, "retries": flow.retries,
            "errors": flow.errors, "services": flow.services, "topics": flow.topics,
            "trace_ids": flow.trace_ids}


def hop_json(hop: Hop) -> dict[str, object]:
    """One hop with its timings."""
    return {"system": hop.system or KAFKA, "topic": hop.topic, "queue": hop.queue,
            "routing_key": hop.routing_key, "partition": hop.partition, "offset": hop.offset,
            "producer": hop.producer_service, "consumer": hop.consumer_service,
            "consumer_group": hop.consumer_group, "produced": _iso(hop.produce_start_ns),
            "consumed": _iso(hop.consume_start_ns), "queue_ms": hop.queue_ms,
            "processing_ms": hop.processing_ms, "retry_attempt": hop.retry_attempt,
            "error": hop.error, "trace_id": hop.trace_id}


def inspect_topology(store: Store, since_s: float, as_json: bool,
                     limit: int = EDGES_SHOWN) -> str:
    """The topology over the last since_s seconds: its `limit` busiest edges."""
    topology, total = store.busiest_topology(time.time_ns() - int(since_s * 1e9), limit)
    left_out = total - len(topology.edges)
    if as_json:
        return json.dumps({**topology_json(topology), "edges_left_out": left_out})
    if not topology.edges:
        return "no messages in this window (is `flowscope collect` receiving spans?)"
    text = table(["SOURCE", "TARGET", "COUNT", "ERRORS", "RETRIES", "P50_MS", "P95_MS"],
                 [(e.source, e.target, e.count, e.errors, e.retries, _decimal(e.p50_ms),
                   _decimal(e.p95_ms)) for e in topology.edges])
    if left_out:
        text += (f"\n\n{len(topology.edges):,} edges of {total:,} shown (the busiest); "
                 f"{left_out:,} left out")
    return text


def inspect_flows(store: Store, since_s: float, as_json: bool, limit: int) -> str:
    """The flows active over the last since_s seconds, newest first."""
    now = time.time_ns()
    flows = store.flows(now - int(since_s * 1e9), now, limit)
    if as_json:
        return json.dumps({"flows": [flow_json(f) for f in flows]})
    if not flows:
        return "no flows in this window"
    return table(["ID", "STATUS", "STARTED", "ENDED", "HOPS", "RETRIES"],
                 [(f.id, f.status, _time(f.started_ns), _time(f.ended_ns), f.hops, f.retries)
                  for f in flows])


def inspect_flow(store: Store, flow_id: str, as_json: bool, limit: int = HOPS_SHOWN
                 ) -> str | None:
    """One flow and its first `limit` hops in time order; None when it is not in the
    store."""
    found = store.flow_head(flow_id, time.time_ns(), limit)
    if found is None:
        return None
    flow, hops, left_out = found
    failed = store.failed_steps(flow.id) if flow.errors else []
    if as_json:
        return json.dumps({**flow_json(flow), "hop_list": [hop_json(h) for h in hops],
                           "hops_left_out": left_out,
                           "failed_steps": [{"at_ns": f.start_ns, "service": f.service,
                                             "step": f.name, "kind": f.kind,
                                             "error": f.error_type, "trace_id": f.trace_id}
                                            for f in failed]})
    head = (f"flow {cell(flow.id)}: {flow.status}, {flow.hops} hops, {flow.retries} retries, "
            f"{_time(flow.started_ns)} -> {_time(flow.ended_ns)}")
    rows = [(_time(h.produce_start_ns or h.consume_start_ns), h.producer_service,
             h.topic if h.queue is None else f"{h.topic} -> {h.queue}",
             h.consumer_service or "(waiting)", _decimal(h.queue_ms), _decimal(h.processing_ms),
             h.retry_attempt, "error" if h.error else "") for h in hops]
    text = head + "\n" + table(["AT", "PRODUCER", "TOPIC", "CONSUMER", "QUEUE_MS",
                                "PROCESS_MS", "ATTEMPT", ""], rows)
    if left_out:
        text += (f"\n({len(hops):,} hops of {len(hops) + left_out:,} shown, the first in time "
                 f"order; {left_out:,} left out)")
    if failed:
        text += "\n\nfailed steps:\n" + table(
            ["AT", "SERVICE", "STEP", "KIND", "ERROR"],
            [(_time(f.start_ns), f.service, f.name, f.kind, f.error_type or "-")
             for f in failed])
    return text


def inspect_counters(store: Store, as_json: bool) -> str:
    """What the collector counted: spans received and written, rejected, not placed."""
    counters = store.counters()
    if as_json:
        return json.dumps({"counters": counters})
    return table(["COUNTER", "VALUE"], sorted(counters.items())) if counters else "no counters"


def inspect_health(store: Store, as_json: bool, now_s: float | None = None) -> str:
    """The collector's components as it last reported them: state, since when, why,
    restarts; and how old that report is."""
    rows = store.collector_health()
    now_s = time.time() if now_s is None else now_s
    age = now_s - max((row.at_s for row in rows), default=now_s)
    if as_json:
        return json.dumps({"reported_s_ago": round(age, 1) if rows else None, "components": [
            {"component": r.component, "state": r.state, "reason": r.reason,
             "since": _iso(int(r.since_s * 1e9)), "restarts": r.restarts,
             **({"collector": r.collector} if r.collector else {})} for r in rows]})
    if not rows:
        return "no health report in this store (is `flowscope collect` running?)"
    several = len({r.collector for r in rows}) > 1
    text = table(["COMPONENT", *(["COLLECTOR"] if several else []), "STATE", "SINCE",
                  "RESTARTS", "REASON"],
                 [(r.component, *([r.collector] if several else []), r.state,
                   _time(int(r.since_s * 1e9)), r.restarts, r.reason or "") for r in rows])
    return f"{text}\n\nreported {age:.0f}s ago" + (
        " (the collector reports every second: it is stopped or cannot write the store)"
        if age > STALE_REPORT_S else "")


def inspect_lag(store: Store, group: str | None, as_json: bool) -> str:
    """Lag per partition (group, topic, partition, committed, end, lag, lag_seconds, status)
    and per group (status and worst partition, totals, trend)."""
    rows, groups = store.lag(group)
    if as_json:
        return json.dumps({
            "partitions": [{"system": r.system, "group": r.group, "topic": r.topic,
                            "partition": r.partition,
                            "committed": r.committed, "end": r.end, "lag": r.lag,
                            "lag_seconds": _finite(r.lag_seconds), "status": r.status,
                            "at": _finite(r.at_s), "ready": r.ready,
                            "unacknowledged": r.unacknowledged, "consumers": r.consumers}
                           for r in rows],
            "groups": [{"system": g.system, "group": g.group, "status": g.status,
                        "worst_partition": g.worst_partition, "lag": g.lag,
                        "lag_seconds": _finite(g.lag_seconds),
                        "consume_rate": _finite(g.consume_rate),
                        "lag_rate": _finite(g.lag_rate), "catch_up_s": _finite(g.catch_up_s),
                        "at": _finite(g.at_s)} for g in groups]})
    if not rows:
        return ("no consumer groups, queues or JetStream consumers seen yet (is `flowscope "
                "collect` running with a broker?)")
    kafka = [r for r in rows if r.system == KAFKA]
    consumers = [r for r in rows if r.system == NATS]
    addressed = [r for r in rows if r.system == ACTIVEMQ]
    queues = [r for r in rows if r.system not in (KAFKA, NATS, ACTIVEMQ)]
    tables = []
    if kafka:
        tables.append(table(["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG",
                             "LAG_S", "STATUS"],
                            [(r.group, r.topic, r.partition, r.committed, r.end, r.lag,
                              _decimal(r.lag_seconds), r.status) for r in kafka]))
    if queues:
        tables.append(table(["SYSTEM", "QUEUE", "EXCHANGE", "READY", "UNACKED", "CONSUMERS",
                             "LAG", "LAG_S", "STATUS"],
                            [(r.system, r.group, r.topic, r.ready, r.unacknowledged,
                              r.consumers, r.lag, _decimal(r.lag_seconds), r.status)
                             for r in queues]))
    if addressed:
        tables.append(table(["SYSTEM", "QUEUE", "ADDRESS", "READY", "DELIVERING", "CONSUMERS",
                             "LAG", "LAG_S", "STATUS"],
                            [(r.system, r.group, r.topic, r.ready, r.unacknowledged,
                              r.consumers, r.lag, _decimal(r.lag_seconds), r.status)
                             for r in addressed]))
    if consumers:
        tables.append(table(["SYSTEM", "CONSUMER", "STREAM", "ACK_FLOOR", "LAST_SEQ", "PENDING",
                             "ACK_PENDING", "LAG", "LAG_S", "STATUS"],
                            [(r.system, r.group, r.topic, r.committed, r.end, r.ready,
                              r.unacknowledged, r.lag, _decimal(r.lag_seconds), r.status)
                             for r in consumers]))
    summary = table(["SYSTEM", "GROUP", "STATUS", "WORST", "LAG", "LAG_S", "CATCH_UP_S"],
                    [(g.system, g.group, g.status, g.worst_partition, g.lag,
                      _decimal(g.lag_seconds),
                      "never" if g.catch_up_s is None else _decimal(g.catch_up_s))
                     for g in groups])
    return "\n\n".join([*tables, summary])


def inspect_propagation(store: Store, since_s: float, as_json: bool) -> str:
    """Per topic and producer: messages, those with a valid traceparent, and the share."""
    now = time.time_ns()
    rows = store.propagation(now - int(since_s * 1e9), PROPAGATION_SAMPLE, now_ns=now)
    if as_json:
        return json.dumps({"sample": PROPAGATION_SAMPLE, "topics": [
            {"topic": r.topic, "producer": r.producer, "messages": r.messages,
             "with_context": r.with_context, "share": r.share} for r in rows]})
    if not rows:
        return "no messages tapped in this window"
    return table(["TOPIC", "PRODUCER", "MESSAGES", "WITH_CONTEXT", "SHARE"],
                 [(r.topic, r.producer, r.messages, r.with_context, f"{r.share:.0%}")
                  for r in rows]) + (f"\n\nof the newest {PROPAGATION_SAMPLE:,} messages of the "
                                     "window")
