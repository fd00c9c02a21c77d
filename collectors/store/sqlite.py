"""The embedded store: SQLite in WAL mode, one writer (the collector), many readers.

Writes are idempotent: a span already stored (same trace and span id) changes nothing, so
replays from Kafka create no duplicates. Hops are matched here, because the two spans of a
hop can arrive in any order and in different batches: a consume span whose producer is not
known yet is kept as a placeholder hop and completed when the producer span arrives.
"""

from __future__ import annotations

import contextlib
import json
import operator
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from collectors.flows.assembler import (
    COMPLETED,
    DEAD_LETTERED,
    EdgeDelta,
    EdgeKey,
    FlowDelta,
    FlowRules,
    bucket_start,
    edge_deltas,
    flow_deltas,
    flow_status,
)
from collectors.flows.histogram import Histogram
from collectors.record import (
    GROUP_LAG_COLUMNS,
    LAG_COLUMNS,
    MESSAGE_COLUMNS,
    SPAN_COLUMNS,
    GroupLag,
    LagRow,
    MessageRecord,
    SpanRecord,
)
from collectors.store import readers, summaries
from collectors.store.interface import (
    SEND_SPAN_SETTLE_MS,
    ComponentRow,
    DeadLetter,
    EdgeBucket,
    FailedStep,
    FlowCounts,
    FlowRow,
    HopRow,
    LatencyBucket,
    PropagationRow,
    StoreError,
    StoreUnavailable,
    Topology,
    WriteResult,
)
from collectors.store.schema import MIGRATES_FROM, SCHEMA, SCHEMA_VERSION

SPAN_FIELDS = ", ".join(f'"{c}"' for c in SPAN_COLUMNS)
SPAN_INSERT = (f"INSERT INTO spans ({SPAN_FIELDS}, flow_id) "
               f"VALUES ({', '.join('?' * (len(SPAN_COLUMNS) + 1))})")
SPAN_SELECT = f"SELECT {SPAN_FIELDS} FROM spans"
SPAN_VALUES = operator.attrgetter(*SPAN_COLUMNS)
LAG_MARKS = ",".join("?" * len(LAG_COLUMNS))
MESSAGE_VALUES = operator.attrgetter(*MESSAGE_COLUMNS)
MESSAGE_INSERT = (f"INSERT OR IGNORE INTO messages VALUES "
                  f"({','.join('?' * (len(MESSAGE_COLUMNS) + 2))})")
GROUP_MARKS = ",".join("?" * len(GROUP_LAG_COLUMNS))
HOP_COLUMNS = ("hop_key", "producer_trace_id", "producer_span_id", "consumer_trace_id",
               "consumer_span_id", "consumer_is_batch", "flow_id", "topic", "partition",
               "offset", "message_id", "producer_service", "consumer_service", "consumer_group",
               "produce_start_ns", "produce_end_ns", "consume_start_ns", "consume_end_ns",
               "retry_attempt", "error")
HOP_FIELDS = ", ".join(f'"{c}"' for c in HOP_COLUMNS)
HOP_INSERT = (f"INSERT OR IGNORE INTO hops ({HOP_FIELDS}) "
              f"VALUES ({', '.join('?' * len(HOP_COLUMNS))})")


# SQLite's result codes that say the store, not the records, is the problem.
UNAVAILABLE_CODES = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                     "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_PERM", "SQLITE_NOMEM",
                     "SQLITE_PROTOCOL")


def store_unavailable(exc: sqlite3.Error, path: Path) -> StoreUnavailable | None:
    """The StoreUnavailable an sqlite3 error stands for, or None when it is about the data."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if not name.startswith(UNAVAILABLE_CODES):
        return None
    return StoreUnavailable(f"store {path}: {exc} ({name})")


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode; readers never block the writer."""
    try:
        if readonly:
            if not path.exists():
                raise StoreError(f"no store at {path}: run `flowscope collect` to create one")
            # A URI built from the path itself would read '#' or '?' in a name as the URI's
            # own, and open (and create) another file, read-write.
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=10, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(path, timeout=10, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=10000")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} cannot be opened as a Flowscope store: {exc}") from None
    except OSError as exc:
        raise StoreError(f"{path} cannot be opened as a Flowscope store: {exc}") from None
    return connection


class SqliteStore:
    """Store backed by one SQLite file."""

    def __init__(self, path: Path, rules: FlowRules, *, bucket_s: int = 10,
                 raw_retention_s: float = 86400, aggregate_retention_s: float = 7 * 86400,
                 readonly: bool = False) -> None:
        self.path = path
        self.rules = rules
        self.bucket_s = bucket_s
        self.raw_retention_s = raw_retention_s
        self.aggregate_retention_s = aggregate_retention_s
        self.db = connect(path, readonly=readonly)
        self._pending_adopted: list[tuple[str, Sequence]] = []  # type: ignore[type-arg]
        if readonly:
            self._check_version()
        else:
            self._migrate()

    def _migrate(self) -> None:
        self._check_is_ours()
        with self.db:
            self.db.executescript(SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                (str(SCHEMA_VERSION),))
            elif int(row[0]) in MIGRATES_FROM:  # the script above added what was missing
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {row[0]}; this Flowscope "
                                 f"reads version {SCHEMA_VERSION}")

    def _check_is_ours(self) -> None:
        """Refuse a file that is not SQLite, or another program's database: the collector
        would add its tables to it (and drop an index that has one of its names)."""
        try:
            tables = [row[0] for row in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a Flowscope store: {exc}") from None
        if tables and "meta" not in tables:
            raise StoreError(f"{self.path} is not a Flowscope store: it is another database "
                             f"(tables {', '.join(tables[:5])}); set FLOWSCOPE_STORE to "
                             "a new file")
        if "meta" in tables and self.db.execute(
                "SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is None:
            raise StoreError(f"{self.path} is not a Flowscope store: its meta table has no "
                             "schema version")

    def _check_version(self) -> None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a Flowscope store: {exc}") from None
        if row is not None and int(row[0]) in MIGRATES_FROM:
            raise StoreError(f"{self.path} has schema version {row[0]}; start this Flowscope's "
                             "collector (`flowscope collect`) once to migrate it to version "
                             f"{SCHEMA_VERSION}")
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {row[0] if row else 'none'}; "
                             f"this Flowscope reads version {SCHEMA_VERSION}")

    # -- writing -------------------------------------------------------------------------------

    def write_spans(self, records: Sequence[SpanRecord]) -> WriteResult:
        """Write spans and what derives from them, in one transaction (all or nothing);
        StoreUnavailable when the store, not the records, made it fail."""
        self._pending_adopted = []  # what a rolled-back write adopted is not adopted
        try:
            with self._transaction():
                new, flow_of = self._insert_new(records)
                flows = flow_deltas(new, self.rules, flow_of)
                edges = edge_deltas([r for r in new if r.is_send], self.bucket_s)
                hops = _HopMatcher(self.db, new, self.bucket_s, flows=flows, edges=edges,
                                   flow_of=flow_of).run()
                self._merge_flows(flows)
                self._merge_edges(edges)
        finally:
            self._pending_adopted = []
        return WriteResult(len(new), len(records) - len(new), hops)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction; an error of the store's own (disk full, read-only...) comes out
        as StoreUnavailable, an error about the data as it is."""
        try:
            with self.db:
                yield
        except sqlite3.Error as exc:
            unavailable = store_unavailable(exc, self.path)
            if unavailable is None:
                raise
            raise unavailable from exc

    def _insert_new(self, records: Sequence[SpanRecord]
                    ) -> tuple[list[SpanRecord], dict[str, str]]:
        unique = list({(r.trace_id, r.span_id): r for r in records}.values())
        # Replays are rare: insert everything at once, and only when a span turns out to be
        # stored already, roll back and keep the new ones.
        self.db.execute("SAVEPOINT fresh")
        try:
            by_trace = self._insert_rows(unique)
            self.db.execute("RELEASE fresh")
            new = unique
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK TO fresh")
            self.db.execute("RELEASE fresh")
            existing = self._stored_keys(unique)
            new = [r for r in unique if (r.trace_id, r.span_id) not in existing]
            by_trace = self._insert_rows(new)
        return new, by_trace

    def _stored_keys(self, records: list[SpanRecord]) -> set[tuple[str, str]]:
        existing: set[tuple[str, str]] = set()
        for chunk in _chunks(records, 300):
            values = ",".join("(?,?)" for _ in chunk)
            params = [v for r in chunk for v in (r.trace_id, r.span_id)]
            existing.update(self.db.execute(
                f"SELECT trace_id, span_id FROM spans WHERE (trace_id, span_id) IN "
                f"(VALUES {values})", params).fetchall())
        return existing

    def _insert_rows(self, new: list[SpanRecord]) -> dict[str, str]:
        """Insert spans (IntegrityError if one is stored already); their traces' flows."""
        by_trace = {r.trace_id: r.correlation_id for r in new if r.correlation_id}
        by_trace.update(self._known_flows({r.trace_id for r in new} - set(by_trace)))
        self._adopt_trace_flows(by_trace)
        links = SPAN_COLUMNS.index("links")
        rows = []
        for r in new:
            values = list(SPAN_VALUES(r))
            values[links] = encode_links(r.links)
            values.append(r.correlation_id or by_trace.get(r.trace_id) or r.trace_id)
            rows.append(values)
        self.db.executemany(SPAN_INSERT, rows)
        return by_trace

    def _known_flows(self, trace_ids: set[str]) -> dict[str, str]:
        """The correlation ID already known for each of these traces."""
        known: dict[str, str] = {}
        for chunk in _chunks(sorted(trace_ids), 300):
            marks = ",".join("?" * len(chunk))
            known.update(self.db.execute(
                f"SELECT trace_id, flow_id FROM spans WHERE trace_id IN ({marks}) "
                "AND flow_id != trace_id GROUP BY trace_id", chunk).fetchall())
        return known

    def _adopt_trace_flows(self, by_trace: Mapping[str, str]) -> None:
        """Spans stored under their trace ID before the trace's correlation ID was known
        (an HTTP span ahead of the first message) move into the correlated flow."""
        for chunk in _chunks(sorted(by_trace), 300):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                    f"SELECT flow_id, started_ns, last_ns, hops, retries, errors, flags, "
                    f"services, topics, trace_ids FROM flows WHERE flow_id IN ({marks})",
                    chunk).fetchall():
                trace_id, correlation_id = row[0], by_trace[row[0]]
                self.db.execute("UPDATE spans SET flow_id=? WHERE flow_id=?",
                                (correlation_id, trace_id))
                self.db.execute("UPDATE hops SET flow_id=? WHERE flow_id=?",
                                (correlation_id, trace_id))
                self.db.execute("DELETE FROM flows WHERE flow_id=?", (trace_id,))
                self._pending_adopted.append((correlation_id, row))

    def _merge_flows(self, deltas: Mapping[str, FlowDelta]) -> None:
        adopted, self._pending_adopted = self._pending_adopted, []
        for correlation_id, row in adopted:
            delta = deltas.setdefault(correlation_id, FlowDelta(row[1], row[2]))
            _fold_flow_row(delta, row)
        stored_flags: dict[str, int] = {}
        for chunk in _chunks(list(deltas), 300):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                    f"SELECT flow_id, started_ns, last_ns, hops, retries, errors, flags, "
                    f"services, topics, trace_ids FROM flows WHERE flow_id IN ({marks})", chunk):
                stored_flags[row[0]] = row[6]
                _fold_flow_row(deltas[row[0]], row)
        self._record_completions({flow_id: d for flow_id, d in deltas.items()
                                  if d.flags & COMPLETED
                                  and not stored_flags.get(flow_id, 0) & COMPLETED})
        self.db.executemany("INSERT OR REPLACE INTO flows VALUES (?,?,?,?,?,?,?,?,?,?)", [
            (flow_id, d.started_ns, d.last_ns, d.hops, d.retries, d.errors, d.flags,
             json.dumps(sorted(d.services)), json.dumps(sorted(d.topics)),
             json.dumps(sorted(d.trace_ids)[:50])) for flow_id, d in deltas.items()])

    def _record_completions(self, completed: Mapping[str, FlowDelta]) -> None:
        """Add the end-to-end latency of flows that just reached a completion topic."""
        merged: dict[tuple[int, str], Histogram] = {}
        for delta in completed.values():
            flow_type = next((t for t in sorted(delta.topics)
                              if self.rules.flag_of(t) == COMPLETED), "other")
            bucket = bucket_start(delta.last_ns, self.bucket_s)
            merged.setdefault((bucket, flow_type), Histogram()).add(
                (delta.last_ns - delta.started_ns) / 1e6)
        for (bucket, flow_type), histogram in merged.items():
            row = self.db.execute("SELECT latency FROM flow_latency_buckets WHERE "
                                  "bucket_start=? AND flow_type=?", (bucket, flow_type)).fetchone()
            if row is not None:
                histogram.merge(Histogram.from_json(row[0]))
            self.db.execute("INSERT OR REPLACE INTO flow_latency_buckets VALUES (?,?,?,?)",
                            (bucket, flow_type, sum(histogram.counts.values()),
                             histogram.to_json()))

    def _merge_edges(self, deltas: Mapping[EdgeKey, EdgeDelta]) -> None:
        for (bucket, source, source_kind, target, target_kind), d in deltas.items():
            row = self.db.execute(
                "SELECT count, errors, retries, latency, processing FROM edge_buckets "
                "WHERE bucket_start=? AND source=? AND target=?",
                (bucket, source, target)).fetchone()
            if row is not None:
                d.count += row[0]
                d.errors += row[1]
                d.retries += row[2]
                d.latency.merge(Histogram.from_json(row[3]))
                d.processing.merge(Histogram.from_json(row[4]))
            self.db.execute("INSERT OR REPLACE INTO edge_buckets VALUES (?,?,?,?,?,?,?,?,?,?)",
                            (bucket, source, source_kind, target, target_kind, d.count,
                             d.errors, d.retries, d.latency.to_json(), d.processing.to_json()))

    def write_messages(self, records: Sequence[MessageRecord]) -> int:
        """Record tapped messages (idempotent by coordinates) and fold them into their flows."""
        with self._transaction():
            by_trace = self._known_flows({r.trace_id for r in records
                                          if r.trace_id and not r.correlation_id})
            rows = []
            deltas: dict[str, FlowDelta] = {}
            for r in records:
                flow_id = r.correlation_id or (by_trace.get(r.trace_id) if r.trace_id
                                               else None) or r.trace_id
                rows.append((*MESSAGE_VALUES(r), flow_id, r.message_id))
            new = 0
            for row, r in zip(rows, records, strict=True):
                if not self.db.execute(MESSAGE_INSERT, row).rowcount:
                    continue  # seen before: a replay
                new += 1
                flow_id = row[-2]
                if flow_id is None:
                    continue  # no correlation ID and no trace context: no flow to join
                at_ns = r.timestamp_ms * 1_000_000
                delta = deltas.setdefault(flow_id, FlowDelta(at_ns, at_ns))
                delta.started_ns = min(delta.started_ns, at_ns)
                delta.last_ns = max(delta.last_ns, at_ns)
                delta.topics.add(r.topic)
                delta.flags |= self.rules.flag_of(r.topic)
                if r.trace_id:
                    delta.trace_ids.add(r.trace_id)
            self._merge_flows(deltas)
        return new

    def propagation(self, since_ms: int, sample: int | None = None,
                    now_ms: int | None = None) -> list[PropagationRow]:
        """Per topic and producer, the messages since since_ms (the newest `sample` of them,
        when given) and those with trace context; with now_ms, unattributed messages younger
        than SEND_SPAN_SETTLE_MS are left out (their send span may still be on its way)."""
        newest = "ORDER BY timestamp_ms DESC LIMIT ?" if sample else ""
        settled = 2**62 if now_ms is None else now_ms - SEND_SPAN_SETTLE_MS
        return [PropagationRow(*row) for row in self.db.execute(
            "SELECT m.topic, COALESCE((SELECT s.service FROM spans s WHERE s.message_id = "
            "m.message_id AND s.operation IN ('send', 'create') LIMIT 1), "
            "CASE WHEN m.timestamp_ms >= ? THEN NULL ELSE 'unknown' END) AS producer,"
            " COUNT(*), SUM(m.trace_id IS NOT NULL) FROM (SELECT topic, message_id, trace_id, "
            f"timestamp_ms FROM messages WHERE timestamp_ms >= ? {newest}) m "
            "GROUP BY m.topic, producer HAVING producer IS NOT NULL "
            "ORDER BY m.topic, producer",
            (settled, since_ms, sample) if sample else (settled, since_ms))]

    def write_lag(self, rows: Sequence[LagRow], groups: Sequence[GroupLag]) -> None:
        """Record one lag poll: the current figures and the history."""
        lag_values = [tuple(getattr(r, c) for c in LAG_COLUMNS) for r in rows]
        with self._transaction():
            self.db.executemany(f"INSERT OR REPLACE INTO lag_current VALUES ({LAG_MARKS})",
                                lag_values)
            self.db.executemany(f"INSERT OR IGNORE INTO lag_samples VALUES ({LAG_MARKS})",
                                lag_values)
            self.db.executemany(
                f"INSERT OR REPLACE INTO lag_groups VALUES ({GROUP_MARKS})",
                [tuple(getattr(g, c) for c in GROUP_LAG_COLUMNS) for g in groups])

    def lag(self, group: str | None = None) -> tuple[list[LagRow], list[GroupLag]]:
        """The latest lag of every partition and group (or of one group)."""
        where, params = ('WHERE "group" = ?', (group,)) if group else ("", ())
        rows = [LagRow(*r) for r in self.db.execute(
            f'SELECT * FROM lag_current {where} ORDER BY "group", topic, partition', params)]
        groups = [GroupLag(*g) for g in self.db.execute(
            f'SELECT * FROM lag_groups {where} ORDER BY "group"', params)]
        return rows, groups

    def lag_history(self, since_s: float, group: str | None = None) -> list[LagRow]:
        """Partition lag over time since since_s, oldest first."""
        extra, params = ('AND "group" = ?', (since_s, group)) if group else ("", (since_s,))
        return [LagRow(*r) for r in self.db.execute(
            f"SELECT * FROM lag_samples WHERE at_s >= ? {extra} ORDER BY at_s", params)]

    def lag_trend(self, since_s: float) -> list[tuple[str, float, int, float | None]]:
        """Per group and poll since since_s: (group, at_s, total lag, largest lag seconds)."""
        # TOTAL, not SUM: a sum past int64 is an error in SQLite; the cast saturates instead.
        return self.db.execute(
            'SELECT "group", at_s, CAST(TOTAL(lag) AS INTEGER), MAX(lag_seconds) FROM '
            'lag_samples WHERE at_s >= ? GROUP BY "group", at_s ORDER BY at_s',
            (since_s,)).fetchall()

    def add_counters(self, counts: Mapping[str, int]) -> None:
        """Add to named counters."""
        with self._transaction():
            self.db.executemany(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                "value = value + excluded.value", [(k, v) for k, v in counts.items() if v])

    def write_health(self, snapshot: Mapping[str, object], at_s: float) -> None:
        """Replace the collector's component health with this report (Health.snapshot())."""
        components = snapshot.get("components") or {}
        assert isinstance(components, Mapping)
        with self._transaction():
            self.db.execute("DELETE FROM collector_health")
            self.db.executemany("INSERT INTO collector_health VALUES (?,?,?,?,?,?)", [
                (name, c["state"], c["reason"], c["since_s"], c["restarts"], at_s)
                for name, c in components.items()])

    def collector_health(self) -> list[ComponentRow]:
        """The collector's components as last reported, by name."""
        return [ComponentRow(*row) for row in self.db.execute(
            "SELECT component, state, reason, since_s, restarts, at_s FROM collector_health "
            "ORDER BY component")]

    def apply_retention(self, now_ns: int) -> int:
        """Delete raw rows older than raw_retention_s and aggregates older than theirs."""
        raw_cut = now_ns - int(self.raw_retention_s * 1e9)
        agg_cut = int(now_ns / 1e9 - self.aggregate_retention_s)
        with self._transaction():
            deleted = self.db.execute("DELETE FROM spans WHERE end_ns < ?", (raw_cut,)).rowcount
            deleted += self.db.execute("DELETE FROM hops WHERE consume_end_ns < ?",
                                       (raw_cut,)).rowcount
            deleted += self.db.execute(
                "DELETE FROM span_links WHERE NOT EXISTS (SELECT 1 FROM spans s WHERE "
                "s.trace_id = span_links.trace_id AND s.span_id = span_links.span_id)").rowcount
            deleted += self.db.execute("DELETE FROM flows WHERE last_ns < ?",
                                       (raw_cut,)).rowcount
            deleted += self.db.execute("DELETE FROM edge_buckets WHERE bucket_start < ?",
                                       (agg_cut,)).rowcount
            deleted += self.db.execute("DELETE FROM flow_latency_buckets WHERE bucket_start < ?",
                                       (agg_cut,)).rowcount
            deleted += self.db.execute("DELETE FROM lag_samples WHERE at_s < ?",
                                       (raw_cut / 1e9,)).rowcount
            deleted += self.db.execute("DELETE FROM messages WHERE timestamp_ms < ?",
                                       (raw_cut // 1_000_000,)).rowcount
        return deleted

    # -- reading -------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """All counters."""
        return dict(self.db.execute("SELECT name, value FROM counters").fetchall())

    def topology(self, since_ns: int) -> Topology:
        """The service/topic graph from the edge aggregates since since_ns."""
        return readers.read_topology(self.db, self._bucket(since_ns))[0]

    def busiest_topology(self, since_ns: int, limit: int, by: str = "count",
                         touching: str | None = None) -> tuple[Topology, int]:
        """The graph of the `limit` busiest edges since since_ns (by messages, or by
        retries; those of the node `touching` first), and how many edges there are in
        all."""
        return readers.read_topology(self.db, self._bucket(since_ns), limit, by, touching)

    def _bucket(self, ns: int) -> int:
        return int(ns // 1_000_000_000) // self.bucket_s * self.bucket_s

    def flows(self, since_ns: int, now_ns: int, limit: int = 100) -> list[FlowRow]:
        """Flows active since since_ns, newest first."""
        return readers.read_flows(self.db, since_ns, limit,
                                  lambda flags, errors, last: flow_status(
                                      flags, errors, last, now_ns, self.rules.stuck_after_s))

    def flow(self, flow_or_trace_id: str, now_ns: int) -> tuple[FlowRow, list[HopRow]] | None:
        """One flow with its hops in time order."""
        found = self.flow_head(flow_or_trace_id, now_ns, None)
        return None if found is None else found[:2]

    def flow_head(self, flow_or_trace_id: str, now_ns: int, limit: int | None
                  ) -> tuple[FlowRow, list[HopRow], int] | None:
        """One flow with its first `limit` hops in time order, and how many more it has."""
        return readers.read_flow(self.db, flow_or_trace_id,
                                 lambda flags, errors, last: flow_status(
                                     flags, errors, last, now_ns, self.rules.stuck_after_s),
                                 limit)

    def failed_steps(self, flow_id: str, limit: int = 50) -> list[FailedStep]:
        """The spans of a flow that ended in error, oldest first (read by the flow index)."""
        return [FailedStep(*row) for row in self.db.execute(
            "SELECT start_ns, service, name, kind, error_type, trace_id FROM spans "
            "WHERE flow_id = ? AND error = 1 ORDER BY start_ns LIMIT ?", (flow_id, limit))]

    def flow_counts(self, window_ns: int, now_ns: int) -> FlowCounts:
        """Outcomes and starts in this window and the one before; in flight and stuck now."""
        return summaries.count_flows(self.db, window_ns, now_ns, self.rules.stuck_after_s)

    def topology_nodes(self, since_ns: int) -> dict[str, str]:
        """The nodes of the topology since since_ns (name -> 'service' or 'topic'), without
        reading the edges' histograms."""
        nodes: dict[str, str] = {}
        # one pass over the window's buckets (a UNION of sources and targets takes two)
        for source, source_kind, target, target_kind in self.db.execute(
                "SELECT DISTINCT source, source_kind, target, target_kind FROM edge_buckets "
                "WHERE bucket_start >= ?", (self._bucket(since_ns),)):
            nodes[source], nodes[target] = source_kind, target_kind
        return dict(sorted(nodes.items()))

    def edge_buckets(self, since_ns: int, edges: Sequence[tuple[str, str]] | None = None
                     ) -> list[EdgeBucket]:
        """Every edge (or these (source, target) edges) per time bucket since since_ns,
        oldest first."""
        return summaries.read_edge_buckets(self.db, self._bucket(since_ns), edges)

    def flow_latency(self, since_ns: int) -> list[LatencyBucket]:
        """End-to-end latency histograms of completed flows per bucket and type."""
        return summaries.read_flow_latency(self.db, self._bucket(since_ns))

    def find_flows(self, text: str) -> list[str]:
        """Flow ids named by a correlation ID, trace ID, message id or message key."""
        return summaries.find_flow_ids(self.db, text)

    def retry_attempts(self, since_ms: int, sample: int | None = None
                       ) -> list[tuple[str, int, int]]:
        """(topic, attempt, messages) of tapped messages since since_ms (the newest
        `sample` of them, when given)."""
        return summaries.read_retry_attempts(self.db, since_ms, sample)

    def dead_letters(self, since_ms: int, limit: int = 200, flow_id: str | None = None
                     ) -> list[DeadLetter]:
        """Messages on dead-letter topics since since_ms (of one flow), newest first."""
        if flow_id:  # the flow's own messages: any topic it reached
            topics = json.loads((self.db.execute("SELECT topics FROM flows WHERE flow_id = ?",
                                                 (flow_id,)).fetchone() or ("[]",))[0])
        else:  # every tapped topic, also those no instrumented producer writes to
            topics = summaries.tapped_topics(self.db)
        topics = [t for t in topics if self.rules.flag_of(t) == DEAD_LETTERED]
        return summaries.read_dead_letters(self.db, topics, since_ms, limit, flow_id)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


def _chunks(items: list, size: int) -> Iterable[list]:  # type: ignore[type-arg]
    for i in range(0, len(items), size):
        yield items[i:i + size]


class _HopMatcher:
    """Matches the consume spans of a batch with their producers, and late producers with
    the consume spans waiting for them; adds counts to the flow and edge deltas."""

    def __init__(self, db: sqlite3.Connection, new: list[SpanRecord], bucket_s: int, *,
                 flows: dict[str, FlowDelta], edges: dict[EdgeKey, EdgeDelta],
                 flow_of: dict[str, str]) -> None:
        self.db, self.new, self.bucket_s = db, new, bucket_s
        self.flows, self.edges, self.flow_of = flows, edges, flow_of
        self.by_id = {(r.trace_id, r.span_id): r for r in new}
        self.created = 0
        self.waiting = self.batch_hops = self.links_waiting = False

    def run(self) -> int:
        self.batch_hops = any(r.is_consume and r.batch_count is not None for r in self.new) \
            or bool(self.db.execute("SELECT EXISTS (SELECT 1 FROM hops WHERE "
                                    "consumer_is_batch = 1)").fetchone()[0])
        self.links_waiting = bool(self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM span_links)").fetchone()[0])
        for record in self.new:
            if record.is_consume:
                self._consume(record)
        self.links_waiting = self.links_waiting or bool(self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM span_links)").fetchone()[0])
        # Late producers only matter while consume spans wait for theirs: one cheap check
        # saves two lookups per send span in the common case (producer first).
        self.waiting = bool(self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM hops WHERE producer_span_id IS NULL)").fetchone()[0])
        for record in self.new:
            if record.is_send:
                self._late_producer(record)
        return self.created

    def _span(self, trace_id: str, span_id: str) -> SpanRecord | None:
        found = self.by_id.get((trace_id, span_id))
        if found is not None:
            return found
        row = self.db.execute(f"{SPAN_SELECT} WHERE trace_id=? AND span_id=?",
                              (trace_id, span_id)).fetchone()
        return _record(row) if row else None

    def _producers(self, consume: SpanRecord) -> list[SpanRecord]:
        candidates = []
        if consume.parent_span_id and consume.batch_count is None:
            candidates.append((consume.trace_id, consume.parent_span_id))
        candidates.extend(consume.links)
        found: dict[tuple[str, str], SpanRecord] = {}
        for trace_id, span_id in candidates:
            span = self._span(trace_id, span_id)
            if span is not None and span.is_send:
                found[(trace_id, span_id)] = span
        # Links whose span is not known yet wait in span_links for a late producer.
        unresolved = [(t, s, consume.trace_id, consume.span_id) for t, s in consume.links
                      if (t, s) not in found and (t, s) != (consume.trace_id,
                                                          consume.parent_span_id)]
        if unresolved and not (found and consume.batch_count is None):
            self.db.executemany("INSERT OR IGNORE INTO span_links VALUES (?,?,?,?)",
                                unresolved)
        if not found and consume.message_id and consume.batch_count is None:
            row = self.db.execute(
                f"{SPAN_SELECT} WHERE message_id=? AND operation IN ('send', 'create') LIMIT 1",
                (consume.message_id,)).fetchone()
            if row:
                span = _record(row)
                found[(span.trace_id, span.span_id)] = span
        return list(found.values())

    def _consume(self, consume: SpanRecord) -> None:
        producers = self._producers(consume)
        batch = consume.batch_count is not None
        if not producers and not batch:
            self._insert(None, consume, count=True, latency=False)
        for producer in producers[:1] if not batch else producers:
            key = f"{producer.trace_id}:{producer.span_id}|{consume.service}"
            if not batch:
                # A per-message span replaces a hop seen only through a batch span's link.
                upgraded = self.batch_hops and self.db.execute(
                    "DELETE FROM hops WHERE hop_key=? AND consumer_is_batch=1", (key,)).rowcount
                self._insert(producer, consume, count=not upgraded, latency=not upgraded)
            else:
                self._insert(producer, consume, count=True, latency=True)

    def _late_producer(self, producer: SpanRecord) -> None:
        if self.waiting:
            candidates = self.db.execute(
                "SELECT trace_id, span_id FROM spans WHERE trace_id = ? AND parent_span_id = ? "
                "AND operation IN ('process', 'receive')",
                (producer.trace_id, producer.span_id)).fetchall()
            if producer.message_id:
                candidates += self.db.execute(
                    "SELECT consumer_trace_id, consumer_span_id FROM hops WHERE message_id = ? "
                    "AND producer_span_id IS NULL", (producer.message_id,)).fetchall()
            for trace_id, span_id in candidates:
                if (trace_id, span_id) in self.by_id:
                    continue  # consume spans of this batch were matched already
                had = self.db.execute("DELETE FROM hops WHERE hop_key = ?",
                                      (f"?{trace_id}:{span_id}",)).rowcount
                consume = self._span(trace_id, span_id) if had else None
                if consume is not None:
                    self._insert(producer, consume, count=False, latency=True)
        if not self.links_waiting:
            return
        for trace_id, span_id in self.db.execute(
                "DELETE FROM span_links WHERE linked_trace_id = ? AND linked_span_id = ? "
                "RETURNING trace_id, span_id", (producer.trace_id, producer.span_id)
                ).fetchall():
            consume = self._span(trace_id, span_id)
            if consume is None or (trace_id, span_id) in self.by_id:
                continue  # consume spans of this batch were matched already
            had = self.db.execute("DELETE FROM hops WHERE hop_key = ?",
                                  (f"?{trace_id}:{span_id}",)).rowcount
            self._insert(producer, consume, count=not had, latency=True)

    def _insert(self, producer: SpanRecord | None, consume: SpanRecord, *, count: bool,
                latency: bool) -> None:
        batch = consume.batch_count is not None
        key = (f"{producer.trace_id}:{producer.span_id}|{consume.service}" if producer
               else f"?{consume.trace_id}:{consume.span_id}")
        flow_id = (producer.flow_id if producer else None) or self.flow_of.get(
            consume.trace_id) or consume.flow_id
        source = producer or consume
        inserted = self.db.execute(HOP_INSERT, (
            key, producer.trace_id if producer else None, producer.span_id if producer else None,
            consume.trace_id, consume.span_id, int(batch), flow_id,
            source.topic or consume.topic, source.partition, source.offset, source.message_id,
            producer.service if producer else None, consume.service, consume.consumer_group,
            producer.start_ns if producer else None, producer.end_ns if producer else None,
            consume.start_ns, consume.end_ns, consume.retry_attempt, int(consume.error),
        )).rowcount
        if not inserted:
            return
        edge = self.edges.setdefault((bucket_start(consume.start_ns, self.bucket_s),
                                      str(consume.topic), "topic", consume.service, "service"),
                                     EdgeDelta())
        if producer is not None and latency:
            edge.latency.add(max(0.0, (consume.start_ns - producer.end_ns) / 1e6))
        if not count:
            return
        self.created += 1
        retried = int((consume.retry_attempt or 1) > 1)
        edge.count += 1
        edge.errors += int(consume.error)
        edge.retries += retried
        edge.processing.add((consume.end_ns - consume.start_ns) / 1e6)
        flow = self.flows.setdefault(flow_id, FlowDelta(consume.start_ns, consume.end_ns))
        flow.hops += 1
        flow.retries += retried


def _fold_flow_row(delta: FlowDelta, row: Sequence) -> None:  # type: ignore[type-arg]
    """Add a stored flow row into a delta."""
    delta.started_ns = min(delta.started_ns, row[1])
    delta.last_ns = max(delta.last_ns, row[2])
    delta.hops += row[3]
    delta.retries += row[4]
    delta.errors += row[5]
    delta.flags |= row[6]
    delta.services.update(json.loads(row[7]))
    delta.topics.update(json.loads(row[8]))
    delta.trace_ids.update(json.loads(row[9]))


def encode_links(links: tuple[tuple[str, str], ...]) -> str | None:
    """Links as stored: 'trace:span' pairs separated by commas."""
    return ",".join(f"{t}:{s}" for t, s in links) if links else None


def decode_links(text: str | None) -> tuple[tuple[str, str], ...]:
    """The links stored by encode_links."""
    if not text:
        return ()
    return tuple((part[:32], part[33:]) for part in text.split(","))


def _record(row: Sequence[object]) -> SpanRecord:
    values = dict(zip(SPAN_COLUMNS, row, strict=True))
    values["links"] = decode_links(values["links"])  # type: ignore[arg-type]
    values["error"] = bool(values["error"])
    return SpanRecord(**values)  # type: ignore[arg-type]


def now_ns() -> int:
    """The current time in ns (one place, so that tests can reason about it)."""
    return time.time_ns()
