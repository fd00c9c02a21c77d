"""Producer throughput of the demo services' traced send, with tracing on and off, side by side.

Both variants use the same Service.send (idempotent producer, acks=all, JSON payload, headers):
"on" records a PRODUCER span per message and exports it over OTLP/HTTP to the native Jaeger
through a BatchSpanProcessor; "off" uses OpenTelemetry's no-op tracer. Rounds alternate so that
machine noise hits both alike; the figures are medians over rounds.

    .venv/bin/python bench/producer_tracing.py [--messages 4000] [--rounds 5] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from base.settings import Settings
from bench.infra import running_infra
from demo_services.config import DemoConfig
from demo_services.runtime import Service
from demo_services.topics import ensure_topics


async def one_round(service: Service, messages: int, concurrency: int) -> float:
    """Messages per second for one round of concurrent senders."""
    per_sender = messages // concurrency
    payload = {"type": "file.uploaded", "file_id": "f", "name": "scan.pdf", "size": 12345,
               "callback_url": "http://127.0.0.1:9/callbacks/x"}

    async def sender(n: int) -> None:
        for i in range(per_sender):
            await service.send("files.uploaded", payload, key=f"{n}-{i}",
                               correlation_id=str(uuid.uuid4()))

    started = time.perf_counter()
    await asyncio.gather(*(sender(n) for n in range(concurrency)))
    return per_sender * concurrency / (time.perf_counter() - started)


async def measure(bootstrap: str, otlp: str, args: argparse.Namespace) -> dict[str, list[float]]:
    config = DemoConfig(bootstrap=bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:6]}.")
    await ensure_topics(config)
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-producer"}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"{otlp}/v1/traces"), max_queue_size=65536))
    services = {"on": Service("bench", config, provider.get_tracer("bench")),
                "off": Service("bench", config, trace.NoOpTracer())}
    for service in services.values():
        await service.start()
    rates: dict[str, list[float]] = {"on": [], "off": []}
    try:
        await one_round(services["off"], args.concurrency * 10, args.concurrency)  # warm-up
        for r in range(args.rounds):
            order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
            for variant in order:
                rates[variant].append(await one_round(services[variant], args.messages,
                                                      args.concurrency))
                provider.force_flush()
            print(f"round {r + 1}: on {rates['on'][-1]:8.0f}/s  off {rates['off'][-1]:8.0f}/s",
                  flush=True)
    finally:
        for service in services.values():
            await service.close()
        provider.shutdown()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with running_infra(Settings.from_env()) as (bootstrap, otlp):
        rates = asyncio.run(measure(bootstrap, otlp, args))
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(f"median messages/s: tracing on {on:.0f}, tracing off {off:.0f}, "
          f"ratio on/off {on / off:.3f} (target >= 0.85)")


if __name__ == "__main__":
    main()
