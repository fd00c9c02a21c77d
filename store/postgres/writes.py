"""The PostgreSQL backend's side of flow derivation (store.contract.SpanWrites): set-based
lookups and idempotent writes inside one transaction, whatever the batch's size: lookups are
one statement over arrays; bulk writes copy their rows (binary COPY) into a temporary staging
table of the session, then insert from it in one statement. Aggregates are merged by the
database (ON CONFLICT ... DO UPDATE adds the counts and histograms), never read and written
back by a collector. No rule of what a hop or a flow is lives here."""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Mapping, Sequence

import psycopg

from store.histogram import Histogram
from store.postgres.partitions import Partitions
from store.postgres.schema import PARTITIONED
from store.records import (
    FLOW_TRACE_IDS,
    MESSAGE_COLUMNS,
    SPAN_COLUMNS,
    EdgeKey,
    EdgeTotals,
    FlowTotals,
    Hop,
    MessageRecord,
    SpanKey,
    SpanRecord,
)
from store.sql.rows import (
    FLOW_FIELDS,
    HOP_COLUMNS,
    encode_links,
    flow_totals,
    hop_values,
    names_json,
    span_record,
)
from store.vocabulary import CONSUMES, SENDS, sql_list

SPANS, HOPS, MESSAGES, _ = PARTITIONED
SPAN_FIELDS = ", ".join(f'"{c}"' for c in SPAN_COLUMNS)
SPAN_VALUES = operator.attrgetter(*SPAN_COLUMNS)
LINKS_AT = SPAN_COLUMNS.index("links")
MESSAGE_VALUES = operator.attrgetter(*MESSAGE_COLUMNS)
FLOW_COLUMNS = tuple(FLOW_FIELDS.split(", "))
EDGE_COLUMNS = ("bucket_start", "source", "source_kind", "target", "target_kind", "count",
                "errors", "retries", "latency", "processing")
# Merging a stored edge bucket (or rollup) with what a batch adds to it.
EDGE_MERGE = ("count = {t}.count + EXCLUDED.count, errors = {t}.errors + EXCLUDED.errors, "
              "retries = {t}.retries + EXCLUDED.retries, "
              "latency = flowscope_histogram_merge({t}.latency, EXCLUDED.latency), "
              "processing = flowscope_histogram_merge({t}.processing, EXCLUDED.processing)")


def staged_insert(table: str, columns: Sequence[str]) -> str:
    """INSERT of the rows staged for a table (see Staging.copy)."""
    names = ", ".join(f'"{c}"' for c in columns)
    return f"INSERT INTO {table} ({names}) SELECT {names} FROM {STAGE_PREFIX}{table}"


def clean(row: Sequence[object]) -> list[object]:
    """A row as its columns hold it: a flag as a number; text without NUL, which PostgreSQL's
    text cannot hold (U+FFFD instead)."""
    values = []
    for value in row:
        if type(value) is str:
            values.append(value.replace("\x00", "\ufffd") if "\x00" in value else value)
        else:
            values.append(int(value) if type(value) is bool else value)
    return values


def pair_arrays(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """(trace, span) pairs as two arrays."""
    firsts, seconds = [], []
    for first, second in pairs:
        firsts.append(first)
        seconds.append(second)
    return [firsts, seconds]


STAGE_PREFIX = "stage_"
STAGED = ("spans", "hops", "messages", "flows", "edge_buckets", "edge_rollups",
          "flow_latency_buckets", "span_links", "lag_current", "lag_samples", "lag_groups",
          "counters")
SPAN_ROW = (*SPAN_COLUMNS, "flow_id")
MESSAGE_ROW = (*MESSAGE_COLUMNS, "flow_id", "message_id")
LINK_COLUMNS = ("linked_trace_id", "linked_span_id", "trace_id", "span_id")
LATENCY_COLUMNS = ("bucket_start", "flow_type", "count", "latency")
SPAN_INSERT = (staged_insert("spans", SPAN_ROW)
               + " ON CONFLICT DO NOTHING RETURNING trace_id, span_id")
HOP_INSERT = staged_insert("hops", HOP_COLUMNS) + " ON CONFLICT DO NOTHING RETURNING hop_key"
MESSAGE_INSERT = (staged_insert("messages", MESSAGE_ROW)
                  + ' ON CONFLICT DO NOTHING RETURNING topic, partition, "offset"')
LINK_INSERT = staged_insert("span_links", LINK_COLUMNS) + " ON CONFLICT DO NOTHING"
FLOW_MERGE = (
    staged_insert("flows", FLOW_COLUMNS) + " ON CONFLICT (flow_id) DO UPDATE SET "
    "started_ns = LEAST(flows.started_ns, EXCLUDED.started_ns), "
    "last_ns = GREATEST(flows.last_ns, EXCLUDED.last_ns), hops = flows.hops + EXCLUDED.hops, "
    "retries = flows.retries + EXCLUDED.retries, errors = flows.errors + EXCLUDED.errors, "
    "flags = flows.flags | EXCLUDED.flags, "
    "services = flowscope_names_merge(flows.services, EXCLUDED.services, NULL), "
    "topics = flowscope_names_merge(flows.topics, EXCLUDED.topics, NULL), "
    f"trace_ids = flowscope_names_merge(flows.trace_ids, EXCLUDED.trace_ids, {FLOW_TRACE_IDS})")
EDGE_BUCKETS_MERGE = (staged_insert("edge_buckets", EDGE_COLUMNS)
                      + " ON CONFLICT (bucket_start, source, target) DO UPDATE SET "
                      + EDGE_MERGE.format(t="edge_buckets"))
EDGE_ROLLUPS_MERGE = (staged_insert("edge_rollups", (*EDGE_COLUMNS, "first_bucket"))
                      + " ON CONFLICT (bucket_start, source, target) DO UPDATE SET "
                      + EDGE_MERGE.format(t="edge_rollups")
                      + ", first_bucket = LEAST(edge_rollups.first_bucket, "
                        "EXCLUDED.first_bucket)")
LATENCY_MERGE = (staged_insert("flow_latency_buckets", LATENCY_COLUMNS)
                 + " ON CONFLICT (bucket_start, flow_type) DO UPDATE SET "
                   "count = flow_latency_buckets.count + EXCLUDED.count, latency = "
                   "flowscope_histogram_merge(flow_latency_buckets.latency, EXCLUDED.latency)")
PAIRS = "(SELECT * FROM unnest(%s::text[], %s::text[]))"


class Staging:
    """The session's staging tables, one per table bulk writes go to (emptied at every
    commit), and their columns' types as the catalog has them: a binary COPY must name each
    column's exact type, and reading them keeps them the tables' own."""

    def __init__(self, db: psycopg.Connection) -> None:
        db.execute("".join(f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_PREFIX}{table} (LIKE "
                           f"{table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;"
                           for table in STAGED))
        self.types: dict[str, dict[str, int]] = {}
        for table in STAGED:
            described = db.execute(f"SELECT * FROM {STAGE_PREFIX}{table} LIMIT 0").description
            self.types[table] = {column.name: column.type_code for column in described or ()}

    def copy(self, cursor: psycopg.Cursor, used: set[str], table: str,
             columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        """Copy rows into the table's staging table, for staged_insert. A commit empties it;
        a second use in one transaction (used: those used so far) deletes the first's rows
        (TRUNCATE would give the table a new file each time: costly at a few transactions a
        second)."""
        if table in used:
            cursor.execute(f"DELETE FROM {STAGE_PREFIX}{table}")
        used.add(table)
        names = ", ".join(f'"{c}"' for c in columns)
        types = self.types[table]
        with cursor.copy(f"COPY {STAGE_PREFIX}{table} ({names}) FROM STDIN (FORMAT BINARY)"
                         ) as copy:
            copy.set_types([types[c] for c in columns])
            for row in rows:
                copy.write_row(clean(row))


class PostgresWrites:
    """SpanWrites on one PostgreSQL connection, inside the transaction the store opened."""

    def __init__(self, cursor: psycopg.Cursor, rollup_s: int, partitions: Partitions,
                 staging: Staging) -> None:
        self.cursor, self.rollup_s, self.partitions = cursor, rollup_s, partitions
        self.staging = staging
        self.now_s = time.time()
        self.staged: set[str] = set()  # staging tables used in this transaction

    def stage(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[object]]
              ) -> None:
        """Copy rows into the table's staging table, for staged_insert."""
        self.staging.copy(self.cursor, self.staged, table, columns, rows)

    def known_flows(self, trace_ids: set[str]) -> dict[str, str]:
        """The correlation ID already stored for each of these traces."""
        if not trace_ids:
            return {}
        return dict(self.cursor.execute(
            "SELECT DISTINCT ON (trace_id) trace_id, flow_id FROM spans "
            "WHERE trace_id = ANY(%s) AND flow_id <> trace_id", (sorted(trace_ids),)))

    def adopt_flows(self, by_trace: Mapping[str, str]) -> list[tuple[str, FlowTotals]]:
        """Move flows stored under a trace ID into the trace's correlated flow."""
        moving = {t: c for t, c in by_trace.items() if t != c}
        if not moving:
            return []
        rows = self.cursor.execute(f"DELETE FROM flows WHERE flow_id = ANY(%s) RETURNING "
                                   f"{FLOW_FIELDS}", (sorted(moving),)).fetchall()
        if not rows:
            return []
        moved = {row[0]: moving[row[0]] for row in rows}
        mapping = pair_arrays(moved.items())
        # A flow keyed by a trace ID holds spans of that trace only (store.records flow_of).
        self.cursor.execute("UPDATE spans s SET flow_id = m.flow FROM unnest(%s::text[], "
                            "%s::text[]) m(trace, flow) WHERE s.trace_id = m.trace AND "
                            "s.flow_id = m.trace", mapping)
        for table in ("hops", "messages"):
            self.cursor.execute(f"UPDATE {table} t SET flow_id = m.flow FROM unnest(%s::text[], "
                                "%s::text[]) m(trace, flow) WHERE t.flow_id = m.trace", mapping)
        return [(moved[row[0]], flow_totals(row)) for row in rows]

    def insert_spans(self, records: Sequence[SpanRecord], flow_ids: Sequence[str]
                     ) -> list[SpanRecord]:
        """Store the spans not stored yet; those that were new."""
        if not records:
            return []
        rows = []
        for record, flow_id in zip(records, flow_ids, strict=True):
            values = list(SPAN_VALUES(record))
            values[LINKS_AT] = encode_links(record.links)
            values.append(flow_id)
            rows.append(values)
        self.partitions.ensure(self.cursor, SPANS, (r.end_ns for r in records), self.now_s)
        self.stage("spans", SPAN_ROW, rows)
        new = set(self.cursor.execute(SPAN_INSERT))
        return [r for r in records if r.key in new]

    def spans(self, keys: set[SpanKey]) -> dict[SpanKey, tuple[SpanRecord, str]]:
        """Stored spans by key, with their flows."""
        if not keys:
            return {}
        found = {}
        for row in self.cursor.execute(
                f"SELECT {SPAN_FIELDS}, flow_id FROM spans WHERE (trace_id, span_id) IN "
                f"{PAIRS}", pair_arrays(sorted(keys))):
            record = span_record(row[:-1])
            found[record.key] = (record, row[-1])
        return found

    def sends_by_message_id(self, message_ids: set[str]) -> dict[str, tuple[SpanRecord, str]]:
        """A stored send span (with its flow) for each message id that has one."""
        found: dict[str, tuple[SpanRecord, str]] = {}
        if not message_ids:
            return found
        for row in self.cursor.execute(
                f"SELECT {SPAN_FIELDS}, flow_id FROM spans WHERE message_id = ANY(%s) "
                f"AND operation IN {sql_list(SENDS)}", (sorted(message_ids),)):
            record = span_record(row[:-1])
            found.setdefault(str(record.message_id), (record, row[-1]))
        return found

    def consumes_of(self, parents: set[SpanKey]) -> list[tuple[SpanKey, SpanKey]]:
        """(parent, consume span) of stored consume spans with one of these parents."""
        if not parents:
            return []
        return [((t, p), (t, s)) for t, p, s in self.cursor.execute(
            "SELECT s.trace_id, s.parent_span_id, s.span_id FROM spans s JOIN "
            "unnest(%s::text[], %s::text[]) v(t, p) ON s.trace_id = v.t AND "
            "s.parent_span_id = v.p WHERE s.parent_span_id IS NOT NULL AND "
            f"s.operation IN {sql_list(CONSUMES)}", pair_arrays(sorted(parents)))]

    def waiting(self) -> tuple[bool, bool, bool]:
        """(any hop waiting for its send, any hop seen through a batch only, any link
        waiting for its span)."""
        row = self.cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM hops WHERE producer_span_id IS NULL), "
            "EXISTS (SELECT 1 FROM hops WHERE consumer_is_batch = 1), "
            "EXISTS (SELECT 1 FROM span_links)").fetchone()
        assert row is not None
        return bool(row[0]), bool(row[1]), bool(row[2])

    def waiting_hops(self, message_ids: set[str]) -> list[tuple[str, SpanKey]]:
        """(message id, consume span) of hops waiting for their send."""
        if not message_ids:
            return []
        return [(m, (t, s)) for m, t, s in self.cursor.execute(
            "SELECT message_id, consumer_trace_id, consumer_span_id FROM hops WHERE "
            "message_id = ANY(%s) AND producer_span_id IS NULL", (sorted(message_ids),))]

    def add_links(self, links: Sequence[tuple[SpanKey, SpanKey]]) -> None:
        """Keep links until their span arrives."""
        if links:
            self.stage("span_links", LINK_COLUMNS,
                       ((*linked, *consume) for linked, consume in links))
            self.cursor.execute(LINK_INSERT)

    def take_links(self, linked: set[SpanKey]) -> list[tuple[SpanKey, SpanKey]]:
        """Remove and return the links waiting for these spans."""
        if not linked:
            return []
        return [((lt, ls), (t, s)) for lt, ls, t, s in self.cursor.execute(
            f"DELETE FROM span_links WHERE (linked_trace_id, linked_span_id) IN {PAIRS} "
            "RETURNING linked_trace_id, linked_span_id, trace_id, span_id",
            pair_arrays(sorted(linked))).fetchall()]

    def delete_hops(self, keys: set[str], *, batch_only: bool = False) -> set[str]:
        """Delete hops by key; the keys deleted."""
        if not keys:
            return set()
        only = " AND consumer_is_batch = 1" if batch_only else ""
        return {k for (k,) in self.cursor.execute(
            f"DELETE FROM hops WHERE hop_key = ANY(%s){only} RETURNING hop_key",
            (sorted(keys),)).fetchall()}

    def insert_hops(self, hops: Sequence[Hop]) -> list[Hop]:
        """Store the hops whose key is not stored yet (the first of a key); those stored."""
        by_key: dict[str, Hop] = {}
        for hop in hops:
            by_key.setdefault(hop.key, hop)
        if not by_key:
            return []
        self.partitions.ensure(self.cursor, HOPS,
                               (h.consume_end_ns for h in by_key.values()), self.now_s)
        self.stage("hops", HOP_COLUMNS, map(hop_values, by_key.values()))
        stored = {k for (k,) in self.cursor.execute(HOP_INSERT)}
        return [hop for key, hop in by_key.items() if key in stored]

    def merge_flows(self, totals: Mapping[str, FlowTotals]) -> dict[str, FlowTotals]:
        """Add totals into the stored flows (merged by the database); the stored totals
        before, read under a row lock."""
        if not totals:
            return {}
        before = {row[0]: flow_totals(row) for row in self.cursor.execute(
            f"SELECT {FLOW_FIELDS} FROM flows WHERE flow_id = ANY(%s) ORDER BY flow_id "
            "FOR UPDATE", (sorted(totals),))}
        self.stage("flows", FLOW_COLUMNS, (
            (flow_id, delta.started_ns, delta.last_ns, delta.hops, delta.retries, delta.errors,
             int(delta.flags), names_json(delta.services), names_json(delta.topics),
             names_json(set(delta.kept_trace_ids())))
            for flow_id, delta in sorted(totals.items())))
        self.cursor.execute(FLOW_MERGE)
        return before

    def merge_edges(self, totals: Mapping[EdgeKey, EdgeTotals]) -> None:
        """Add totals into the stored edge buckets, and into their rollups."""
        if not totals:
            return
        rollups: dict[EdgeKey, tuple[EdgeTotals, int]] = {}
        for key, delta in totals.items():
            rollup = (key[0] // self.rollup_s * self.rollup_s, *key[1:])
            merged, first = rollups.get(rollup) or (EdgeTotals(), key[0])
            merged.merge(delta)
            rollups[rollup] = (merged, min(first, key[0]))
        self.stage("edge_buckets", EDGE_COLUMNS,
                   (_edge_values(key, delta) for key, delta in sorted(totals.items())))
        self.cursor.execute(EDGE_BUCKETS_MERGE)
        self.stage("edge_rollups", (*EDGE_COLUMNS, "first_bucket"),
                   ((*_edge_values(key, delta), first)
                    for key, (delta, first) in sorted(rollups.items())))
        self.cursor.execute(EDGE_ROLLUPS_MERGE)

    def merge_flow_latency(self, latencies: Mapping[tuple[int, str], Histogram]) -> None:
        """Add completed flows' latencies into their buckets."""
        if latencies:
            self.stage("flow_latency_buckets", LATENCY_COLUMNS,
                       ((bucket, flow_type, histogram.total, histogram.to_json())
                        for (bucket, flow_type), histogram in sorted(latencies.items())))
            self.cursor.execute(LATENCY_MERGE)

    def insert_messages(self, records: Sequence[MessageRecord],
                        flow_ids: Sequence[str | None]) -> list[MessageRecord]:
        """Store tapped messages not stored yet; those that were new (the first of any
        coordinates given twice)."""
        if not records:
            return []
        self.partitions.ensure(self.cursor, MESSAGES, (r.timestamp_ms for r in records),
                               self.now_s)
        self.stage("messages", MESSAGE_ROW,
                   ((*MESSAGE_VALUES(record), flow_id, record.message_id)
                    for record, flow_id in zip(records, flow_ids, strict=True)))
        new = set(self.cursor.execute(MESSAGE_INSERT))
        first = []
        for record in records:
            coordinates = (record.topic, record.partition, record.offset)
            if coordinates in new:
                new.discard(coordinates)
                first.append(record)
        return first


def _edge_values(key: EdgeKey, delta: EdgeTotals) -> tuple[object, ...]:
    bucket, source, source_kind, target, target_kind = key
    return (bucket, source, source_kind, target, target_kind, delta.count, delta.errors,
            delta.retries, delta.latency.to_json(), delta.processing.to_json())
