"""The embedded store: SQLite in WAL mode, one writer (the collector), many readers.

It persists and queries only: flow derivation (collectors/flows) writes through write_batch()
(store/sqlite/writes.py); the reads are in readers.py and summaries.py. Writes are idempotent,
so replays from Kafka create no duplicates.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from store.contract import (
    SEND_SPAN_SETTLE_NS,
    ComponentRow,
    PropagationRow,
    StoreError,
    StoreUnavailable,
)
from store.records import GROUP_LAG_COLUMNS, LAG_COLUMNS, GroupLag, LagRow
from store.sql import readers
from store.sql.reads import SqlReads
from store.sql.rows import rollup_width
from store.sqlite.schema import (
    ADDED_COLUMNS,
    MIGRATES_FROM,
    REKEYED,
    SCHEMA,
    SCHEMA_VERSION,
)
from store.sqlite.writes import SqliteWrites
from store.vocabulary import (
    KAFKA,
    NS_PER_MS,
    NS_PER_S,
    SENDS,
    FlowRules,
    sql_list,
)

LAG_MARKS = ",".join("?" * len(LAG_COLUMNS))
GROUP_MARKS = ",".join("?" * len(GROUP_LAG_COLUMNS))


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


class SqliteStore(SqlReads):
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
        if readonly:
            self._check_version()
        else:
            self._migrate()
        self.rollup = readers.rollup_meta(self.db)  # fixed once the writer has opened it

    def _migrate(self) -> None:
        self._check_is_ours()
        with self.db:
            version = self._stored_version()
            if version is not None and version != SCHEMA_VERSION and \
                    version not in MIGRATES_FROM:
                raise StoreError(f"{self.path} has schema version {version}; this Flowscope "
                                 f"reads version {SCHEMA_VERSION}")
            moved = self._migrate_tables() if version not in (None, SCHEMA_VERSION) else []
            self.db.executescript(SCHEMA)  # adds what a store of an older version lacks
            if version is None:
                self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                (str(SCHEMA_VERSION),))
            elif version != SCHEMA_VERSION:
                for table in moved:
                    self._move_rows(f"{table}_before", table)
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                (str(SCHEMA_VERSION),))
            self._start_rollups()

    def _stored_version(self) -> int | None:
        """The schema version of the file; None for a new store."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return None if row is None else int(row[0])

    def _move_rows(self, old: str, new: str) -> None:
        """Move a set-aside table's rows into its new table (rows without a system were
        Kafka's), and drop it."""
        have = [r[1] for r in self.db.execute(f"PRAGMA table_info({old})")]
        columns = [r[1] for r in self.db.execute(f"PRAGMA table_info({new})") if r[1] in have]
        names = ", ".join(f'"{c}"' for c in columns)
        system = "" if "system" in have else ", system"
        value = "" if "system" in have else f", '{KAFKA}'"
        self.db.execute(f"INSERT OR REPLACE INTO {new} ({names}{system}) "
                        f"SELECT {names}{value} FROM {old}")
        self.db.execute(f"DROP TABLE {old}")

    def _migrate_tables(self) -> list[str]:
        """Before the schema script runs on an older store: add the columns added since, and
        set aside the tables whose key changed (their rows are moved back after it); those
        set aside."""
        tables = {r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column, kind in ADDED_COLUMNS:
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if table in tables and column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self.db.execute("DROP INDEX IF EXISTS lag_samples_by_time")
        moved = [table for table in REKEYED if table in tables]
        for table in moved:
            self.db.execute(f"ALTER TABLE {table} RENAME TO {table}_before")
        return moved

    def _start_rollups(self) -> None:
        """Fix the edge rollups' width, and the bucket they are complete from: at once for a
        new store; for one migrated with edges in it, the first rollup bucket after the
        newest edge bucket (earlier windows are read from the edge buckets)."""
        if self.db.execute("SELECT 1 FROM meta WHERE key = 'rollup_s'").fetchone():
            return
        width = rollup_width(self.bucket_s)
        newest = self.db.execute("SELECT MAX(bucket_start) FROM edge_buckets").fetchone()[0]
        since = 0 if newest is None else (newest // width + 1) * width
        self.db.executemany("INSERT INTO meta VALUES (?, ?)",
                            [("rollup_s", str(width)), ("rollups_since", str(since))])

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

    @contextlib.contextmanager
    def write_batch(self) -> Iterator[SqliteWrites]:
        """One write transaction for flow derivation (all or nothing); StoreUnavailable when
        the store, not the records, made it fail."""
        with self._transaction():
            yield SqliteWrites(self.db, self.rollup[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction, begun here: Python's sqlite3 begins one only before a data change,
        so a write opening with a SELECT or a SAVEPOINT would otherwise commit in parts. An
        error of the store's own (disk full, read-only...) comes out as StoreUnavailable, an
        error about the data as it is."""
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                yield
        except sqlite3.Error as exc:
            unavailable = store_unavailable(exc, self.path)
            if unavailable is None:
                raise
            raise unavailable from exc

    def propagation(self, since_ns: int, sample: int | None = None,
                    now_ns: int | None = None) -> list[PropagationRow]:
        """Per topic and producer, the messages since since_ns (the newest `sample` of them,
        when given) and those with trace context; with now_ns, unattributed messages younger
        than SEND_SPAN_SETTLE_NS are left out (their send span may still be on its way)."""
        newest = "ORDER BY timestamp_ms DESC LIMIT ?" if sample else ""
        since_ms = since_ns // NS_PER_MS
        settled = 2**62 if now_ns is None else (now_ns - SEND_SPAN_SETTLE_NS) // NS_PER_MS
        return [PropagationRow(*row) for row in self.db.execute(
            "SELECT m.topic, COALESCE((SELECT s.service FROM spans s WHERE s.message_id = "
            f"m.message_id AND s.operation IN {sql_list(SENDS)} LIMIT 1), "
            "CASE WHEN m.timestamp_ms >= ? THEN NULL ELSE 'unknown' END) AS producer,"
            " COUNT(*), SUM(m.trace_id IS NOT NULL) FROM (SELECT topic, message_id, trace_id, "
            f"timestamp_ms FROM messages WHERE timestamp_ms >= ? {newest}) m "
            "GROUP BY m.topic, producer HAVING producer IS NOT NULL "
            "ORDER BY m.topic, producer",
            (settled, since_ms, sample) if sample else (settled, since_ms))]

    def write_lag(self, rows: Sequence[LagRow], groups: Sequence[GroupLag], *,
                  complete: str | None = None) -> None:
        """Record one lag poll: the current figures and the history (see Store.write_lag)."""
        lag_values = [tuple(-1 if c == "partition" and r.partition is None else getattr(r, c)
                            for c in LAG_COLUMNS) for r in rows]
        with self._transaction():
            if complete is not None:  # what this poll does not hold is gone from the broker
                self.db.execute("DELETE FROM lag_current WHERE system = ?", (complete,))
                self.db.execute("DELETE FROM lag_groups WHERE system = ?", (complete,))
            self.db.executemany(f"INSERT OR REPLACE INTO lag_current VALUES ({LAG_MARKS})",
                                lag_values)
            self.db.executemany(f"INSERT OR IGNORE INTO lag_samples VALUES ({LAG_MARKS})",
                                lag_values)
            self.db.executemany(
                f"INSERT OR REPLACE INTO lag_groups VALUES ({GROUP_MARKS})",
                [tuple(getattr(g, c) for c in GROUP_LAG_COLUMNS) for g in groups])

    def lag_trend(self, since_ns: int) -> list[tuple[str, float, int, float | None]]:
        """Per group and poll since since_ns: (group, at_s, total lag, largest lag seconds)."""
        # TOTAL, not SUM: a sum past int64 is an error in SQLite; the cast saturates instead.
        return self.db.execute(
            'SELECT "group", at_s, CAST(TOTAL(lag) AS INTEGER), MAX(lag_seconds) FROM '
            'lag_samples WHERE at_s >= ? GROUP BY system, "group", at_s ORDER BY at_s',
            (since_ns / NS_PER_S,)).fetchall()

    def add_counters(self, counts: Mapping[str, int]) -> None:
        """Add to named counters."""
        with self._transaction():
            self.db.executemany(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                "value = value + excluded.value", [(k, v) for k, v in counts.items() if v])

    def write_health(self, snapshot: Mapping[str, object], at_ns: int) -> None:
        """Replace the collector's component health with this report (Health.snapshot())."""
        components = snapshot.get("components") or {}
        assert isinstance(components, Mapping)
        with self._transaction():
            self.db.execute("DELETE FROM collector_health")
            self.db.executemany("INSERT INTO collector_health VALUES (?,?,?,?,?,?)", [
                (name, c["state"], c["reason"], c["since_s"], c["restarts"], at_ns / NS_PER_S)
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
            deleted += self.db.execute("DELETE FROM edge_rollups WHERE bucket_start < ?",
                                       (agg_cut,)).rowcount
            deleted += self.db.execute("DELETE FROM flow_latency_buckets WHERE bucket_start < ?",
                                       (agg_cut,)).rowcount
            deleted += self.db.execute("DELETE FROM lag_samples WHERE at_s < ?",
                                       (raw_cut / 1e9,)).rowcount
            deleted += self.db.execute("DELETE FROM messages WHERE timestamp_ms < ?",
                                       (raw_cut // 1_000_000,)).rowcount
        return deleted

    # -- reading -------------------------------------------------------------------------------

    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """The connection (readers never block the writer in WAL mode)."""
        return contextlib.nullcontext(self.db)

    def lead(self, role: str) -> bool:
        """Always: an SQLite store has one writer, the collector."""
        return True

    def close(self) -> None:
        """Close the connection."""
        self.db.close()
