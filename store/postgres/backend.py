"""The shared store: PostgreSQL, written by several collectors and read by any dashboard.

It persists and queries only, as the SQLite store does: flow derivation (collectors/flows)
writes through write_batch() (store/postgres/writes.py); most reads are the shared SQL of
store/sql. Writes are idempotent (by trace and span ID, hop key, message coordinates), so
replays from Kafka create no duplicates, and aggregates are merged by the database.

Flow derivation transactions take one advisory lock, so that the two sides of a hop (or a
link and its span) reaching two collectors at once always meet: the second transaction sees
what the first wrote. Decoding and normalising, the bulk of a collector's work, run in
parallel; docs/scaling.md says where this limit lies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.types.string import StrDumper, StrDumperUnknown

from base.settings import POSTGRES_SCHEMES, redact_url
from store.contract import (
    SEND_SPAN_SETTLE_NS,
    ComponentRow,
    PropagationRow,
    StoreError,
    StoreUnavailable,
)
from store.postgres.partitions import Partitions
from store.postgres.schema import (
    MIGRATIONS,
    PARTITIONED,
    SCHEMA,
    SCHEMA_VERSION,
    partition_width,
)
from store.postgres.writes import PostgresWrites, Staging, staged_insert
from store.records import GROUP_LAG_COLUMNS, LAG_COLUMNS, GroupLag, LagRow
from store.sql.reads import SqlReads
from store.sql.rows import rollup_width
from store.vocabulary import (
    NS_PER_MS,
    NS_PER_S,
    SENDS,
    FlowRules,
    sql_list,
)

# Advisory lock keys (with the schema's own class, so that stores in two schemas of one
# database do not wait for each other).
MIGRATE_LOCK, DERIVE_LOCK, PARTITION_LOCK = 1, 2, 3
LAG_UPSERT = (staged_insert("lag_current", LAG_COLUMNS)
              + ' ON CONFLICT (system, "group", topic, partition) DO UPDATE SET '
              + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in LAG_COLUMNS))
LAG_SAMPLES_INSERT = staged_insert("lag_samples", LAG_COLUMNS) + " ON CONFLICT DO NOTHING"
COUNTERS_ADD = (staged_insert("counters", ("name", "value")) + " ON CONFLICT (name) DO UPDATE "
                "SET value = counters.value + EXCLUDED.value")
GROUP_UPSERT = (staged_insert("lag_groups", GROUP_LAG_COLUMNS)
                + ' ON CONFLICT (system, "group") DO UPDATE SET '
                + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in GROUP_LAG_COLUMNS))
CONNECT_TIMEOUT_S = 10
HEALTH_KEPT_S = 3600.0  # how long a collector that stopped reporting stays in the health table
log = logging.getLogger(__name__)
QMARK = re.compile(r"\?|:([a-z_]+)\b")


def is_postgres_url(location: str) -> bool:
    """True for a location that names a PostgreSQL database."""
    return location.startswith(POSTGRES_SCHEMES)


def unavailable(exc: psycopg.Error, url: str) -> StoreUnavailable | None:
    """The StoreUnavailable a psycopg error stands for (the server gone, shutting down, out of
    space, read-only, a transaction to retry), or None when it is about the data."""
    state = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or \
            state[:2] in ("08", "53", "57", "58", "40") or state == "25006":
        return StoreUnavailable(f"store {redact_url(url)}: {str(exc).strip()} "
                                f"({state or type(exc).__name__})")
    return None


def role_key(role: str) -> int:
    """The advisory lock key of a role (clear of the store's own locks' keys)."""
    return 1000 + zlib.crc32(role.encode()) % 1_000_000


class NulFreeText(StrDumperUnknown):
    """Text as PostgreSQL holds it: a NUL character, which its text cannot hold, becomes
    U+FFFD (a header value or a name with one is stored, not refused)."""

    def dump(self, obj: str) -> Buffer | None:
        """The text's bytes."""
        return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)


class NulFreeTextArrays(StrDumper):
    """NulFreeText for the elements of text arrays."""

    def dump(self, obj: str) -> Buffer | None:
        """The text's bytes."""
        return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)


def connect(url: str) -> psycopg.Connection:
    """A connection in autocommit (each read its own snapshot; writes in transactions)."""
    db = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                         application_name="flowscope")
    db.adapters.register_dumper(str, NulFreeTextArrays)
    db.adapters.register_dumper(str, NulFreeText)
    return db


class QmarkCursor:
    """The shared read queries on one cursor: their parameters (? and :name) as psycopg's,
    and without SQLite's planner hint `x || '' = y` (it keeps SQLite off an index; it would
    keep PostgreSQL from carrying a flow's id from one side of a join to the other, and so
    from reading that flow's hops alone)."""

    def __init__(self, cursor: psycopg.Cursor) -> None:
        self.cursor = cursor

    def execute(self, sql: str, parameters: Any = ()) -> psycopg.Cursor:
        """Run one shared query."""
        named = isinstance(parameters, Mapping)
        text = QMARK.sub(lambda m: f"%({m[1]})s" if named and m[1] else
                         ("%s" if m[0] == "?" else m[0]),
                         sql.replace("%", "%%").replace(" || '' = ", " = "))
        return self.cursor.execute(text, parameters)


class PostgresStore(SqlReads):
    """Store backed by one PostgreSQL database (its current schema)."""

    def __init__(self, url: str, rules: FlowRules, *, bucket_s: int = 10,
                 raw_retention_s: float = 86400, aggregate_retention_s: float = 7 * 86400,
                 readonly: bool = False) -> None:
        self.url = url
        self.rules = rules
        self.bucket_s = bucket_s
        self.raw_retention_s = raw_retention_s
        self.aggregate_retention_s = aggregate_retention_s
        self.readonly = readonly
        self._lock = threading.RLock()
        self._lead_lock = threading.Lock()
        self._leader: psycopg.Connection | None = None  # holds the roles' advisory locks
        self._roles: set[str] = set()
        self.identity = f"{socket.gethostname()}:{os.getpid()}"  # in collector_health
        self.db = self._connect()
        try:
            schema = self.db.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
            self.lock_class = zlib.crc32(str(schema).encode()) - 2**31
            if readonly:
                self._check_version()
            else:
                self._migrate()
            meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        except psycopg.Error as exc:
            self.db.close()
            raise StoreError(f"{redact_url(url)} cannot be opened as a Flowscope store: "
                             f"{str(exc).strip()}") from None
        self.rollup = (int(meta.get("rollup_s", rollup_width(bucket_s))),
                       int(meta.get("rollups_since", 0)))
        self.partitions = Partitions(int(meta.get("partition_s",
                                                  partition_width(raw_retention_s))),
                                     raw_retention_s, (self.lock_class, PARTITION_LOCK))
        self.staging: Staging | None = None  # a writer's, made with each connection
        if not readonly:
            with self._transaction() as cursor:
                self.partitions.load(cursor)
            self.staging = Staging(self.db)

    def _connect(self) -> psycopg.Connection:
        try:
            return connect(self.url)
        except psycopg.Error as exc:
            raise StoreError(f"{redact_url(self.url)} cannot be opened as a Flowscope store: "
                             f"{str(exc).strip()}") from None

    def _migrate(self) -> None:
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                            (self.lock_class, MIGRATE_LOCK))
            self._check_is_ours()
            version = self._stored_version()
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(f"{redact_url(self.url)} has schema version {version}; this "
                                 f"Flowscope reads version {SCHEMA_VERSION} (PostgreSQL)")
            if version is None:
                self.db.execute(SCHEMA)
                self.db.execute(
                    "INSERT INTO meta VALUES ('schema_version', %s), ('rollup_s', %s), "
                    "('rollups_since', '0'), ('partition_s', %s)",
                    (str(SCHEMA_VERSION), str(rollup_width(self.bucket_s)),
                     str(partition_width(self.raw_retention_s))))
                return
            for target, statements in MIGRATIONS:
                if target > version:
                    self.db.execute(statements)
            self.db.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'",
                            (str(SCHEMA_VERSION),))

    def _stored_version(self) -> int | None:
        if self.db.execute("SELECT to_regclass('meta')").fetchone()[0] is None:  # type: ignore[index]
            return None
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    def _check_is_ours(self) -> None:
        """Refuse a schema that holds another program's tables."""
        tables = [r[0] for r in self.db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "ORDER BY tablename")]
        if tables and "meta" not in tables:
            raise StoreError(f"{redact_url(self.url)} is not a Flowscope store: its schema holds "
                             f"other tables ({', '.join(tables[:5])}); name a database or "
                             "schema of its own in FLOWSCOPE_STORE")

    def _check_version(self) -> None:
        version = self._stored_version()
        if version is None:
            raise StoreError(f"no store at {redact_url(self.url)}: run `flowscope collect` to "
                             "create one")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{redact_url(self.url)} has schema version {version}; this "
                             f"Flowscope reads version {SCHEMA_VERSION} (PostgreSQL)"
                             + ("; start its collector once to migrate it"
                                if version < SCHEMA_VERSION else ""))

    # -- connection ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, *locks: int) -> Iterator[psycopg.Cursor]:
        """One transaction (holding these advisory locks); a store-side failure comes out as
        StoreUnavailable, and the connection is opened again on the next call."""
        with self._lock:
            try:
                db = self._connection()
                with db.transaction(), db.cursor() as cursor:
                    for lock in locks:
                        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                                       (self.lock_class, lock))
                    yield cursor
            except psycopg.Error as exc:
                down = unavailable(exc, self.url)
                if down is None:
                    raise
                raise down from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[QmarkCursor]:
        """A cursor for reads (each statement its own snapshot), as _transaction fails."""
        with self._lock:
            try:
                with self._connection().cursor() as cursor:
                    yield QmarkCursor(cursor)
            except psycopg.Error as exc:
                down = unavailable(exc, self.url)
                if down is None:
                    raise
                raise down from exc

    def _connection(self) -> psycopg.Connection:
        if self.db.closed or self.db.broken:
            self.db.close()
            try:
                self.db = connect(self.url)
                # a new session has none of the old one's temporary tables: made here,
                # outside any transaction, so that a rolled-back one cannot take them along
                self.staging = None if self.readonly else Staging(self.db)
            except psycopg.Error as exc:
                raise StoreUnavailable(f"store {redact_url(self.url)}: {str(exc).strip()}"
                                       ) from None
        return self.db

    def _staging(self) -> Staging:
        """The session's staging tables; a store opened read-only has none."""
        if self.staging is None:
            raise StoreError(f"{redact_url(self.url)} was opened read-only")
        return self.staging

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def write_batch(self) -> Iterator[PostgresWrites]:
        """One write transaction for flow derivation (all or nothing), under the derivation
        lock; StoreUnavailable when the store, not the records, made it fail."""
        with self._transaction(DERIVE_LOCK) as cursor:
            yield PostgresWrites(cursor, self.rollup[0], self.partitions,
                                 self._staging())

    def write_lag(self, rows: Sequence[LagRow], groups: Sequence[GroupLag], *,
                  complete: str | None = None) -> None:
        """Record one lag poll: the current figures and the history (see Store.write_lag)."""
        values = [tuple(-1 if c == "partition" and r.partition is None else getattr(r, c)
                        for c in LAG_COLUMNS) for r in rows]
        with self._transaction() as cursor:
            staging, used = self._staging(), set[str]()
            if complete is not None:
                cursor.execute("DELETE FROM lag_current WHERE system = %s", (complete,))
                cursor.execute("DELETE FROM lag_groups WHERE system = %s", (complete,))
            if values:
                # One row per key: the last of a poll that names a partition twice.
                current = list({(r[9], r[0], r[1], r[2]): r for r in values}.values())
                staging.copy(cursor, used, "lag_current", LAG_COLUMNS, current)
                cursor.execute(LAG_UPSERT)
                self.partitions.ensure(cursor, PARTITIONED[3], (r.at_s for r in rows),
                                       time.time())
                staging.copy(cursor, used, "lag_samples", LAG_COLUMNS, values)
                cursor.execute(LAG_SAMPLES_INSERT)
            if groups:
                latest = list({(g.system, g.group): g for g in groups}.values())
                staging.copy(cursor, used, "lag_groups", GROUP_LAG_COLUMNS,
                             (tuple(getattr(g, c) for c in GROUP_LAG_COLUMNS) for g in latest))
                cursor.execute(GROUP_UPSERT)

    def add_counters(self, counts: Mapping[str, int]) -> None:
        """Add to named counters (merged by the database)."""
        kept = sorted((k, v) for k, v in counts.items() if v)
        if not kept:
            return
        with self._transaction() as cursor:
            self._staging().copy(cursor, set(), "counters", ("name", "value"),
                                                  kept)
            cursor.execute(COUNTERS_ADD)

    def write_health(self, snapshot: Mapping[str, object], at_ns: int) -> None:
        """Replace this collector's component health with this report (Health.snapshot());
        a collector silent for HEALTH_KEPT_S is forgotten."""
        components = snapshot.get("components") or {}
        assert isinstance(components, Mapping)
        at_s = at_ns / NS_PER_S
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM collector_health WHERE collector = %s OR at_s < %s",
                           (self.identity, at_s - HEALTH_KEPT_S))
            for name, c in components.items():
                cursor.execute("INSERT INTO collector_health VALUES (%s, %s, %s, %s, %s, %s, "
                               "%s)", (self.identity, name, c["state"], c["reason"],
                                       c["since_s"], c["restarts"], at_s))

    def apply_retention(self, now_ns: int) -> int:
        """Drop the raw partitions wholly past raw_retention_s, delete older raw rows left in
        the others (the default partitions, the one the cut falls in) and aggregates older
        than theirs."""
        raw_cut = now_ns - int(self.raw_retention_s * 1e9)
        agg_cut = int(now_ns / 1e9 - self.aggregate_retention_s)
        cuts = {"spans": raw_cut, "hops": raw_cut, "messages": raw_cut // 1_000_000,
                "lag_samples": raw_cut / 1e9}
        # The derivation lock first, as derivation takes them: a transaction that holds a
        # table's rows and waits to make a partition never waits on a drop waiting on it.
        with self._transaction(DERIVE_LOCK, PARTITION_LOCK) as cursor:
            deleted = 0
            for part in PARTITIONED:
                deleted += self.partitions.drop_before(cursor, part, cuts[part.table])
                deleted += cursor.execute(f"DELETE FROM {part.table} WHERE {part.column} < %s",
                                          (cuts[part.table],)).rowcount
            deleted += cursor.execute(
                "DELETE FROM span_links l WHERE NOT EXISTS (SELECT 1 FROM spans s WHERE "
                "s.trace_id = l.trace_id AND s.span_id = l.span_id)").rowcount
            deleted += cursor.execute("DELETE FROM flows WHERE last_ns < %s",
                                      (raw_cut,)).rowcount
            for table in ("edge_buckets", "edge_rollups", "flow_latency_buckets"):
                deleted += cursor.execute(f"DELETE FROM {table} WHERE bucket_start < %s",
                                          (agg_cut,)).rowcount
        return deleted

    # -- reading ---------------------------------------------------------------------------

    def collector_health(self) -> list[ComponentRow]:
        """The collector's components as last reported, by name."""
        with self._reading() as db:
            return [ComponentRow(*row) for row in db.execute(
                "SELECT component, state, reason, since_s, restarts, at_s, collector FROM "
                "collector_health ORDER BY component, collector")]

    def lag_trend(self, since_ns: int) -> list[tuple[str, float, int, float | None]]:
        """Per group and poll since since_ns: (group, at_s, total lag, largest lag seconds)."""
        with self._reading() as db:
            return [(group, at_s, int(total), largest) for group, at_s, total, largest in
                    db.execute('SELECT "group", at_s, LEAST(SUM(lag), 9223372036854775807), '
                               'MAX(lag_seconds) FROM lag_samples WHERE at_s >= ? '
                               'GROUP BY system, "group", at_s ORDER BY at_s',
                               (since_ns / NS_PER_S,))]

    def propagation(self, since_ns: int, sample: int | None = None,
                    now_ns: int | None = None) -> list[PropagationRow]:
        """Per topic and producer, the messages since since_ns (the newest `sample` of them,
        when given) and those with trace context; with now_ns, unattributed messages younger
        than SEND_SPAN_SETTLE_NS are left out."""
        newest = "ORDER BY timestamp_ms DESC LIMIT ?" if sample else ""
        settled = 2**62 if now_ns is None else (now_ns - SEND_SPAN_SETTLE_NS) // NS_PER_MS
        with self._reading() as db:
            return [PropagationRow(topic, producer, int(count), int(context))
                    for topic, producer, count, context in db.execute(
                "SELECT topic, producer, COUNT(*), COUNT(trace_id) FROM (SELECT m.topic, "
                "m.trace_id, COALESCE((SELECT s.service FROM spans s WHERE s.message_id = "
                f"m.message_id AND s.operation IN {sql_list(SENDS)} LIMIT 1), CASE WHEN "
                "m.timestamp_ms >= ? THEN NULL ELSE 'unknown' END) AS producer FROM (SELECT "
                "topic, message_id, trace_id, timestamp_ms FROM messages WHERE timestamp_ms "
                f">= ? {newest}) m) p WHERE producer IS NOT NULL GROUP BY topic, producer "
                "ORDER BY topic, producer",
                (settled, since_ns // NS_PER_MS, sample) if sample
                else (settled, since_ns // NS_PER_MS))]

    def lead(self, role: str) -> bool:
        """Whether this store's process holds the role: a session advisory lock on a
        connection of its own, taken when free. The server frees it when that connection
        ends (the process died, or the server restarted), and another collector takes it
        on its next call; a connection found broken here loses every role."""
        with self._lead_lock:
            try:
                if self._leader is None or self._leader.closed or self._leader.broken:
                    self._roles.clear()
                    if self._leader is not None:
                        self._leader.close()
                    self._leader = connect(self.url)
                if role in self._roles:
                    self._leader.execute("SELECT 1")  # the session, and so the lock, lives
                    return True
                row = self._leader.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                           (self.lock_class, role_key(role))).fetchone()
            except psycopg.Error as exc:
                log.warning("store %s: leadership of %s lost: %s", redact_url(self.url), role,
                            str(exc).strip())
                self._roles.clear()
                return False
            if row is not None and row[0]:
                self._roles.add(role)
                return True
            return False

    def close(self) -> None:
        """Close the connections (freeing every role held)."""
        with self._lead_lock:
            if self._leader is not None:
                self._leader.close()
        self.db.close()

