"""Spans that travel through Kafka: a topic of OTLP export requests (the OpenTelemetry
Collector's `otlp_proto` encoding), consumed with commits after each batch is stored, so a
collector restart neither loses nor (thanks to idempotent writes) duplicates a span."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from collectors.ingest.decode import BadPayload, decode_request
from collectors.ingest.pipeline import Pipeline

log = logging.getLogger(__name__)


def group_for(topic: str) -> str:
    """The consumer group of the collectors reading topic: collectors reading the same topic
    share its partitions; collectors reading different topics never share a group."""
    return f"flowscope-collector.{topic}"


async def consume_spans_topic(bootstrap: str, topic: str, pipeline: Pipeline,
                              stopping: asyncio.Event, group: str | None = None) -> None:
    """Consume the spans topic until stopping; reconnect through broker outages."""
    group = group or group_for(topic)
    delay = 1.0
    while not stopping.is_set():
        # A short poll interval bounds the rebalance timeout: a collector restarted after a
        # crash in the middle of a rebalance waits a minute for its partitions, not five.
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=100, max_partition_fetch_bytes=16 << 20,
                                    max_poll_interval_ms=60_000, session_timeout_ms=10_000,
                                    heartbeat_interval_ms=3_000)
        try:
            await consumer.start()
            delay = 1.0
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=50)
                for tp, records in batch.items():
                    for record in records:
                        await _ingest_one(pipeline, record.value, record.topic,
                                          record.partition, record.offset)
                    await consumer.commit({tp: records[-1].offset + 1})
        except KafkaError as exc:
            pipeline.count("spans_topic_reconnects")
            log.warning("spans topic %s: %s; reconnecting in %.0fs", topic, exc, delay)
        finally:
            try:
                await consumer.stop()
            except KafkaError:
                log.debug("consumer stop failed", exc_info=True)
        if not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 15.0)


async def _ingest_one(pipeline: Pipeline, value: bytes | None, topic: str, partition: int,
                      offset: int) -> None:
    try:
        export = decode_request(value or b"", "application/x-protobuf")
    except BadPayload as exc:
        pipeline.count("spans_topic_garbage")
        log.warning("skipping garbage on %s[%d]@%d: %s", topic, partition, offset, exc)
        return
    await pipeline.ingest(export, value, "kafka")
