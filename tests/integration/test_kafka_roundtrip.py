"""A traced message survives a produce/consume round trip through the real broker."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry import baggage, context, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.trace import TracerProvider

from tests.integration.conftest import create_topic


async def test_headers_with_w3c_trace_context_survive_round_trip(
        kafka_bootstrap: str, unique_name: str) -> None:
    topic = await create_topic(kafka_bootstrap, unique_name)
    tracer = TracerProvider().get_tracer("flowscope.tests")
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracer.start_as_current_span(f"send {topic}", kind=trace.SpanKind.PRODUCER) as span:
            carrier: dict[str, str] = {}
            inject(carrier)
            sent_context = span.get_span_context()
    finally:
        context.detach(token)
    assert set(carrier) == {"traceparent", "baggage"}
    headers = [(name, value.encode()) for name, value in sorted(carrier.items())]
    headers += [("correlation-id", b"order-42"), ("opaque", b"\xff\x00\xfe")]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b'{"order": 42}', key=b"42", headers=headers)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        received = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()

    assert (received.partition, received.offset) == (sent.partition, sent.offset)
    assert received.key == b"42"
    assert received.value == b'{"order": 42}'
    assert list(received.headers) == headers
    text_headers = {k: v.decode() for k, v in received.headers if k in carrier}
    restored = extract(text_headers)
    restored_span = trace.get_current_span(restored).get_span_context()
    assert restored_span.trace_id == sent_context.trace_id
    assert restored_span.span_id == sent_context.span_id
    assert restored_span.is_remote
    assert baggage.get_baggage("tenant", restored) == "acme"
