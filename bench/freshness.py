"""Freshness: from a message consumed in a demo service to its hop readable in the store.

Runs `flowscope collect` and the demo services (exporting spans to the collector with the
services' default OTEL_BSP_SCHEDULE_DELAY of 500 ms) and the load generator at the demo's
default rate, and polls the store every 100 ms from a reader connection, as the dashboard
would. For each hop: the time it was first readable minus the end of its consume span.

    .venv/bin/python bench/freshness.py [--rate 5] [--duration 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from base.settings import Settings
from bench.infra import running_infra
from store.factory import open_store
from tests.integration.collector_process import Collector
from tests.integration.demo_stack import DemoStack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    settings = Settings.from_env()
    with running_infra(settings, with_jaeger=False) as (bootstrap, _), \
            tempfile.TemporaryDirectory() as home:
        collector = Collector.create(Path(home, "c"), bootstrap, "http://127.0.0.1:9",
                                     "http://127.0.0.1:9", f"spans-fresh-{int(time.time())}")
        collector.env.pop("FLOWSCOPE_JAEGER_OTLP_ENDPOINT")
        collector.env.pop("FLOWSCOPE_JAEGER_QUERY_URL")
        collector.start()
        stack = DemoStack.create(Path(home, "d"), bootstrap, collector.otlp_url,
                                 f"fresh{int(time.time())}.")
        stack.env.pop("OTEL_BSP_SCHEDULE_DELAY")  # the services' own default
        stack.start()
        store = open_store(Settings.from_env(collector.env), readonly=True)
        load = subprocess.Popen([sys.executable, "-m", "flowscope", "loadgen", "--rate",
                                 str(args.rate), "--duration", str(args.duration)],
                                env=stack.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        seen: dict[str, float] = {}
        lag: list[float] = []
        deadline = time.time() + args.duration + 10
        while time.time() < deadline:
            now = time.time()
            for key, consume_end in store.db.execute(
                    "SELECT hop_key, consume_end_ns FROM hops WHERE producer_span_id IS NOT "
                    "NULL AND consume_end_ns > ?", (int((now - 60) * 1e9),)):
                if key not in seen:
                    seen[key] = now
                    lag.append(now - consume_end / 1e9)
            time.sleep(0.1)
        load.wait(timeout=60)
        store.close()
        stack.stop()
        collector.stop()
    lag.sort()
    p95 = lag[int(0.95 * (len(lag) - 1))]
    print(f"freshness over {len(lag)} hops at {args.rate:g} flows/s: p50 "
          f"{statistics.median(lag) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {lag[-1] * 1000:.0f} ms (target p95 <= 2000 ms)")


if __name__ == "__main__":
    main()
