"""A publisher and a consumer traced only by the official opentelemetry-instrumentation-aio-pika,
run in a virtual environment of its own (nothing of Flowscope installed there).

Run as a script (the instrumentation patches aio-pika for the whole process):
    python official_aio_pika_client.py publish|consume AMQP_URL QUEUE COUNT OTLP_URL SERVICE

It publishes through the default exchange, as aio-pika's work-queue examples do: the routing
key names the queue.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import aio_pika
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


async def publish(url: str, queue: str, count: int) -> None:
    connection = await aio_pika.connect(url, timeout=30)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for i in range(count):
            await channel.default_exchange.publish(aio_pika.Message(
                f"job {i}".encode(), message_id=str(uuid.uuid4()),
                correlation_id=f"official-{queue}-{i}"), routing_key=queue)


async def consume(url: str, queue: str, count: int) -> None:
    connection = await aio_pika.connect(url, timeout=30)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=4)
        declared = await channel.declare_queue(queue, durable=True)
        done = asyncio.Event()
        seen = 0

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            async with message.process():
                seen += 1
                if seen == count:
                    done.set()

        await declared.consume(handle)
        await asyncio.wait_for(done.wait(), 60)


def main() -> None:
    role, url, queue, count, otlp, service = sys.argv[1:7]
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=f"{otlp}/v1/traces")))
    AioPikaInstrumentor().instrument(tracer_provider=provider)
    work = publish if role == "publish" else consume
    asyncio.run(work(url, queue, int(count)))
    provider.shutdown()


if __name__ == "__main__":
    main()
