"""Time of each dashboard page's data queries on a store of about 1,000,000 spans (SQLite, and
PostgreSQL side by side with --stores sqlite,postgresql).

Fills a fresh store with demo-like flows spread over the last hour (file uploads with
retries and dead letters, order sagas with fan-out), one tapped message per send, and an
hour of lag polls of seven groups; then runs each page's loader (dashboard/queries.py, the
functions the cached page queries call) for the 15-minute and the 1-hour window, several
times, and prints the median and the worst time of each. Target: every page under 300 ms.
PostgreSQL is the native server (`flowscope postgres start`), in a schema of the run's own.

    .venv/bin/python bench/dashboard_queries.py [--spans 1000000] [--repeat 5]
        [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from base.settings import Settings
from dashboard import queries
from flowscope.infra import postgres
from store.factory import open_store
from store.postgres.backend import PostgresStore
from store.postgres.schema import PARTITIONED
from store.records import GroupLag, LagRow, MessageRecord, SpanRecord
from tests.store_writer import open_settings_store

HOUR_S = 3600
GROUPS = ("processor", "notifier", "payments", "inventory", "shipping", "orders",
          "notifier-retry")


class Filler:
    """Writes flows as the collector would: spans in batches, then the tapped messages."""

    def __init__(self, store, now_ns: int) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self.now_ns = now_ns
        self.spans: list[SpanRecord] = []
        self.messages: list[MessageRecord] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.written = 0
        self.rng = random.Random(7)

    def hop(self, flow: str, trace: str, at_ns: int, producer: str, topic: str,  # noqa: PLR0917
            consumers: tuple[str, ...], *, attempt: int | None = None, error: bool = False
            ) -> int:
        partition = self.rng.randrange(6)
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        message_id = f"{topic}.{partition}.{offset}"
        send_id = f"{self.rng.getrandbits(64):016x}"
        self.spans.append(SpanRecord(trace, send_id, None, (), producer, f"send {topic}",
                                     "producer", at_ns, at_ns + 1_500_000, False, None, "send",
                                     "kafka", topic, partition, offset, message_id, None, flow,
                                     f"key-{flow}", attempt, None))
        end = at_ns + 1_500_000
        for consumer in consumers:
            start = at_ns + 1_500_000 + self.rng.randrange(1, 40) * 1_000_000
            end = start + self.rng.randrange(2, 30) * 1_000_000
            self.spans.append(SpanRecord(
                trace, f"{self.rng.getrandbits(64):016x}", send_id, ((trace, send_id),),
                consumer, f"process {topic}", "consumer", start, end, error,
                "ValueError" if error else None, "process", "kafka", topic, partition, offset,
                message_id, consumer, flow, f"key-{flow}", attempt, None))
        self.messages.append(MessageRecord(
            topic, partition, offset, at_ns // 1_000_000, f"key-{flow}", 200, flow,
            trace if self.rng.random() < 0.95 else None, attempt,
            '[["dlq-reason", "gave up"]]' if topic.endswith("dlq") else None, False))
        if len(self.spans) >= 5000:
            self.flush()
        return end

    def upload(self, n: int, at_ns: int) -> None:
        flow, trace = f"upload-{n}", f"{self.rng.getrandbits(128):032x}"
        draw = self.rng.random()
        t = self.hop(flow, trace, at_ns, "uploads", "files.uploaded", ("processor",),
                     error=draw < 0.13)
        if draw < 0.13:
            t = self.hop(flow, trace, t, "processor", "files.uploaded.retry", ("processor",),
                         attempt=2, error=draw < 0.03)
        if draw < 0.03:
            self.hop(flow, trace, t, "processor", "files.dlq", ())
            return
        t = self.hop(flow, trace, t, "processor", "files.processed", ("notifier",))
        self.hop(flow, trace, t, "notifier", "files.notified", ())

    def order(self, n: int, at_ns: int) -> None:
        flow, trace = f"order-{n}", f"{self.rng.getrandbits(128):032x}"
        t = self.hop(flow, trace, at_ns, "orders", "orders.placed", ("payments",))
        t = self.hop(flow, trace, t, "payments", "payments.charged", ("inventory", "orders"))
        t = self.hop(flow, trace, t, "inventory", "inventory.reserved", ("shipping",))
        t = self.hop(flow, trace, t, "shipping", "shipping.dispatched", ("orders",))
        self.hop(flow, trace, t, "orders", "orders.completed", ())

    def flush(self) -> None:
        if self.spans:
            self.store.write_spans(self.spans)
            self.written += len(self.spans)
            self.spans = []
        if self.messages:
            self.store.write_messages(self.messages)
            self.messages = []


def fill(store, total_spans: int) -> int:  # type: ignore[no-untyped-def]
    """Write about total_spans spans over the last hour, and an hour of lag polls."""
    now_ns = time.time_ns()
    filler = Filler(store, now_ns)
    n = 0
    started = time.monotonic()
    while filler.written + len(filler.spans) < total_spans:
        at_ns = now_ns - int(filler.rng.random() * HOUR_S * 1e9)
        (filler.upload if n % 5 < 3 else filler.order)(n, at_ns)
        n += 1
        if n % 20_000 == 0:
            print(f"[fill {time.monotonic() - started:5.1f}s] {filler.written:,} spans, "
                  f"{n:,} flows", flush=True)
    filler.flush()
    now_s = now_ns / 1e9
    for poll in range(HOUR_S // 5):
        at = now_s - HOUR_S + poll * 5
        rows = [LagRow(g, "files.uploaded", p, 1000 + poll, 1000 + poll + (poll % 40), poll % 40,
                       (poll % 40) * 0.1, "OK", at) for g in GROUPS for p in range(6)]
        store.write_lag(rows, [GroupLag(g, "OK", f"files.uploaded/{0}", 6 * (poll % 40), 4.0,
                                        20.0, 0.0, None, at) for g in GROUPS])
    print(f"[fill {time.monotonic() - started:5.1f}s] done: {filler.written:,} spans, "
          f"{n:,} flows", flush=True)
    return filler.written


def time_pages(store, repeat: int, now_ns: int  # type: ignore[no-untyped-def]
               ) -> list[tuple[str, str, float, float]]:
    """(page, window, median ms, max ms) of every page's loader, as of now_ns (the end of
    the filled hour, however long the fill took)."""
    results = []
    for window_name, window_s in (("15m", 900), ("1h", HOUR_S)):
        loaders = {
            "flow map": lambda w=window_s: queries.load_flow_map(store, w, now_ns),
            "lag": lambda w=window_s: queries.load_lag(store, w, now_ns),
            "retries": lambda w=window_s: queries.load_retries(store, w, now_ns),
            "latency": lambda w=window_s: queries.load_latency(store, w, now_ns),
            "propagation": lambda w=window_s: queries.load_propagation(store, w, now_ns),
            "flow explorer (newest)": lambda w=window_s: queries.load_recent_flows(
                store, w, now_ns),
        }
        if window_name == "15m":
            loaders |= {
                "flow explorer (by id)": lambda: queries.load_flow(store, "upload-777",
                                                                   now_ns),
                "flow explorer (by key)": lambda: queries.load_flow(store, "key-order-1004",
                                                                    now_ns),
                "flow explorer (by message)": lambda: queries.load_flow(
                    store, "files.uploaded.3.100", now_ns),
            }
        for page, loader in loaders.items():
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                loader()
                times.append((time.perf_counter() - started) * 1000)
            results.append((page, window_name, statistics.median(times), max(times)))
    return results


def postgres_store(schema: str) -> str:
    """A store URL on the native PostgreSQL server (started when it is not running), in a
    schema of its own."""
    url = postgres.start(Settings.from_env()).url
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    return f"{url}?options=-csearch_path%3D{schema}"


COPIED = ("spans", "span_links", "hops", "edge_buckets", "edge_rollups", "flows",
          "flow_latency_buckets", "lag_current", "lag_samples", "lag_groups", "messages",
          "counters")


def copy_store(source: Path | str, settings: Settings) -> int:
    """Fill the PostgreSQL store row for row from the SQLite store this run filled (what
    derivation wrote there, derivation would write here; at 10 million spans it would take
    an hour on this machine); its spans."""
    target = open_store(settings)  # the schema and its partitions
    assert isinstance(target, PostgresStore)
    assert isinstance(settings.collect.store, str)
    started = time.monotonic()
    source_db = sqlite3.connect(f"{Path(source).resolve().as_uri()}?mode=ro", uri=True)
    with psycopg.connect(settings.collect.store, autocommit=True) as db:
        for table in COPIED:
            columns = [r[1] for r in source_db.execute(f"PRAGMA table_info({table})")]
            part = next((p for p in PARTITIONED if p.table == table), None)
            if part is not None:
                low, high = source_db.execute(
                    f"SELECT MIN({part.column}), MAX({part.column}) FROM {table}").fetchone()
                if low is not None:
                    with db.transaction(), db.cursor() as cursor:
                        target.partitions.ensure(cursor, part, range(
                            int(low), int(high) + 1,
                            target.partitions.width_s * part.units), time.time())
                        target.partitions.ensure(cursor, part, [high], time.time())
            names = ", ".join(f'"{c}"' for c in columns)
            with db.transaction(), db.cursor() as cursor, \
                    cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in source_db.execute(f"SELECT {names} FROM {table}"):
                    copy.write_row(row)
            print(f"[copy {time.monotonic() - started:5.1f}s] {table}", flush=True)
        db.execute("ANALYZE")
    target.close()
    source_db.close()
    with psycopg.connect(settings.collect.store, autocommit=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM spans").fetchone()[0])  # type: ignore[index]


def size_of(settings: Settings) -> float:
    """The store's size on disk in MB."""
    store = settings.collect.store
    if isinstance(store, str):
        with psycopg.connect(store, autocommit=True) as db:
            return float(db.execute(
                "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND "
                "c.relkind = 'r'").fetchone()[0] or 0) / 1e6  # type: ignore[index]
    return sum(p.stat().st_size for p in store.parent.glob(f"{store.name}*")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--home", help="keep the SQLite store in this directory and reuse it "
                        "when it is already there (default: a temporary one)")
    parser.add_argument("--stores", default="sqlite", help="sqlite, postgresql or both "
                        "(comma-separated), timed one after the other in this run")
    parser.add_argument("--schema", default="bench_pages", help="the PostgreSQL store's "
                        "schema, reused when it holds a store")
    args = parser.parse_args()
    results = {}
    filled: dict[str, Path | str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        home = args.home or scratch
        for kind in args.stores.split(","):
            env = {"FLOWSCOPE_HOME": home}
            if kind == "postgresql":
                env["FLOWSCOPE_STORE"] = postgres_store(args.schema)
            settings = Settings.from_env(env)
            writer = open_settings_store(settings)
            written = writer.db.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
            if not written and kind == "postgresql" and "sqlite" in filled:
                writer.close()
                written = copy_store(filled["sqlite"], settings)
            elif not written:
                written = fill(writer, args.spans)
                writer.close()
            else:
                writer.close()
            filled[kind] = settings.collect.store
            store = open_store(settings, readonly=True)
            newest = store.flows(0, 2**62, limit=1)
            now_ns = newest[0].ended_ns + 10**9 if newest else time.time_ns()
            print(f"{kind} store: {written:,} spans, {size_of(settings):,.0f} MB", flush=True)
            results[kind] = time_pages(store, args.repeat, now_ns)
            store.close()
    kinds = list(results)
    print(f"{'page':28} {'window':>6} " + " ".join(f"{k + ' median':>18} {'max':>7}"
                                                  for k in kinds))
    for i, (page, window, _, _) in enumerate(results[kinds[0]]):
        cells = " ".join(f"{results[k][i][2]:18.1f} {results[k][i][3]:7.1f}" for k in kinds)
        flag = "" if all(results[k][i][3] < 300 for k in kinds) else "  over 300 ms"
        print(f"{page:28} {window:>6} {cells}{flag}")


if __name__ == "__main__":
    main()
