"""Spans that travel through Kafka: a topic of OTLP export requests (the OpenTelemetry
Collector's `otlp_proto` encoding), consumed with commits after each batch is stored, so a
collector restart neither loses nor (thanks to idempotent writes) duplicates a span."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer

from collectors.ingest.consuming import Batch, consume_until_stopped
from collectors.ingest.decode import BadPayload, decode_request
from collectors.ingest.pipeline import Pipeline
from collectors.supervise import Health

log = logging.getLogger(__name__)
COMPONENT = "spans_topic"


def group_for(topic: str) -> str:
    """The consumer group of the collectors reading topic: collectors reading the same topic
    share its partitions; collectors reading different topics never share a group."""
    return f"flowscope-collector.{topic}"


async def consume_spans_topic(bootstrap: str, topic: str, pipeline: Pipeline, health: Health,
                              stopping: asyncio.Event, *, group: str | None = None) -> None:
    """Consume the spans topic until stopping; reconnect through broker outages."""

    async def make_consumer() -> AIOKafkaConsumer:
        # A short poll interval bounds the rebalance timeout: a collector restarted after a
        # crash in the middle of a rebalance waits a minute for its partitions, not five.
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    group_id=group or group_for(topic),
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=100, max_partition_fetch_bytes=16 << 20,
                                    max_poll_interval_ms=60_000, session_timeout_ms=10_000,
                                    heartbeat_interval_ms=3_000)
        await consumer.start()
        return consumer

    async def handle(batch: Batch) -> None:
        for records in batch.values():
            for record in records:
                await _ingest_one(pipeline, record.value, record.topic, record.partition,
                                  record.offset)

    await consume_until_stopped(make_consumer, handle, name=COMPONENT, pipeline=pipeline,
                                health=health, stopping=stopping, max_records=50)


async def _ingest_one(pipeline: Pipeline, value: bytes | None, topic: str, partition: int,
                      offset: int) -> None:
    try:
        export = await asyncio.to_thread(decode_request, value or b"", "application/x-protobuf")
    except BadPayload as exc:
        pipeline.count("spans_topic_garbage")
        log.warning("skipping garbage on %s[%d]@%d: %s", topic, partition, offset, exc)
        return
    await pipeline.ingest(export, value, "kafka")
