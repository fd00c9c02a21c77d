"""The loop every collector consumer runs: consume batches, handle, commit.

- A record the handler cannot take is counted, logged once with its topic, partition and
  offset, and skipped: the loop commits past it and goes on.
- When the store cannot take a write (disk full, read-only), nothing is committed: the
  consumer leaves, waits with backoff and reads the same records again from the last commit.
- Through broker outages it reconnects with backoff from the last committed offsets.
Each of these shows in health and in the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from collectors.ingest.pipeline import Pipeline
from collectors.supervise import Health
from store.contract import StoreUnavailable

log = logging.getLogger(__name__)
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
MAX_BACKOFF_S = 15.0
PROBE_EVERY_S = 10.0  # an idle consumer checks it still reaches the broker this often
PROBE_RETRY_S = 2.0  # and this often while it does not
PROBE_TIMEOUT_S = 5.0


async def consume_until_stopped(make_consumer: Callable[[], Awaitable[AIOKafkaConsumer]],
                                handle: Callable[[Batch], Awaitable[None]], *, name: str,
                                pipeline: Pipeline, health: Health, stopping: asyncio.Event,
                                max_records: int) -> None:
    """Run make_consumer's consumer until stopping; commit each batch after handle(batch)."""
    delay = 1.0
    while not stopping.is_set():
        consumer: AIOKafkaConsumer | None = None
        try:
            consumer = await make_consumer()
            health.ok(name)
            watch = BrokerWatch(name, pipeline, health)
            while not stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
                if batch:
                    await handle_isolated(batch, handle, name=name, pipeline=pipeline)
                    await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
                    delay = 1.0
                    watch.heard()
                else:
                    await watch.probe(consumer)
        except StoreUnavailable as exc:
            pipeline.count(f"{name}_store_unavailable")
            health.degraded(name, f"store unavailable, nothing committed: {exc}")
            log.warning("%s: %s; nothing committed, reading again in %.0fs", name, exc, delay)
        except KafkaError as exc:
            pipeline.count(f"{name}_reconnects")
            health.degraded(name, f"broker: {type(exc).__name__}: {exc}; reconnecting")
            log.warning("%s: %s; reconnecting in %.0fs", name, exc, delay)
        finally:
            if consumer is not None:
                await _stop_quietly(consumer, name)
        if not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, MAX_BACKOFF_S)


class BrokerWatch:
    """Whether an idle consumer still reaches its broker. aiokafka retries a lost broker
    inside getmany, which then just returns nothing: without asking, an outage would look
    like a quiet topic. An idle consumer asks for metadata every PROBE_EVERY_S; an outage
    degrades the component, and its end is counted as a reconnect."""

    def __init__(self, name: str, pipeline: Pipeline, health: Health) -> None:
        self.name, self.pipeline, self.health = name, pipeline, health
        self.last_contact = time.monotonic()
        self.unreachable_since: float | None = None

    def heard(self) -> None:
        """Records came: the broker is there."""
        self.last_contact = time.monotonic()
        if self.unreachable_since is not None:
            self._reachable()
        self.health.ok(self.name)

    async def probe(self, consumer: AIOKafkaConsumer) -> None:
        """Ask the broker for metadata when nothing was heard for a while."""
        wait = PROBE_RETRY_S if self.unreachable_since is not None else PROBE_EVERY_S
        if time.monotonic() - self.last_contact < wait:
            return
        try:
            await asyncio.wait_for(consumer.topics(), PROBE_TIMEOUT_S)
        except (KafkaError, TimeoutError, OSError) as exc:
            self.last_contact = time.monotonic()
            if self.unreachable_since is None:
                self.unreachable_since = self.last_contact
                self.pipeline.count(f"{self.name}_broker_unreachable")
                log.warning("%s: the broker does not answer (%s); retrying", self.name,
                            type(exc).__name__)
            self.health.degraded(self.name, f"broker unreachable for "
                                 f"{time.monotonic() - self.unreachable_since:.0f}s: "
                                 f"{type(exc).__name__}: {exc}")
            return
        self.heard()

    def _reachable(self) -> None:
        assert self.unreachable_since is not None
        self.pipeline.count(f"{self.name}_reconnects")
        log.info("%s: the broker answers again after %.0fs", self.name,
                 time.monotonic() - self.unreachable_since)
        self.unreachable_since = None


async def handle_isolated(batch: Batch, handle: Callable[[Batch], Awaitable[None]], *,
                          name: str, pipeline: Pipeline) -> None:
    """handle(batch); when it fails on something in the batch, each record alone, so that
    one record it cannot take costs only that record (counted and logged with where it is).
    StoreUnavailable is no record's fault: it goes up, and nothing is skipped."""
    try:
        await handle(batch)
        return
    except StoreUnavailable:
        raise
    except Exception:
        log.debug("%s: a batch failed; handling its records one by one", name, exc_info=True)
    for tp, records in batch.items():
        for record in records:
            try:
                await handle({tp: [record]})
            except StoreUnavailable:
                raise
            except Exception:
                pipeline.count(f"{name}_skipped_records")
                log.exception("%s: skipped the record at %s[%d]@%d", name, tp.topic,
                              tp.partition, record.offset)


async def _stop_quietly(consumer: AIOKafkaConsumer, name: str) -> None:
    try:
        await asyncio.wait_for(consumer.stop(), 15)
    except (KafkaError, TimeoutError, OSError):
        log.debug("%s: consumer stop failed", name, exc_info=True)
