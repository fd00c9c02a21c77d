"""The SQLite backend's own behaviour, beyond the contract suite (test_store.py): what a file
that is not a Flowscope store gets, and the migration of an older schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from store.contract import StoreError
from store.records import GroupLag, LagRow
from store.sql import readers
from store.sql.readers import PENDING_WHERE
from store.sqlite.backend import SqliteStore
from store.sqlite.schema import ADDED_COLUMNS, SCHEMA_VERSION
from store.sqlite.writes import consumes_of_sql
from store.vocabulary import KAFKA, FlowRules, GroupStatus, PartitionStatus

RULES = FlowRules(completed=("*done",), dead_letter=("*.dlq",), compensated=("*cancelled",),
                  stuck_after_s=60)


def test_opening_a_missing_or_foreign_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        SqliteStore(tmp_path / "missing.db", RULES, readonly=True)
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE meta (key TEXT, value TEXT)").connection \
        .commit()
    with pytest.raises(StoreError, match="schema version none"):
        SqliteStore(foreign, RULES, readonly=True)


def test_a_version_1_store_is_migrated_by_the_writer_and_refused_by_a_reader(
        tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SqliteStore(path, RULES).close()
    with sqlite3.connect(path) as db:  # as the previous version left it
        db.execute("DROP TABLE flow_latency_buckets")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(StoreError, match="flowscope collect"):
        SqliteStore(path, RULES, readonly=True)
    SqliteStore(path, RULES).close()  # the collector migrates it
    reader = SqliteStore(path, RULES, readonly=True)
    assert reader.flow_latency(0) == []
    reader.close()


# Version 4's lag tables, keyed without a system; every row was a Kafka partition or group.
V4_LAG_TABLES = """
CREATE TABLE lag_current ("group" TEXT NOT NULL, topic TEXT NOT NULL,
    partition INTEGER NOT NULL, committed INTEGER, "end" INTEGER, lag INTEGER,
    lag_seconds REAL, status TEXT NOT NULL, at_s REAL NOT NULL,
    PRIMARY KEY ("group", topic, partition)) WITHOUT ROWID;
CREATE TABLE lag_samples ("group" TEXT NOT NULL, topic TEXT NOT NULL,
    partition INTEGER NOT NULL, committed INTEGER, "end" INTEGER, lag INTEGER,
    lag_seconds REAL, status TEXT NOT NULL, at_s REAL NOT NULL,
    PRIMARY KEY ("group", at_s, topic, partition)) WITHOUT ROWID;
CREATE INDEX lag_samples_by_time ON lag_samples (at_s);
CREATE TABLE lag_groups ("group" TEXT PRIMARY KEY, status TEXT NOT NULL,
    worst_partition TEXT, lag INTEGER NOT NULL, lag_seconds REAL, consume_rate REAL,
    lag_rate REAL, catch_up_s REAL, at_s REAL NOT NULL) WITHOUT ROWID;
INSERT INTO lag_current VALUES ('g', 't', 3, 10, 15, 5, 1.5, 'OK', 100.0);
INSERT INTO lag_samples VALUES ('g', 't', 3, 10, 15, 5, 1.5, 'OK', 100.0);
INSERT INTO lag_groups VALUES ('g', 'OK', 't/3', 5, 1.5, 2.0, 0.0, NULL, 100.0);
"""


def test_a_version_4_store_keeps_its_lag_rows_as_kafka_s_and_takes_queues(
        tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SqliteStore(path, RULES).close()
    with sqlite3.connect(path) as db:  # as version 4 left it
        for table, column, _ in ADDED_COLUMNS:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.executescript("DROP TABLE lag_current; DROP TABLE lag_samples; "
                         "DROP TABLE lag_groups;" + V4_LAG_TABLES)
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    db.close()
    store = SqliteStore(path, RULES)
    rows, groups = store.lag()
    assert rows == [LagRow("g", "t", 3, 10, 15, 5, 1.5, PartitionStatus.OK, 100.0, KAFKA)]
    assert [(g.group, g.system, g.lag) for g in groups] == [("g", KAFKA, 5)]
    assert [(r.group, r.system) for r in store.lag_history(0)] == [("g", KAFKA)]
    # A queue of the same name is another row: no partition, its own system.
    queue = LagRow("g", "amq.default", None, None, None, 7, 2.0, PartitionStatus.WARN, 101.0,
                   "rabbitmq", ready=5, unacknowledged=2, consumers=1)
    store.write_lag([queue], [GroupLag("g", GroupStatus.WARN, None, 7, 2.0, None, None, None,
                                       101.0, "rabbitmq")])
    rows, groups = store.lag()
    assert queue in rows
    assert len(rows) == 2
    assert {(g.system, g.lag) for g in groups} == {(KAFKA, 5), ("rabbitmq", 7)}
    for table, column, _ in ADDED_COLUMNS:
        assert column in {r[1] for r in store.db.execute(f"PRAGMA table_info({table})")}
    assert store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone()[0] == str(SCHEMA_VERSION)
    assert store.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'lag_samples_by_time'"
                            ).fetchone()
    store.close()


def test_a_version_3_store_gets_version_4_s_indexes_when_the_writer_opens_it(
        tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SqliteStore(path, RULES).close()
    with sqlite3.connect(path) as db:  # as version 3 left it
        db.execute("DROP INDEX hops_from_batches")
        db.execute("DROP INDEX sends_by_flow")
        db.execute("DROP INDEX failures_by_flow")
        db.execute("CREATE INDEX spans_by_flow ON spans (flow_id)")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    db.close()
    SqliteStore(path, RULES).close()
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        indexes = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    db.close()
    assert int(version[0]) == SCHEMA_VERSION
    assert {"hops_from_batches", "sends_by_flow", "failures_by_flow"} <= indexes
    assert "spans_by_flow" not in indexes


def test_sqlite_uses_its_partial_indexes_for_the_write_paths_lookups(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db", RULES)
    with store.write_batch() as writes:
        plans = {
            "sends by message id": "EXPLAIN QUERY PLAN SELECT * FROM spans WHERE message_id "
                                   "IN (?) AND operation IN ('send', 'create')",
            "consumes by parent": f"EXPLAIN QUERY PLAN {consumes_of_sql(2)}",
            "spans by key": "EXPLAIN QUERY PLAN SELECT * FROM spans WHERE (trace_id, span_id) "
                            "IN (VALUES (?,?))",
            "batch hops": "EXPLAIN QUERY PLAN SELECT EXISTS (SELECT 1 FROM hops WHERE "
                          "consumer_is_batch = 1)",
            "pending sends": f"EXPLAIN QUERY PLAN SELECT 1 {PENDING_WHERE}",
            "failed steps": "EXPLAIN QUERY PLAN SELECT * FROM spans WHERE flow_id = ? AND "
                            "error = 1 ORDER BY start_ns",
            "adoption": "EXPLAIN QUERY PLAN UPDATE spans SET flow_id = ? WHERE trace_id = ? "
                        "AND flow_id = ?",
        }
        details = {name: " ".join(str(row[-1]) for row in writes.db.execute(
            sql, (1,) * sql.count("?"))) for name, sql in plans.items()}
    store.close()
    assert "sends_by_message" in details["sends by message id"]
    assert "consumes_by_parent" in details["consumes by parent"]
    assert "hops_from_batches" in details["batch hops"]
    assert "PRIMARY KEY (trace_id=? AND span_id=?)" in details["spans by key"]
    assert "sends_by_flow" in details["pending sends"]
    assert "failures_by_flow" in details["failed steps"]
    assert "TEMP B-TREE" not in details["failed steps"]  # read in order from the index
    assert "PRIMARY KEY (trace_id=?)" in details["adoption"]



def test_a_migrated_store_reads_its_old_edges_from_the_buckets_and_new_ones_from_rollups(
        tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path, RULES)
    store.close()
    with sqlite3.connect(path) as db:  # a version 3 store with an edge in it, no rollups
        db.execute("DROP TABLE edge_rollups")
        db.execute("DELETE FROM meta WHERE key IN ('rollup_s', 'rollups_since')")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        db.execute("INSERT INTO edge_buckets VALUES (1800000010, 'a', 'service', 't', "
                   "'topic', 4, 1, 0, NULL, NULL)")
    db.close()
    store = SqliteStore(path, RULES)  # the collector migrates it
    assert readers.rollup_meta(store.db) == (300, 1800000300)  # the next rollup bucket
    assert [(e.source, e.count, e.errors) for e in store.topology(0).edges] == [("a", 4, 1)]
    store.close()
