"""The SQLite backend's side of flow derivation (store.contract.SpanWrites): set-based lookups
and idempotent writes inside one transaction, chunked to stay under SQLite's parameter limit.
No rule of what a hop or a flow is lives here."""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from store.histogram import Histogram
from store.records import (
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

SPAN_FIELDS = ", ".join(f'"{c}"' for c in SPAN_COLUMNS)
SPAN_INSERT = (f"INSERT INTO spans ({SPAN_FIELDS}, flow_id) "
               f"VALUES ({', '.join('?' * (len(SPAN_COLUMNS) + 1))})")
SPAN_VALUES = operator.attrgetter(*SPAN_COLUMNS)
LINKS_AT = SPAN_COLUMNS.index("links")
MESSAGE_VALUES = operator.attrgetter(*MESSAGE_COLUMNS)
MESSAGE_INSERT = (f"INSERT OR IGNORE INTO messages VALUES "
                  f"({','.join('?' * (len(MESSAGE_COLUMNS) + 2))})")
HOP_FIELDS = ", ".join(f'"{c}"' for c in HOP_COLUMNS)
HOP_INSERT = f"INSERT INTO hops ({HOP_FIELDS}) VALUES ({', '.join('?' * len(HOP_COLUMNS))})"
CHUNK = 400  # rows per statement: 2 parameters each stays under SQLite's 32,766
T = TypeVar("T")


class SqliteWrites:
    """SpanWrites on one SQLite connection, inside the transaction the store opened."""

    def __init__(self, db: sqlite3.Connection, rollup_s: int) -> None:
        self.db, self.rollup_s = db, rollup_s

    def known_flows(self, trace_ids: set[str]) -> dict[str, str]:
        """The correlation ID already stored for each of these traces."""
        known: dict[str, str] = {}
        for chunk in _chunks(sorted(trace_ids)):
            known.update(self.db.execute(
                f"SELECT trace_id, flow_id FROM spans WHERE trace_id IN ({_marks(chunk)}) "
                "AND flow_id != trace_id GROUP BY trace_id", chunk).fetchall())
        return known

    def adopt_flows(self, by_trace: Mapping[str, str]) -> list[tuple[str, FlowTotals]]:
        """Move flows stored under a trace ID into the trace's correlated flow."""
        adopted = []
        for chunk in _chunks(sorted(by_trace)):
            for row in self.db.execute(f"SELECT {FLOW_FIELDS} FROM flows WHERE flow_id IN "
                                       f"({_marks(chunk)})", chunk).fetchall():
                trace_id, correlation_id = row[0], by_trace[row[0]]
                if trace_id == correlation_id:
                    continue
                # A flow keyed by a trace ID holds spans of that trace only (store.records
                # flow_of): found by the primary key.
                self.db.execute("UPDATE spans SET flow_id=? WHERE trace_id=? AND flow_id=?",
                                (correlation_id, trace_id, trace_id))
                for table in ("hops", "messages"):
                    self.db.execute(f"UPDATE {table} SET flow_id=? WHERE flow_id=?",
                                    (correlation_id, trace_id))
                self.db.execute("DELETE FROM flows WHERE flow_id=?", (trace_id,))
                adopted.append((correlation_id, flow_totals(row)))
        return adopted

    def insert_spans(self, records: Sequence[SpanRecord], flow_ids: Sequence[str]
                     ) -> list[SpanRecord]:
        """Store the spans not stored yet; those that were new."""
        rows = []
        for record, flow_id in zip(records, flow_ids, strict=True):
            values = list(SPAN_VALUES(record))
            values[LINKS_AT] = encode_links(record.links)
            values.append(flow_id)
            rows.append(values)
        # Replays are rare: insert everything at once, and only when a span turns out to be
        # stored already, roll back and insert the new ones.
        self.db.execute("SAVEPOINT fresh")
        try:
            self.db.executemany(SPAN_INSERT, rows)
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK TO fresh")
            self.db.execute("RELEASE fresh")
            stored = self._stored_keys([r.key for r in records])
            fresh = [i for i, r in enumerate(records) if r.key not in stored]
            self.db.executemany(SPAN_INSERT, [rows[i] for i in fresh])
            return [records[i] for i in fresh]
        self.db.execute("RELEASE fresh")
        return list(records)

    def _stored_keys(self, keys: list[SpanKey]) -> set[SpanKey]:
        stored: set[SpanKey] = set()
        for chunk in _chunks(keys):
            stored.update(self.db.execute(
                f"SELECT trace_id, span_id FROM spans WHERE (trace_id, span_id) IN "
                f"(VALUES {_pairs(chunk)})", _flat(chunk)).fetchall())
        return stored

    def spans(self, keys: set[SpanKey]) -> dict[SpanKey, tuple[SpanRecord, str]]:
        """Stored spans by key, with their flows."""
        found = {}
        for chunk in _chunks(sorted(keys)):
            for row in self.db.execute(
                    f"SELECT {SPAN_FIELDS}, flow_id FROM spans WHERE (trace_id, span_id) IN "
                    f"(VALUES {_pairs(chunk)})", _flat(chunk)):
                record = span_record(row[:-1])
                found[record.key] = (record, row[-1])
        return found

    def sends_by_message_id(self, message_ids: set[str]) -> dict[str, tuple[SpanRecord, str]]:
        """A stored send span (with its flow) for each message id that has one."""
        found: dict[str, tuple[SpanRecord, str]] = {}
        for chunk in _chunks(sorted(message_ids)):
            for row in self.db.execute(
                    f"SELECT {SPAN_FIELDS}, flow_id FROM spans WHERE message_id IN "
                    f"({_marks(chunk)}) AND operation IN {sql_list(SENDS)}", chunk):
                record = span_record(row[:-1])
                found.setdefault(str(record.message_id), (record, row[-1]))
        return found

    def consumes_of(self, parents: set[SpanKey]) -> list[tuple[SpanKey, SpanKey]]:
        """(parent, consume span) of stored consume spans with one of these parents."""
        found = []
        for chunk in _chunks(sorted(parents)):
            found += [((t, p), (t, s)) for t, p, s in self.db.execute(
                consumes_of_sql(len(chunk)), _flat(chunk))]
        return found

    def waiting(self) -> tuple[bool, bool, bool]:
        """(any hop waiting for its send, any hop seen through a batch only, any link
        waiting for its span): three probes of small partial indexes."""
        row = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM hops WHERE producer_span_id IS NULL), "
            "EXISTS (SELECT 1 FROM hops WHERE consumer_is_batch = 1), "
            "EXISTS (SELECT 1 FROM span_links)").fetchone()
        return bool(row[0]), bool(row[1]), bool(row[2])

    def waiting_hops(self, message_ids: set[str]) -> list[tuple[str, SpanKey]]:
        """(message id, consume span) of hops waiting for their send."""
        found = []
        for chunk in _chunks(sorted(message_ids)):
            found += [(m, (t, s)) for m, t, s in self.db.execute(
                "SELECT message_id, consumer_trace_id, consumer_span_id FROM hops WHERE "
                f"message_id IN ({_marks(chunk)}) AND producer_span_id IS NULL", chunk)]
        return found

    def add_links(self, links: Sequence[tuple[SpanKey, SpanKey]]) -> None:
        """Keep links until their span arrives."""
        self.db.executemany("INSERT OR IGNORE INTO span_links VALUES (?,?,?,?)",
                            [(*linked, *consume) for linked, consume in links])

    def take_links(self, linked: set[SpanKey]) -> list[tuple[SpanKey, SpanKey]]:
        """Remove and return the links waiting for these spans."""
        found = []
        for chunk in _chunks(sorted(linked)):
            found += [((lt, ls), (t, s)) for lt, ls, t, s in self.db.execute(
                "DELETE FROM span_links WHERE (linked_trace_id, linked_span_id) IN "
                f"(VALUES {_pairs(chunk)}) RETURNING linked_trace_id, linked_span_id, "
                "trace_id, span_id", _flat(chunk)).fetchall()]
        return found

    def delete_hops(self, keys: set[str], *, batch_only: bool = False) -> set[str]:
        """Delete hops by key; the keys deleted."""
        only = " AND consumer_is_batch = 1" if batch_only else ""
        deleted: set[str] = set()
        for chunk in _chunks(sorted(keys)):
            deleted.update(k for (k,) in self.db.execute(
                f"DELETE FROM hops WHERE hop_key IN ({_marks(chunk)}){only} RETURNING hop_key",
                chunk).fetchall())
        return deleted

    def insert_hops(self, hops: Sequence[Hop]) -> list[Hop]:
        """Store the hops whose key is not stored yet (the first of a key); those stored."""
        by_key: dict[str, Hop] = {}
        for hop in hops:
            by_key.setdefault(hop.key, hop)
        # Most hops are new: insert them all, and only when one is stored already (a message
        # redelivered to the same service), roll back and insert those that are not.
        self.db.execute("SAVEPOINT hops")
        try:
            self.db.executemany(HOP_INSERT, [hop_values(hop) for hop in by_key.values()])
        except sqlite3.IntegrityError:
            self.db.execute("ROLLBACK TO hops")
            self.db.execute("RELEASE hops")
            stored: set[str] = set()
            for chunk in _chunks(list(by_key)):
                stored.update(k for (k,) in self.db.execute(
                    f"SELECT hop_key FROM hops WHERE hop_key IN ({_marks(chunk)})", chunk))
            new = [hop for key, hop in by_key.items() if key not in stored]
            self.db.executemany(HOP_INSERT, [hop_values(hop) for hop in new])
            return new
        self.db.execute("RELEASE hops")
        return list(by_key.values())

    def merge_flows(self, totals: Mapping[str, FlowTotals]) -> dict[str, FlowTotals]:
        """Add totals into the stored flows; the stored totals before."""
        before: dict[str, FlowTotals] = {}
        for chunk in _chunks(list(totals)):
            for row in self.db.execute(f"SELECT {FLOW_FIELDS} FROM flows WHERE flow_id IN "
                                       f"({_marks(chunk)})", chunk):
                before[row[0]] = flow_totals(row)
        rows = []
        for flow_id, delta in totals.items():
            merged = FlowTotals(delta.started_ns, delta.last_ns)
            merged.merge(delta)
            if flow_id in before:
                merged.merge(before[flow_id])
            rows.append((flow_id, merged.started_ns, merged.last_ns, merged.hops,
                         merged.retries, merged.errors, int(merged.flags),
                         names_json(merged.services), names_json(merged.topics),
                         json.dumps(merged.kept_trace_ids())))
        self.db.executemany("INSERT OR REPLACE INTO flows VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        return before

    def merge_edges(self, totals: Mapping[EdgeKey, EdgeTotals]) -> None:
        """Add totals into the stored edge buckets, and into their rollups."""
        self._merge_edge_rows("edge_buckets",
                              {key: (delta, key[0]) for key, delta in totals.items()})
        rollups: dict[EdgeKey, tuple[EdgeTotals, int]] = {}
        for key, delta in totals.items():
            rollup = (key[0] // self.rollup_s * self.rollup_s, *key[1:])
            merged, first = rollups.get(rollup) or (EdgeTotals(), key[0])
            merged.merge(delta)
            rollups[rollup] = (merged, min(first, key[0]))
        self._merge_edge_rows("edge_rollups", rollups)

    def _merge_edge_rows(self, table: str, totals: Mapping[EdgeKey, tuple[EdgeTotals, int]]
                         ) -> None:
        """Add edge totals, each with the first edge bucket it holds, into edge_buckets or
        edge_rollups (which keeps that first bucket)."""
        rollups = table == "edge_rollups"
        first_column = ", first_bucket" if rollups else ""
        rows = []
        for (bucket, source, source_kind, target, target_kind), (delta, first) in \
                totals.items():
            merged = EdgeTotals()
            merged.merge(delta)
            row = self.db.execute(
                f"SELECT count, errors, retries, latency, processing{first_column} FROM "
                f"{table} WHERE bucket_start=? AND source=? AND target=?",
                (bucket, source, target)).fetchone()
            if row is not None:
                merged.merge(EdgeTotals(row[0], row[1], row[2], Histogram.from_json(row[3]),
                                        Histogram.from_json(row[4])))
            values = (bucket, source, source_kind, target, target_kind, merged.count,
                      merged.errors, merged.retries, merged.latency.to_json(),
                      merged.processing.to_json())
            if rollups:
                values += (first if row is None else min(first, row[5]),)
            rows.append(values)
        marks = ",".join("?" * (11 if rollups else 10))
        self.db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)

    def merge_flow_latency(self, latencies: Mapping[tuple[int, str], Histogram]) -> None:
        """Add completed flows' latencies into their buckets."""
        for (bucket, flow_type), histogram in latencies.items():
            merged = Histogram().merge(histogram)
            row = self.db.execute("SELECT latency FROM flow_latency_buckets WHERE "
                                  "bucket_start=? AND flow_type=?", (bucket, flow_type)).fetchone()
            if row is not None:
                merged.merge(Histogram.from_json(row[0]))
            self.db.execute("INSERT OR REPLACE INTO flow_latency_buckets VALUES (?,?,?,?)",
                            (bucket, flow_type, merged.total, merged.to_json()))

    def insert_messages(self, records: Sequence[MessageRecord],
                        flow_ids: Sequence[str | None]) -> list[MessageRecord]:
        """Store tapped messages not stored yet; those that were new."""
        new = []
        for record, flow_id in zip(records, flow_ids, strict=True):
            if self.db.execute(MESSAGE_INSERT, (*MESSAGE_VALUES(record), flow_id,
                                                record.message_id)).rowcount:
                new.append(record)
        return new


def consumes_of_sql(parents: int) -> str:
    """The consume spans of `parents` (trace, span) pairs, by the partial index of consumes
    (without it, SQLite reads every span of the trace)."""
    return ("SELECT s.trace_id, s.parent_span_id, s.span_id FROM (VALUES "
            f"{','.join(['(?,?)'] * parents)}) v JOIN spans s INDEXED BY consumes_by_parent "
            "ON s.trace_id = v.column1 AND s.parent_span_id = v.column2 "
            f"WHERE s.parent_span_id IS NOT NULL AND s.operation IN {sql_list(CONSUMES)}")


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def _marks(chunk: Sequence[object]) -> str:
    return ",".join("?" * len(chunk))


def _pairs(chunk: Sequence[object]) -> str:
    return ",".join(["(?,?)"] * len(chunk))


def _flat(pairs: Iterable[tuple[str, str]]) -> list[str]:
    return [v for pair in pairs for v in pair]
