"""The services' idempotent producer, replaced by a new one when its state turns fatal.

An idempotent aiokafka producer numbers the records of each partition, and the broker accepts
a batch only when its sequence number follows the last one it wrote. aiokafka 0.14 gives a
batch its number when the batch is taken for sending and never takes it back: a batch that then
fails (it waited longer than the request timeout for a partition without a leader, as after a
broker's controlled shutdown, or the broker refused it) leaves a gap, and the broker answers
every later batch of that partition with OutOfOrderSequenceNumber, forever. The producer never
repairs that, so the only way on is a new producer (a new producer ID, numbers from zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.structs import RecordMetadata

log = logging.getLogger(__name__)

# The broker no longer recognises the producer's ID, epoch or sequence numbers, or the producer
# was closed under the caller (a replaced one): no send through it can succeed again.
FATAL_ERRORS: tuple[type[KafkaError], ...] = (
    OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, InvalidProducerIdMapping,
    ProducerFenced, ProducerClosed)


class SendFailed(Exception):
    """A record was not written. `replaced`: another producer stands in for the one that failed,
    so sending again may succeed."""

    def __init__(self, reason: str, *, error_type: str, replaced: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type
        self.replaced = replaced


def describe(exc: BaseException) -> str:
    """An exception as `Type: message` (just the type when it has no message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fatal_reason(exc: BaseException, *, queued: bool) -> str | None:
    """Why a failed send leaves the producer unusable, or None when it does not.

    queued: the record had been accepted into the producer's queue (the failure came from its
    delivery), so its batch had already taken a sequence number that will never be written.
    """
    if isinstance(exc, FATAL_ERRORS):
        return f"{describe(exc)} (the broker no longer accepts this producer's records)"
    if not isinstance(exc, KafkaError):
        return None
    if type(exc) is KafkaError:
        # aiokafka raises the bare root class only when its background sender died
        return f"{describe(exc)} (the producer's sender stopped)"
    if queued:
        return (f"{describe(exc)} after the record was queued (its sequence number was used "
                f"but never written, so the partition's next records would be out of order)")
    return None


class ReplaceableProducer:
    """An idempotent producer that is closed and started anew when its state turns fatal.

    Concurrent sends that fail on the same producer cause one replacement, logged and counted
    once. The replaced producer is stopped in the background, so records it still holds are
    delivered (or fail, and their senders see SendFailed) instead of being dropped.
    """

    def __init__(self, factory: Callable[[], AIOKafkaProducer], *, name: str,
                 start_timeout_s: float = 15.0, retry_interval_s: float = 1.0) -> None:
        if start_timeout_s <= 0 or retry_interval_s < 0:
            raise ValueError("start_timeout_s must be positive, retry_interval_s not negative")
        self.name = name
        self.replacements = 0
        self._factory = factory
        self._start_timeout_s = start_timeout_s
        self._retry_interval_s = retry_interval_s
        self._producer: AIOKafkaProducer | None = None
        self._generation = 0
        self._broken: str | None = None
        self._start_error = ""
        self._attempts = 0
        self._failed_starts = 0
        self._next_attempt = 0.0
        self._closing = False
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the first producer."""
        self._producer = await self._start_new()

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes | None,
                            headers: Iterable[tuple[str, bytes]]) -> RecordMetadata:
        """Send one record and wait for its acknowledgement; SendFailed saying why not."""
        producer, generation = await self._usable()
        queued = False
        try:
            future = await producer.send(topic, value, key=key, headers=list(headers))
            queued = True
            return await future  # type: ignore[no-any-return]
        except KafkaError as exc:
            reason = fatal_reason(exc, queued=queued)
            if reason is not None:
                await self._replace(generation, reason)
            raise SendFailed(describe(exc), error_type=type(exc).__qualname__,
                             replaced=self._generation != generation) from exc

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush and stop the producer and any replaced one still finishing (bounded)."""
        self._closing = True
        if self._producer is not None:
            self._retire(self._producer)
            self._producer = None
        if self._retiring:
            _, late = await asyncio.wait(self._retiring, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("%s: %d producer(s) did not stop within %.0fs", self.name,
                            len(late), timeout_s)

    async def _usable(self) -> tuple[AIOKafkaProducer, int]:
        if self._closing:
            raise SendFailed("the service is stopping", error_type="ProducerClosed",
                             replaced=False)
        if self._broken is not None:
            await self._replace(self._generation, self._broken)
        if self._broken is not None:
            raise SendFailed(f"the producer must be replaced ({self._broken}) but a new one "
                             f"did not start: {self._start_error}",
                             error_type="ProducerUnavailable", replaced=False)
        assert self._producer is not None, "start() first"
        return self._producer, self._generation

    async def _replace(self, generation: int, reason: str) -> None:
        attempts = self._attempts
        async with self._lock:
            if generation != self._generation or self._closing:
                return  # another send already replaced the producer that failed
            self._broken = reason
            if attempts != self._attempts:
                return  # an attempt made while this caller waited for the lock answers it too
            await asyncio.sleep(max(0.0, self._next_attempt - time.monotonic()))
            self._attempts += 1
            try:
                new = await self._start_new()
            except (KafkaError, OSError, TimeoutError) as exc:
                self._start_error = describe(exc)
                self._next_attempt = time.monotonic() + self._retry_interval_s
                self._failed_starts += 1
                if self._failed_starts == 1:  # once per outage, not once per send
                    log.error("%s: producer must be replaced (%s) but a new one did not start: "
                              "%s; sends fail until one does", self.name, reason,
                              self._start_error)
                return
            old, self._producer = self._producer, new
            self._generation += 1
            self.replacements += 1
            self._broken = None
            log.warning("%s: producer replaced (replacement %d, after %d failed start(s)): %s",
                        self.name, self.replacements, self._failed_starts, reason)
            self._failed_starts = 0
            if old is not None:
                self._retire(old)

    async def _start_new(self) -> AIOKafkaProducer:
        producer = self._factory()
        try:
            await asyncio.wait_for(producer.start(), self._start_timeout_s)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), self._start_timeout_s)
            raise
        return producer

    def _retire(self, producer: AIOKafkaProducer) -> None:
        task = asyncio.ensure_future(self._stop(producer))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        try:
            await producer.stop()
        except Exception as exc:
            log.warning("%s: stopping a replaced producer failed: %s", self.name, describe(exc))
