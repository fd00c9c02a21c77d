"""The loop every collector consumer runs: consume batches, handle, commit; through broker
outages, reconnect with backoff from the last committed offsets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from collectors.ingest.pipeline import Pipeline

log = logging.getLogger(__name__)
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


async def consume_until_stopped(make_consumer: Callable[[], Awaitable[AIOKafkaConsumer]],
                                handle: Callable[[Batch], Awaitable[None]], *, name: str,
                                pipeline: Pipeline, stopping: asyncio.Event,
                                max_records: int) -> None:
    """Run make_consumer's consumer until stopping; commit each batch after handle(batch)."""
    delay = 1.0
    while not stopping.is_set():
        consumer: AIOKafkaConsumer | None = None
        try:
            consumer = await make_consumer()
            delay = 1.0
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
                if batch:
                    await handle(batch)
                    await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
        except KafkaError as exc:
            pipeline.count(f"{name.replace(' ', '_')}_reconnects")
            log.warning("%s: %s; reconnecting in %.0fs", name, exc, delay)
        finally:
            if consumer is not None:
                try:
                    await consumer.stop()
                except KafkaError:
                    log.debug("%s: consumer stop failed", name, exc_info=True)
        if not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 15.0)
