"""A producer or consumer traced only by the official opentelemetry-instrumentation-aiokafka.

Run as a script (the instrumentation patches aiokafka for the whole process):
    python official_aiokafka_client.py produce|consume BOOTSTRAP TOPIC COUNT OTLP_URL SERVICE
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


async def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=f"k{i}".encode())
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, count: int) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}-group",
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        for _ in range(count):
            await asyncio.wait_for(consumer.getone(), 60)
    finally:
        await consumer.stop()


def main() -> None:
    role, bootstrap, topic, count, otlp, service = sys.argv[1:7]
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=f"{otlp}/v1/traces")))
    AIOKafkaInstrumentor().instrument(tracer_provider=provider)
    work = produce if role == "produce" else consume
    asyncio.run(work(bootstrap, topic, int(count)))
    provider.shutdown()


if __name__ == "__main__":
    main()
