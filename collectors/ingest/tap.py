"""The message tap: reads the business topics with a group of its own (read-only: it never
writes to them) and records, per message, its coordinates, key, size, correlation ID, trace ID
and retry attempt, so that flows show messages even where no service sent spans, and so that
propagation health (the share of messages with a valid traceparent) can be told per topic."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from collectors.ingest import headers as hdr
from collectors.ingest.consuming import Batch, consume_until_stopped
from collectors.ingest.pipeline import Pipeline
from collectors.normalize import as_count
from collectors.supervise import Health
from store.records import INT64_MAX, INT64_MIN, MessageRecord

log = logging.getLogger(__name__)
TAP_GROUP = "flowscope-tap"
COMPONENT = "tap"
# A message's time is kept in ms and compared in ns: both must fit the store's int64.
MAX_TIMESTAMP_MS = INT64_MAX // 1_000_000
MIN_TIMESTAMP_MS = INT64_MIN // 1_000_000 + 1


def topic_pattern(include: str | None, exclude: tuple[str, ...]) -> re.Pattern[str]:
    """Every topic but Kafka's internal ones and the excluded, or those matching include."""
    if include:
        return re.compile(include)
    excluded = "|".join(re.escape(t) for t in exclude)
    return re.compile(rf"^(?!__)(?!(?:{excluded})$).+$" if excluded else r"^(?!__).+$")


def tap_record(record: ConsumerRecord[bytes, bytes], *, keep_headers: bool) -> MessageRecord:
    """What the tap keeps of one message. Odd headers and keys (not UTF-8, too long, too many,
    null values) are kept as hex, cut or marked truncated, never raised on. A record
    without a timestamp (message format v0, from an old broker) raises TypeError: run_tap's
    handler goes through handle_isolated (collectors/ingest/consuming.py), which counts such
    a record in tap_skipped_records, logs where it is, and skips it."""
    headers = list(record.headers or ())
    correlation, cut_correlation = hdr.header_text(
        hdr.first_header(headers, "correlation-id"), 128)
    attempt_text, cut_attempt = hdr.header_text(hdr.first_header(headers, "retry-attempt"), 8)
    key, cut_key = hdr.header_text(record.key, 256)
    shown, cut_headers = hdr.bounded_headers(headers) if keep_headers else ([], False)
    return MessageRecord(
        topic=record.topic, partition=record.partition, offset=record.offset,
        timestamp_ms=min(max(record.timestamp, MIN_TIMESTAMP_MS), MAX_TIMESTAMP_MS),
        key=key, size=len(record.value or b""),
        correlation_id=correlation,
        trace_id=hdr.trace_id_of(hdr.first_header(headers, "traceparent")),
        retry_attempt=None if cut_attempt else as_count(attempt_text),
        headers=json.dumps(shown) if keep_headers else None,
        truncated=cut_correlation or cut_key or cut_headers)


async def run_tap(bootstrap: str, pattern: re.Pattern[str], pipeline: Pipeline, health: Health,
                  stopping: asyncio.Event, *, keep_headers_of: Callable[[str], bool],
                  offset_reset: str = "earliest", group: str = TAP_GROUP) -> None:
    """Tap the matching topics until stopping; reconnect through broker outages."""

    async def make_consumer() -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False, auto_offset_reset=offset_reset,
                                    metadata_max_age_ms=10_000, fetch_max_wait_ms=200,
                                    max_poll_interval_ms=60_000)
        await consumer.start()
        consumer.subscribe(pattern=pattern.pattern)
        return consumer

    async def handle(batch: Batch) -> None:
        await pipeline.write_messages([tap_record(r, keep_headers=keep_headers_of(r.topic))
                                       for records in batch.values() for r in records])

    await consume_until_stopped(make_consumer, handle, name=COMPONENT, pipeline=pipeline,
                                health=health, stopping=stopping, max_records=500)
