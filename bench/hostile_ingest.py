"""What one hostile sender costs the collector, and everyone else.

Posts, to a `flowscope collect --no-kafka` process, the requests that once stalled ingest for
minutes or exhausted memory, and for each prints the collector's CPU seconds and wall time,
the latency of /health and of a small well-formed batch sent meanwhile (the other senders),
and the collector's peak resident memory:

- 10,000 spans of one trace (the per-request cap; 200,000 took 187 s before the cap);
- 10,000 producer spans of 10,000 flows;
- one consume span with 100,000 links (read up to 128);
- 4 concurrent bodies of 16 MiB;
- a span named `send x...` of 10 MB (its topic is cut), then a normal batch.

    .venv/bin/python bench/hostile_ingest.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.collector_ingest import cpu_seconds
from tests.integration.collector_process import Collector
from tests.otlp_factory import new_span_id, new_trace_id, request, span

MB = 1 << 20


def _post(url: str, body: bytes) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"{url}/v1/traces", data=body, method="POST",
                headers={"Content-Type": "application/x-protobuf"}), timeout=600) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def _messaging(topic: str, flow: str) -> dict[str, str]:
    return {"messaging.system": "kafka", "messaging.destination.name": topic,
            "messaging.message.conversation_id": flow}


def payloads() -> dict[str, list[bytes]]:
    """The hostile requests, by name (a list: bodies sent at once)."""
    trace = new_trace_id()
    one_trace = request({"svc": [span(name="send t", kind="producer", trace_id=trace,
                                      attributes=_messaging("t", "one"))
                                 for _ in range(10_000)]}).SerializeToString()
    producers = request({"svc": [span(name="send t", kind="producer",
                                      attributes=_messaging("t", f"f{i}"))
                                 for i in range(10_000)]}).SerializeToString()
    links = request({"svc": [span(name="process t", kind="consumer",
                                  links=[(new_trace_id(), new_span_id())
                                         for _ in range(100_000)],
                                  attributes=_messaging("t", "links"))]}).SerializeToString()
    padded = request({"svc": [span(name="send pad", kind="producer", attributes={
        **_messaging("pad", "pad"), "padding": "p" * (16 * MB - 4096)})]}).SerializeToString()
    long_name = request({"svc": [span(name="send " + "x" * (10 * MB), kind="producer",
                                      attributes=_messaging("", "long"))]}).SerializeToString()
    return {"10,000 spans of one trace": [one_trace], "10,000 producer spans": [producers],
            "1 span with 100,000 links": [links], "4 concurrent bodies of 16 MiB": [padded] * 4,
            "a span named `send x...` of 10 MB": [long_name]}


def small_batch() -> bytes:
    """A well-formed batch from another sender: a produce and its consume."""
    trace, producer = new_trace_id(), new_span_id()
    return request({"other": [
        span(name="send o", kind="producer", trace_id=trace, span_id=producer,
             attributes=_messaging("o", "o")),
        span(name="process o", kind="consumer", trace_id=trace, parent=producer,
             attributes=_messaging("o", "o"))]}).SerializeToString()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(collector: Collector, bodies: list[bytes]) -> dict[str, float]:
    """Send the bodies at once; meanwhile probe /health and a small batch every 50 ms."""
    pid = collector.proc.pid  # type: ignore[union-attr]
    url = collector.otlp_url
    probes: dict[str, list[float]] = {"health": [], "other": []}
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            for name, call in (("health", lambda: _get(f"{url}/health")),
                               ("other", lambda: _post(url, small_batch()))):
                started = time.perf_counter()
                call()
                probes[name].append(time.perf_counter() - started)
            done.wait(0.05)

    prober = threading.Thread(target=probe)
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    prober.start()
    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(lambda body: _post(url, body), bodies))
    wall = time.perf_counter() - started
    done.set()
    prober.join()
    return {"status": statuses[0], "cpu_s": cpu_seconds(pid) - cpu_before, "wall_s": wall,
            "health_max_s": max(probes["health"], default=0.0),
            "health_p50_s": statistics.median(probes["health"] or [0.0]),
            "other_max_s": max(probes["other"], default=0.0),
            "rss_peak_mb": peak_rss_mb(pid)}


def main() -> None:
    """Each hostile request --rounds times, each round in a fresh collector; medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("building the payloads", flush=True)
    hostile = payloads()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in hostile}
    for round_ in range(1, args.rounds + 1):
        for name, bodies in hostile.items():
            with tempfile.TemporaryDirectory() as home:
                collector = Collector.create(Path(home), "127.0.0.1:1", "http://127.0.0.1:1",
                                             "http://127.0.0.1:1", "unused")
                for variable in ("FLOWSCOPE_JAEGER_OTLP_ENDPOINT", "FLOWSCOPE_JAEGER_QUERY_URL"):
                    collector.env.pop(variable)
                collector.env["FLOWSCOPE_MAX_BODY_BYTES"] = str(16 * MB + 4096)
                collector.start("--no-kafka")
                try:
                    results[name].append(measure(collector, bodies))
                finally:
                    collector.stop()
            print(f"  round {round_}: {name}: {results[name][-1]}", flush=True)
    print(f"\nmedians of {args.rounds} rounds (a fresh collector each):")
    print("| request | answer | collector CPU | wall | /health p50 / max | another sender's "
          "batch, max | collector peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, rounds in results.items():
        def median(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)
        print(f"| {name} | {int(median('status'))} | {median('cpu_s'):.2f} s | "
              f"{median('wall_s'):.2f} s | {median('health_p50_s') * 1000:.0f} / "
              f"{median('health_max_s') * 1000:.0f} ms | {median('other_max_s') * 1000:.0f} ms | "
              f"{median('rss_peak_mb'):.0f} MB |")


if __name__ == "__main__":
    main()
