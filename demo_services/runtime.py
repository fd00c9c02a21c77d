"""What every demo service shares: a traced producer, consumer workers, retries, dead letters,
pause commands and a clean stop on SIGINT/SIGTERM.

Delivery: producers are idempotent (acks=all) and replaced when their state turns fatal; a
worker commits a message's offset only after the message was handled and everything it produced
was acknowledged, or after it was handed to a retry or dead-letter topic, so a crash replays
messages instead of losing them. A message whose outputs could not be sent is handled again
(after a backoff) without leaving the consumer group; a consumer error reconnects the consumer
from the last committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from demo_services import instrumentation as inst
from demo_services import topics
from demo_services.config import DemoConfig
from demo_services.faults import Simulation
from demo_services.producer import ReplaceableProducer, SendFailed
from demo_services.retry import Backoff, RetryPolicy

log = logging.getLogger(__name__)


class BadMessage(Exception):
    """A message that can never be handled (not JSON, missing fields): it is dead-lettered."""


class PermanentFailure(Exception):
    """Handling failed for good (say, a corrupt file): the message is dead-lettered at once."""


class TransientFailure(Exception):
    """Handling failed this time: the message is retried later, with backoff."""

# Set by the supervisor: the file a service touches once it listens (Service.mark_ready).
READY_FILE_VARIABLE = "FLOWSCOPE_DEMO_READY_FILE"


@dataclass
class Decoded:
    """What a handler gets of a consumed message, from Kafka or RabbitMQ alike: its payload,
    its flow's correlation ID, its attempt number and the span that handles it."""

    payload: dict[str, Any]
    correlation_id: str
    attempt: int
    span: Span

    def require(self, *names: str) -> None:
        """Raise BadMessage naming every field the payload lacks (missing, null or empty)."""
        missing = [name for name in names if self.payload.get(name) in (None, "")]
        if missing:
            raise BadMessage(f"missing field(s): {', '.join(missing)}")


@dataclass(kw_only=True)
class Incoming(Decoded):
    """A consumed Kafka message, decoded: the record."""

    record: ConsumerRecord[bytes, bytes]


Handler = Callable[[Incoming], Awaitable[None]]


def decode_payload(value: bytes | None) -> dict[str, Any]:
    """The JSON object in a message's value, or BadMessage saying why not."""
    if not value:
        raise BadMessage("empty message value")
    try:
        payload = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"value is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadMessage(f"value is JSON {type(payload).__name__}, not an object")
    return payload


def read_attempt(headers: inst.Headers | None) -> int:
    """The attempt number in the retry header (1 when absent or not a number)."""
    text = inst.header_text(headers, inst.RETRY_ATTEMPT_HEADER)
    return int(text) if text and text.isdigit() and 0 < int(text) < 1000 else 1


@dataclass
class Service:
    """One running demo service: configuration, tracing, producer and pause state."""

    name: str
    config: DemoConfig
    tracer: trace.Tracer
    producer: ReplaceableProducer | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    paused_until: dict[str, float] = field(default_factory=dict)

    @property
    def client_id(self) -> str:
        """The Kafka client id of this service's producer and consumers."""
        return f"{self.name}"

    @property
    def defaults(self) -> Simulation:
        """Simulated-failure settings when a message carries none of its own."""
        c = self.config
        return Simulation(c.transient_failure, c.permanent_failure, c.callback_failure,
                          c.inventory_failure, c.work_ms, c.thumbnail_failure,
                          c.tracking_failure, c.billing_failure)

    def mark_ready(self) -> None:
        """Tell the supervisor this service listens (a subscriber that would miss what is sent
        before it subscribes); nothing when no supervisor asks."""
        path = os.environ.get(READY_FILE_VARIABLE)
        if path:
            try:
                Path(path).touch()
            except OSError as exc:  # the supervisor then says the service did not get ready
                log.warning("%s: cannot mark itself ready in %s: %s", self.name, path, exc)

    async def start(self) -> None:
        """Connect the idempotent producer."""
        self.producer = ReplaceableProducer(self._new_producer, name=self.name)
        await self.producer.start()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(bootstrap_servers=self.config.bootstrap, enable_idempotence=True,
                                client_id=self.client_id, request_timeout_ms=15_000)

    async def close(self) -> None:
        """Flush and disconnect the producer."""
        if self.producer is not None:
            await self.producer.close()

    async def send(self, topic: str, payload: dict[str, Any] | bytes, *, key: str | None,
                   correlation_id: str, headers: Iterable[tuple[str, bytes]] = ()) -> None:
        """Send one message in a PRODUCER span and wait for the broker's acknowledgement;
        SendFailed when it was not written."""
        assert self.producer is not None, "Service.start() first"
        full_topic = self.config.topic(topic)
        value = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        out = [(k, v) for k, v in headers if k not in inst.PROPAGATION_FIELDS
               and k != inst.CORRELATION_HEADER]
        out.append((inst.CORRELATION_HEADER, correlation_id.encode()))
        attributes = inst.send_attributes(full_topic, key=key, correlation_id=correlation_id,
                                          client_id=self.client_id, size=len(value))
        # A plain start_span, never made current: nothing runs inside this span but the send,
        # and skipping the context attach/detach takes about a quarter off its cost.
        span = self.tracer.start_span(f"send {full_topic}", kind=SpanKind.PRODUCER,
                                      attributes=attributes)
        try:
            inst.inject_headers(out, trace.set_span_in_context(span))
            sent = await self.producer.send_and_wait(
                full_topic, value, key=key.encode() if key is not None else None, headers=out)
            inst.set_attributes(span, inst.sent_attributes(full_topic, sent.partition,
                                                           sent.offset))
        except SendFailed as exc:
            inst.mark_error(span, exc.error_type, exc.reason)
            raise
        except Exception as exc:
            inst.mark_error(span, type(exc).__qualname__, str(exc))
            raise
        finally:
            span.end()

    async def retry(self, incoming: Incoming, reason: str, retry_topic: str, dlq_topic: str,
                    policy: RetryPolicy) -> None:
        """Send a failed message to its retry topic with backoff, or dead-letter it when spent."""
        if incoming.attempt >= policy.max_attempts:
            await self.dead_letter(incoming.record, incoming.correlation_id, dlq_topic,
                                   f"gave up after {incoming.attempt} attempts: {reason}")
            return
        next_attempt = incoming.attempt + 1
        not_before = int(time.time() * 1000) + policy.backoff_ms(incoming.attempt)
        headers = [(k, v) for k, v in incoming.record.headers
                   if not k.startswith("retry-")]
        headers += [(inst.RETRY_ATTEMPT_HEADER, str(next_attempt).encode()),
                    (inst.RETRY_NOT_BEFORE_HEADER, str(not_before).encode()),
                    (inst.RETRY_REASON_HEADER, reason[:500].encode()),
                    ("retry-original-topic", incoming.record.topic.encode())]
        record = incoming.record
        await self.send(retry_topic, record.value or b"", correlation_id=incoming.correlation_id,
                        key=record.key.decode(errors="replace") if record.key else None,
                        headers=headers)

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], correlation_id: str,
                          dlq_topic: str, reason: str) -> None:
        """Send a message, unchanged, to a dead-letter topic with the reason in its headers."""
        log.warning("dead-lettering %s[%d]@%d (%s): %s", record.topic, record.partition,
                    record.offset, correlation_id, reason)
        headers = [(k, v) for k, v in record.headers or () if not k.startswith("dlq-")]
        headers += [(inst.DLQ_REASON_HEADER, reason[:1000].encode()),
                    ("dlq-original-topic", record.topic.encode()),
                    ("dlq-original-partition", str(record.partition).encode()),
                    ("dlq-original-offset", str(record.offset).encode()),
                    ("dlq-service", self.name.encode())]
        await self.send(dlq_topic, record.value or b"", correlation_id=correlation_id,
                        key=record.key.decode(errors="replace") if record.key else None,
                        headers=headers)

    def pause(self, group: str, seconds: float) -> None:
        """Stop consuming for group for a while (commands from the control topic)."""
        self.paused_until[self.config.group(group)] = time.monotonic() + seconds
        log.warning("consumer group %s paused for %.1fs", self.config.group(group), seconds)

    def is_paused(self, group: str) -> bool:
        """True while group is paused."""
        return time.monotonic() < self.paused_until.get(group, 0.0)

    async def sleep(self, seconds: float) -> None:
        """Wait seconds, or less when the service stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)


async def stop_consumer(consumer: AIOKafkaConsumer, owner: str) -> None:
    """Stop a consumer, whatever state a broker outage left it in."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # aiokafka's fetcher cancels its pending fetch tasks and awaits them without catching
        # their CancelledError: a stop while a fetch waits out an error backoff raises it here
        # (it is not this task's cancellation) and skips closing the client's connections.
        log.warning("%s: consumer stop was interrupted by a pending fetch; closing its client",
                    owner)
        await consumer._client.close()
    except KafkaError as exc:
        log.warning("%s: stopping the consumer failed: %s", owner, exc)


@dataclass
class Worker:
    """One consumer group of a service: consume, handle, produce, then commit."""

    service: Service
    group: str
    topics: list[str]
    handler: Handler
    dlq_topic: str
    honour_not_before: bool = False
    max_wait_s: float = 30.0
    reconnects: Backoff = field(default_factory=lambda: Backoff(0.5, 10.0))
    redeliveries: Backoff = field(default_factory=lambda: Backoff(0.2, 5.0))

    @property
    def group_id(self) -> str:
        """The full consumer group name."""
        return self.service.config.group(self.group)

    async def run(self) -> None:
        """Consume until the service stops; on a consumer error, reconnect from the last commit."""
        while not self.service.stopping.is_set():
            try:
                await self._consume()
                return
            except KafkaError as exc:
                delay = self.reconnects.next_s()
                log.error("%s: Kafka error (%s); reconnecting in %.1fs from the last committed "
                          "offsets", self.group_id, exc, delay)
                await self.service.sleep(delay)

    async def _consume(self) -> None:
        config = self.service.config
        consumer = AIOKafkaConsumer(
            *[config.topic(t) for t in self.topics], bootstrap_servers=config.bootstrap,
            group_id=self.group_id, client_id=self.service.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_interval_ms=300_000, fetch_max_wait_ms=50)
        await consumer.start()
        try:
            while not self.service.stopping.is_set():
                if self.service.is_paused(self.group_id):
                    consumer.pause(*consumer.assignment())
                elif consumer.paused():
                    consumer.resume(*consumer.paused())
                batch = await consumer.getmany(timeout_ms=300, max_records=50)
                handled = [await self._handle_partition(consumer, tp, records)
                           for tp, records in batch.items()]
                if not all(handled):
                    await self.service.sleep(self.redeliveries.next_s())
                elif handled:
                    self.redeliveries.reset()
        finally:
            await stop_consumer(consumer, self.group_id)

    async def _handle_partition(self, consumer: AIOKafkaConsumer, tp: TopicPartition,
                                records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        """Handle records in order and commit them; at the first whose outputs failed, commit
        those before it and seek back to it, so it is handled again (False)."""
        for record in records:
            try:
                await self._handle(record)
            except SendFailed as exc:
                log.warning("%s: outputs of %s[%d]@%d failed (%s); it will be handled again",
                            self.group_id, record.topic, record.partition, record.offset,
                            exc.reason)
                if record is not records[0]:
                    await consumer.commit({tp: record.offset})
                consumer.seek(tp, record.offset)
                return False
        await consumer.commit({tp: records[-1].offset + 1})
        self.reconnects.reset()
        return True

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        correlation_id = (inst.header_text(record.headers, inst.CORRELATION_HEADER)
                          or f"{record.topic}.{record.partition}.{record.offset}")
        attempt = read_attempt(record.headers)
        attributes = inst.process_attributes(
            topic=record.topic, partition=record.partition, offset=record.offset,
            key=record.key, group=self.group_id, client_id=self.service.client_id,
            correlation_id=correlation_id, attempt=attempt, size=len(record.value or b""))
        if self.honour_not_before:
            # before the span: a retry waiting out its backoff is waiting in the topic, not
            # being processed, and a trace or waterfall should show it so
            await self._wait_until_due(record)
        with inst.consumer_span(self.service.tracer, record.topic, record.headers,
                                attributes) as span:
            try:
                payload = decode_payload(record.value)
                await self.handler(Incoming(payload, correlation_id, attempt, span,
                                            record=record))
            except (BadMessage, PermanentFailure) as exc:
                inst.mark_error(span, type(exc).__name__, str(exc))
                kind = "invalid message" if isinstance(exc, BadMessage) else "permanent failure"
                await self.service.dead_letter(record, correlation_id, self.dlq_topic,
                                               f"{kind}: {exc}")

    async def _wait_until_due(self, record: ConsumerRecord[bytes, bytes]) -> None:
        text = inst.header_text(record.headers, inst.RETRY_NOT_BEFORE_HEADER)
        if text and text.isdigit():
            wait = min(int(text) / 1000 - time.time(), self.max_wait_s)
            if wait > 0:
                await self.service.sleep(wait)


async def listen_for_commands(service: Service) -> None:
    """Apply pause commands from the control topic to this service's consumer groups; on a
    broker error, reconnect."""
    backoff = Backoff(0.5, 10.0)
    while not service.stopping.is_set():
        try:
            await _follow_commands(service)
            return
        except KafkaError as exc:
            delay = backoff.next_s()
            log.error("control topic: Kafka error (%s); reconnecting in %.1fs", exc, delay)
            await service.sleep(delay)


async def _follow_commands(service: Service) -> None:
    consumer = AIOKafkaConsumer(service.config.topic(topics.CONTROL),
                                bootstrap_servers=service.config.bootstrap, group_id=None,
                                auto_offset_reset="latest")
    await consumer.start()
    try:
        while not service.stopping.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for record in (r for records in batch.values() for r in records):
                try:
                    command = json.loads(record.value or b"")
                    if command.get("command") == "pause":
                        service.pause(str(command["group"]), float(command["seconds"]))
                except (ValueError, KeyError, TypeError, AttributeError):
                    log.warning("ignoring malformed control message at offset %d", record.offset)
    finally:
        await stop_consumer(consumer, "control topic")


def new_correlation_id() -> str:
    """A fresh correlation ID for a flow that starts here."""
    return str(uuid.uuid4())


async def run_service(service: Service, tasks: Callable[[Service], list[Awaitable[None]]],
                      ) -> None:
    """Run a service's tasks until SIGINT/SIGTERM, then stop cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, service.stopping.set)
    await service.start()
    running = [asyncio.ensure_future(t) for t in [*tasks(service), listen_for_commands(service)]]
    log.info("%s started", service.name)
    stopper = asyncio.ensure_future(service.stopping.wait())
    try:
        done, _ = await asyncio.wait([*running, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        service.stopping.set()
        await asyncio.wait(running, timeout=10)
        for task in running:
            task.cancel()
        await service.close()
        log.info("%s stopped", service.name)


def main(name: str, tasks: Callable[[Service], list[Awaitable[None]]]) -> None:
    """Entry point of one demo service process: configure, run until signalled, flush spans."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # aio-pika and aiormq log every reconnection attempt (each second while RabbitMQ is
    # down); demo_services.amqp says once when the connection is lost and when it is back.
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
    logging.getLogger("aio_pika.robust_connection").setLevel(logging.ERROR)
    # proton logs each (re)connection attempt; demo_services.artemis_reactor says it once.
    logging.getLogger("proton").setLevel(logging.WARNING)
    config = DemoConfig.from_env()
    provider = inst.setup_tracing(name)
    service = Service(name, config, trace.get_tracer(f"demo_services.{name}"))
    try:
        asyncio.run(run_service(service, tasks))
    finally:
        if provider is not None:
            provider.shutdown()
