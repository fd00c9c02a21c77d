"""Collector ingest throughput, memory and query time at scale, side by side with Jaeger.

Builds demo-like OTLP batches of 512 spans (a send and a process span per message, with
correlation IDs, partitions and offsets; a tenth of the messages retried), posts them over
OTLP/HTTP protobuf to a `flowscope collect --no-kafka` process (into its SQLite store, with
hops, flows and aggregates) and the same payloads to the native Jaeger, then keeps feeding
the collector up to --total spans and reports its resident memory and the time of
`flowscope inspect topology --since 15m`.

    .venv/bin/python bench/collector_ingest.py [--batches 200] [--total 1000000] [--connections 4]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from base.settings import Settings
from bench.infra import running_infra
from store.factory import open_store_at
from store.vocabulary import FlowRules
from tests import otlp_factory
from tests.integration.collector_process import Collector
from tests.otlp_factory import request, span

BATCH = 512
TICKS = os.sysconf("SC_CLK_TCK")


def make_batch(index: int, now_ms: float) -> bytes:
    """512 spans: 256 messages, each a send by one service and a process by another."""
    spans_by_service: dict[str, list] = {"producer-svc": [], "consumer-svc": []}  # type: ignore[type-arg]
    for i in range(BATCH // 2):
        n = index * (BATCH // 2) + i
        trace, producer = f"{n + 1:032x}", f"{2 * n + 1:016x}"
        topic = f"bench.topic.{n % 4}"
        common = {"messaging.system": "kafka", "messaging.destination.name": topic,
                  "messaging.destination.partition.id": str(n % 3),
                  "messaging.kafka.offset": n, "messaging.message.conversation_id": f"flow-{n}",
                  "messaging.kafka.message.key": f"key-{n}"}
        start = now_ms - 60_000 + (n % 50_000)
        spans_by_service["producer-svc"].append(span(
            name=f"send {topic}", kind="producer", trace_id=trace, span_id=producer,
            start_ms=start, duration_ms=1.5,
            attributes={**common, "messaging.operation.type": "send"}))
        spans_by_service["consumer-svc"].append(span(
            name=f"process {topic}", kind="consumer", trace_id=trace, parent=producer,
            span_id=f"{2 * n + 2:016x}",
            links=[(trace, producer)], start_ms=start + 4, duration_ms=3, attributes={
                **common, "messaging.operation.type": "process",
                "messaging.consumer.group.name": "bench-group",
                "messaging.message.retry_attempt": 2 if n % 10 == 0 else 1}))
    # Relative to the factory's fixed base: shift so that the spans are recent.
    body = request(spans_by_service)
    return body.SerializeToString()


def shift_base_to_now() -> float:
    """Milliseconds to add to factory times so that 'start_ms=0' is now."""
    return (time.time_ns() - otlp_factory.BASE_NS) / 1e6


def post_concurrently(url: str, bodies: list[bytes], connections: int) -> float:
    """Post the bodies over several keep-alive connections at once; seconds taken."""
    started = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(lambda i: post_all(url, bodies[i::connections]), range(connections)))
    return time.perf_counter() - started


def post_all(url: str, bodies: list[bytes]) -> float:
    """Post every body on one keep-alive connection; seconds taken."""
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    started = time.perf_counter()
    for body in bodies:
        connection.request("POST", "/v1/traces", body=body,
                           headers={"Content-Type": "application/x-protobuf"})
        answer = connection.getresponse()
        reply = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{url} answered {answer.status}: {reply[:300]!r}")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="batches for the rate test")
    parser.add_argument("--total", type=int, default=1_000_000, help="spans for the scale test")
    parser.add_argument("--connections", type=int, default=4, help="concurrent senders")
    args = parser.parse_args()
    offset_ms = shift_base_to_now()
    print(f"building {args.batches} batches of {BATCH} spans", flush=True)
    bodies = [make_batch(i, offset_ms) for i in range(args.batches)]
    settings = Settings.from_env()
    with running_infra(settings) as (bootstrap, jaeger_otlp), \
            tempfile.TemporaryDirectory() as home:
        collector = Collector.create(Path(home), bootstrap, jaeger_otlp,
                                     settings.jaeger.query_url, "unused")
        collector.env.pop("FLOWSCOPE_JAEGER_OTLP_ENDPOINT")
        collector.env.pop("FLOWSCOPE_JAEGER_QUERY_URL")
        collector.env["FLOWSCOPE_MAX_BODY_BYTES"] = str(16 << 20)
        collector.start("--no-kafka")
        pid = collector.proc.pid  # type: ignore[union-attr]
        spans = args.batches * BATCH
        rates = {"flowscope": [], "jaeger": []}  # type: ignore[var-annotated]
        cpu = []
        half = len(bodies) // 2
        for part in (bodies[:half], bodies[half:]):
            before = cpu_seconds(pid)
            seconds = post_concurrently(collector.otlp_url, part, args.connections)
            cpu.append(len(part) * BATCH / (cpu_seconds(pid) - before))
            rates["flowscope"].append(len(part) * BATCH / seconds)
            rates["jaeger"].append(len(part) * BATCH / post_concurrently(
                jaeger_otlp, part, args.connections))
        flow, jaeger = statistics.median(rates["flowscope"]), statistics.median(rates["jaeger"])
        print(f"ingest, {spans} spans in batches of {BATCH} over {args.connections} "
              f"connections: flowscope {flow:,.0f} spans/s (wall), "
              f"{statistics.median(cpu):,.0f} spans per CPU-second of the collector; "
              f"jaeger {jaeger:,.0f} spans/s; ratio flowscope/jaeger {flow / jaeger:.2f}",
              flush=True)
        stored = spans
        index = args.batches
        while stored < args.total:
            chunk = [make_batch(index + i, offset_ms) for i in range(50)]
            post_all(collector.otlp_url, chunk)
            index += 50
            stored += 50 * BATCH
            if stored % (100 * BATCH) == 0:
                print(f"  stored {stored:,} spans, collector RSS {rss_mb(pid):.0f} MB",
                      flush=True)
        print(f"scale: {stored:,} spans stored; collector RSS {rss_mb(pid):.0f} MB; store "
              f"{Path(home, 'flowscope.db').stat().st_size / 2**20:.0f} MB", flush=True)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "flowscope", "inspect", "topology", "--since",
                            "15m", "--json"], env=collector.env, check=True,
                           capture_output=True)
            times.append(time.perf_counter() - started)
        query = query_time(Path(home, "flowscope.db"))
        print(f"inspect topology --since 15m: median {statistics.median(times) * 1000:.0f} ms "
              f"for the whole command (5 runs), of which the store query {query * 1000:.1f} ms",
              flush=True)
        collector.stop()


def query_time(store: Path) -> float:
    """Median seconds of the topology query alone, in this process."""
    reader = open_store_at(store, FlowRules((), (), (), 300), readonly=True)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        reader.topology(time.time_ns() - 15 * 60 * 10**9)
        times.append(time.perf_counter() - started)
    reader.close()
    return statistics.median(times)


if __name__ == "__main__":
    main()
