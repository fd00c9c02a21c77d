"""Ingest from the spans topic into SQLite (one collector) and into PostgreSQL (one and two
collectors in one consumer group), side by side in one run, with Jaeger's OTLP figure for the
same payloads.

The payloads are collector_ingest.py's: batches of 512 spans (a send and a process span per
message, correlation IDs, partitions and offsets, a tenth retried). For each configuration, in
rounds: a fresh spans topic (3 partitions) and a fresh store; the collectors are started and
given time to join their group (the configurations' order rotates from round to round);
then every batch is published to the topic, split by trace as
the OTLP receiver's Kafka mode does, and the clock runs until the store holds every span.
Reported per configuration: the median rate over the rounds (wall clock, publishing
included), and spans per CPU-second of the collectors and of PostgreSQL's processes. On a
2-core machine a second collector competes with PostgreSQL and Kafka for the cores.

    .venv/bin/python bench/scale_out_ingest.py [--batches 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from base.settings import Settings
from bench.collector_ingest import (
    BATCH,
    cpu_seconds,
    make_batch,
    post_concurrently,
    shift_base_to_now,
)
from bench.infra import running_infra
from collectors.collect import ensure_spans_topic
from collectors.ingest.decode import decode_request
from collectors.ingest.otlp_publish import SpanPublisher
from flowscope.infra import postgres
from tests.integration.collector_process import Collector

JOIN_S = 8.0  # for the group to settle once every collector is ready
NO_BROKERS = ("--no-rabbitmq", "--no-nats", "--no-artemis")


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process of this machine."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        if name == "postgres" or name.startswith("postgres:"):
            total += cpu_seconds(int(stat.parent.name))
    return total


def publish(bootstrap: str, topic: str, bodies: list[bytes]) -> None:
    """Every body to the spans topic, split by trace."""

    async def run() -> None:
        publisher = SpanPublisher(bootstrap, topic)
        try:
            for body in bodies:
                await publisher.publish(decode_request(body, "application/x-protobuf"))
        finally:
            await publisher.stop()

    asyncio.run(run())


def wait_until(count: Callable[[], int], expected: int, timeout_s: float) -> float:
    """Poll until count() reaches expected; the monotonic time it did."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        seen = count()
        if seen >= expected:
            return time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"only {seen:,} of {expected:,} spans stored after {timeout_s:.0f}s")


def run_one(name: str, collectors: int, store: str, counter: Callable[[], int], *,
            bodies: list[bytes], bootstrap: str, home: Path) -> tuple[float, float, float]:
    """(spans/s, spans per collector CPU-second, spans per PostgreSQL CPU-second)."""
    topic = f"bench-spans-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_spans_topic(bootstrap, topic))
    started = []
    for index in range(collectors):
        collector = Collector.create(home / f"{name}-{topic}-{index}", bootstrap, "", "",
                                     topic)
        collector.env.pop("FLOWSCOPE_JAEGER_OTLP_ENDPOINT")
        collector.env.pop("FLOWSCOPE_JAEGER_QUERY_URL")
        collector.env["FLOWSCOPE_STORE"] = store
        collector.start(*NO_BROKERS)
        started.append(collector)
    try:
        time.sleep(JOIN_S)
        spans = len(bodies) * BATCH
        cpu_before = sum(cpu_seconds(c.proc.pid) for c in started)  # type: ignore[union-attr]
        pg_before = postgres_cpu()
        begun = time.monotonic()
        publish(bootstrap, topic, bodies)
        done = wait_until(counter, spans, timeout_s=900)
        collector_cpu = sum(cpu_seconds(c.proc.pid) for c in started) - cpu_before  # type: ignore[union-attr]
        pg_cpu = postgres_cpu() - pg_before
        return (spans / (done - begun), spans / collector_cpu,
                spans / pg_cpu if pg_cpu > 0.5 else float("nan"))
    finally:
        for collector in started:
            collector.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4, help="senders to Jaeger")
    args = parser.parse_args()
    offset_ms = shift_base_to_now()
    settings = Settings.from_env()
    spans = args.batches * BATCH
    results: dict[str, list[tuple[float, float, float]]] = {}
    jaeger_rates = []
    started_postgres = not postgres.status(settings).running
    server = postgres.start(settings).url
    try:
        with running_infra(settings) as (bootstrap, jaeger_otlp), \
                tempfile.TemporaryDirectory() as scratch:
            home = Path(scratch)
            for round_ in range(args.rounds):
                # new trace and span ids every round: nothing is a replay
                bodies = [make_batch(round_ * args.batches + i, offset_ms)
                          for i in range(args.batches)]
                sqlite_path = home / f"round{round_}.db"

                def sqlite_count(path: Path = sqlite_path) -> int:
                    if not path.exists():
                        return 0
                    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
                        try:
                            return int(db.execute("SELECT COUNT(*) FROM spans").fetchone()[0])
                        except sqlite3.OperationalError:
                            return 0

                configurations = [("sqlite, 1 collector", 1, str(sqlite_path), sqlite_count)]
                for collectors in (1, 2):
                    schema = f"bench_{uuid.uuid4().hex[:8]}"
                    with psycopg.connect(server, autocommit=True) as db:
                        db.execute(f"CREATE SCHEMA {schema}")
                    url = f"{server}?options=-csearch_path%3D{schema}"

                    def pg_count(url: str = url) -> int:
                        with psycopg.connect(url, autocommit=True) as db:
                            try:
                                return int(db.execute("SELECT COUNT(*) FROM spans"
                                                      ).fetchone()[0])  # type: ignore[index]
                            except psycopg.errors.UndefinedTable:
                                return 0

                    configurations.append((f"postgresql, {collectors} collector"
                                           f"{'s' if collectors > 1 else ''}", collectors, url,
                                           pg_count))
                # a different order each round: what runs just after PostgreSQL's background
                # work on the previous stores (autovacuum) changes
                shift = round_ % len(configurations)
                for name, collectors, store, counter in (configurations[shift:]
                                                         + configurations[:shift]):
                    result = run_one(name.split(",")[0], collectors, store, counter,
                                     bodies=bodies, bootstrap=bootstrap, home=home)
                    results.setdefault(name, []).append(result)
                    print(f"round {round_ + 1}: {name}: {result[0]:,.0f} spans/s, "
                          f"{result[1]:,.0f} per collector CPU-s, {result[2]:,.0f} per "
                          "PostgreSQL CPU-s", flush=True)
                jaeger_rates.append(spans / post_concurrently(jaeger_otlp, bodies,
                                                              args.connections))
                print(f"round {round_ + 1}: jaeger (OTLP/HTTP): {jaeger_rates[-1]:,.0f} "
                      "spans/s", flush=True)
    finally:
        if started_postgres:
            postgres.stop(settings)
    jaeger = statistics.median(jaeger_rates)
    print(f"\n{spans:,} spans per round, {args.rounds} rounds; medians:")
    print(f"{'configuration':26} {'spans/s':>9} {'/collector CPU-s':>17} "
          f"{'/PostgreSQL CPU-s':>18} {'vs jaeger':>9}")
    for name, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        print(f"{name:26} {rate:9,.0f} {statistics.median(r[1] for r in rows):17,.0f} "
              f"{statistics.median(r[2] for r in rows):18,.0f} {rate / jaeger:9.2f}")
    print(f"{'jaeger (OTLP/HTTP)':26} {jaeger:9,.0f}")


if __name__ == "__main__":
    main()
