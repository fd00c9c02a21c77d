"""Competing consumers on one RabbitMQ queue: traced, manually acknowledged, poison-safe and
pausable by the control topic's pause commands.

Each consumer has its own channel and prefetch, and handles its deliveries concurrently. A
delivery is acknowledged only once it was handled and everything it produced was confirmed,
or once it was dead-lettered; when an output could not be sent it is requeued after a backoff
(bounded), so a broker outage delays messages and loses none. A delivery whose headers or body
are invalid is dead-lettered with the reason (or, without a dead-letter exchange, logged,
counted and dropped) and never stops the consumer; one without a trace context starts a new
trace. While the service's pause for its group lasts, the consumers are cancelled (the queue
has none and its backlog builds) and they consume again after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from opentelemetry.trace import Span

from demo_services import amqp_tracing as tracing
from demo_services import instrumentation as inst
from demo_services.amqp import AmqpLink
from demo_services.producer import SendFailed, describe
from demo_services.retry import Backoff
from demo_services.runtime import (
    BadMessage,
    Decoded,
    PermanentFailure,
    Service,
    decode_payload,
)

log = logging.getLogger(__name__)
RPC_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 10.0


class DeadLetter(Exception):
    """Raised by a handler: dead-letter this delivery with exactly this reason (the handler
    has recorded the failure on its span)."""


@dataclass(kw_only=True)
class Delivery(Decoded):
    """A consumed RabbitMQ message, decoded: the delivery, its queue and its headers."""

    message: AbstractIncomingMessage
    queue: str  # the full queue name
    headers: dict[str, Any]


DeliveryHandler = Callable[[Delivery], Awaitable[None]]


def where(queue: str, message: AbstractIncomingMessage) -> str:
    """A delivery's coordinates for logs: queue, delivery tag and message ID."""
    return f"{queue} delivery {message.delivery_tag} (message {message.message_id or '-'})"


def correlation_of(message: AbstractIncomingMessage, headers: dict[str, Any]) -> str:
    """The flow's correlation ID: the header, else the AMQP property, else the message ID,
    else a new one (a message from outside the demo)."""
    for candidate in (tracing.header_text(headers, inst.CORRELATION_HEADER),
                      message.correlation_id, message.message_id):
        if isinstance(candidate, str) and 0 < len(candidate) < tracing.MAX_HEADER_TEXT:
            return candidate
    return str(uuid.uuid4())


def dead_letter_headers(headers: dict[str, Any], reason: str, *, queue: str, service: str
                        ) -> dict[str, Any]:
    """The headers of a dead-lettered copy: the original's that are valid, the reason, where
    it came from and the names of the headers left out."""
    kept = {name: value for name, value in headers.items()
            if not tracing.header_problems({name: value})}
    dropped = sorted(set(headers) - set(kept))
    kept.update({tracing.DEAD_LETTER_REASON_HEADER: reason[:1000],
                 "x-dead-letter-queue": queue, "x-dead-letter-service": service})
    if dropped:
        kept["x-dead-letter-dropped-headers"] = ", ".join(dropped)[:1000]
    return kept


@dataclass
class Subscription:
    """`consumers` competing consumers of one queue, each on its own channel."""

    service: Service
    link: AmqpLink
    queue: str  # short name (exchanges.py); the configuration's prefix is added
    group: str  # the name pause commands use
    handler: DeliveryHandler
    consumers: int = 1
    prefetch: int = 1
    dead_letters: str | None = None  # short exchange name; None: log, count and drop
    check_every_s: float = 0.2
    counts: Counter[str] = field(default_factory=Counter)
    redeliveries: Backoff = field(default_factory=lambda: Backoff(0.2, 5.0))
    _queues: list[AbstractQueue] = field(default_factory=list)
    _tags: dict[int, str] = field(default_factory=dict)
    _inflight: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.consumers < 1 or self.prefetch < 1:
            raise ValueError("consumers and prefetch must be at least 1")

    @property
    def full_queue(self) -> str:
        """The queue's full name."""
        return self.service.config.topic(self.queue)

    @property
    def group_id(self) -> str:
        """The full name pause commands are kept under."""
        return self.service.config.group(self.group)

    @property
    def consuming(self) -> bool:
        """True while every consumer is registered with the broker."""
        return len(self._tags) == self.consumers

    async def run(self) -> None:
        """Consume until the service stops, following pause commands; then drain and close."""
        if not await self.link.connect_until_ready(self.service.stopping):
            return
        channels = [await self.link.channel(self.prefetch) for _ in range(self.consumers)]
        self._queues = [await channel.declare_queue(self.full_queue, durable=True)
                        for channel in channels]
        try:
            while not self.service.stopping.is_set():
                await self._follow_pause()
                await self.service.sleep(self.check_every_s)
        finally:
            await self._cancel_consumers()
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=DRAIN_TIMEOUT_S)
            for channel in channels:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), RPC_TIMEOUT_S)
            log.info("%s: stopped consuming %s (%s)", self.service.name, self.full_queue,
                     dict(self.counts))

    async def _follow_pause(self) -> None:
        paused = self.service.is_paused(self.group_id)
        if paused and self._tags:
            await self._cancel_consumers()
            log.warning("%s: consumers of %s cancelled while %s is paused", self.service.name,
                        self.full_queue, self.group_id)
        elif not paused and not self.consuming:
            await self._start_consumers()

    async def _start_consumers(self) -> None:
        for index, queue in enumerate(self._queues):
            if index in self._tags:
                continue
            try:
                self._tags[index] = await asyncio.wait_for(queue.consume(self._on_message),
                                                           RPC_TIMEOUT_S)
            except Exception as exc:  # the broker is away: the next check tries again
                log.warning("%s: cannot consume %s yet: %s", self.service.name,
                            self.full_queue, describe(exc))
                return
        log.info("%s: consuming %s with %d consumer(s), prefetch %d", self.service.name,
                 self.full_queue, self.consumers, self.prefetch)

    async def _cancel_consumers(self) -> None:
        for index, tag in list(self._tags.items()):
            del self._tags[index]  # a robust queue forgets it at once: never restored
            try:
                await asyncio.wait_for(self._queues[index].cancel(tag), RPC_TIMEOUT_S)
            except Exception as exc:  # the channel is gone, and the consumer with it
                log.warning("%s: cancelling consumer %s of %s: %s", self.service.name, tag,
                            self.full_queue, describe(exc))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self._process(message)
        except Exception:  # a boundary: one delivery never ends the consumer
            self.counts["crashed"] += 1
            log.exception("%s: %s failed outside its handler; it stays unacknowledged until "
                          "its channel closes", self.service.name, where(self.full_queue, message))
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        correlation_id = correlation_of(message, headers)
        attempt = tracing.read_attempt(headers)
        exchange, key = message.exchange or "", message.routing_key or ""
        attributes = tracing.process_attributes(
            exchange=exchange, routing_key=key, queue=self.full_queue,
            message_id=message.message_id, correlation_id=correlation_id,
            delivery_tag=message.delivery_tag, attempt=attempt, size=len(message.body),
            server=self.link.server)
        name = f"process {tracing.destination_name(exchange, key, self.full_queue)}"
        with inst.process_span(self.service.tracer, name, tracing.extract_context(headers),
                               attributes) as span:
            settled = await self._handle(message, headers, span, correlation_id=correlation_id,
                                         attempt=attempt)
        if settled:
            await self._settle(message, ack=True)
            self.redeliveries.reset()

    async def _handle(self, message: AbstractIncomingMessage, headers: dict[str, Any],
                      span: Span, *, correlation_id: str, attempt: int) -> bool:
        """Handle one delivery in its span: True when it may be acknowledged (handled, or
        dead-lettered), False when it was requeued."""
        try:
            problems = tracing.header_problems(headers)
            if problems:
                raise BadMessage("; ".join(problems))
            await self.handler(Delivery(decode_payload(message.body), correlation_id, attempt,
                                        span, message=message, queue=self.full_queue,
                                        headers=headers))
            return True
        except (BadMessage, PermanentFailure, DeadLetter) as exc:
            if not isinstance(exc, DeadLetter):  # a DeadLetter's handler marked the span
                tracing.fail_span(span, exc)
            kind = {BadMessage: "invalid message: ", PermanentFailure: "permanent failure: "}
            reason = f"{kind.get(type(exc), '')}{exc}"
        except SendFailed as exc:
            tracing.fail_span(span, exc)
            await self._requeue_later(message, exc)
            return False
        except Exception as exc:  # a boundary: a message the handler chokes on is poison
            log.exception("%s: handling %s failed", self.service.name,
                          where(self.full_queue, message))
            tracing.fail_span(span, exc)
            reason = f"handling failed: {describe(exc)}"
        return await self._dead_letter(message, headers, correlation_id, reason)

    async def _dead_letter(self, message: AbstractIncomingMessage, headers: dict[str, Any],
                           correlation_id: str, reason: str) -> bool:
        """Hand a delivery to the dead-letter exchange; False when that failed (requeued)."""
        origin = where(self.full_queue, message)
        if self.dead_letters is None:
            self.counts["dropped"] += 1
            log.warning("%s: dropping %s (%s): %s", self.service.name, origin, correlation_id,
                        reason)
            return True
        log.warning("%s: dead-lettering %s (%s): %s", self.service.name, origin,
                    correlation_id, reason)
        out = dead_letter_headers(headers, reason, queue=self.full_queue,
                                  service=self.service.name)
        try:
            await self.link.publish(self.dead_letters, "", message.body,
                                    correlation_id=correlation_id, headers=out)
        except SendFailed as exc:
            await self._requeue_later(message, exc)
            return False
        self.counts["dead-lettered"] += 1
        return True

    async def _requeue_later(self, message: AbstractIncomingMessage, exc: SendFailed) -> None:
        delay = self.redeliveries.next_s()
        self.counts["requeued"] += 1
        log.warning("%s: outputs of %s failed (%s); requeued in %.1fs", self.service.name,
                    where(self.full_queue, message), exc.reason, delay)
        await self.service.sleep(delay)
        await self._settle(message, ack=False)

    async def _settle(self, message: AbstractIncomingMessage, *, ack: bool) -> None:
        try:
            if ack:
                await message.ack()
                self.counts["acked"] += 1
            else:
                await message.nack(requeue=True)
        except Exception as exc:  # the channel closed: the broker redelivers it
            log.warning("%s: cannot %s %s (%s); the broker will redeliver it",
                        self.service.name, "ack" if ack else "requeue",
                        where(self.full_queue, message), describe(exc))


async def subscribe(service: Service, queue: str, group: str,
                    make_handler: Callable[[AmqpLink], DeliveryHandler], **options: Any) -> None:
    """Run one Subscription on a link of its own until the service stops; options are the
    Subscription's (consumers, prefetch, dead_letters)."""
    if not service.config.rabbitmq_url:
        raise ValueError(f"{service.name} consumes RabbitMQ: set FLOWSCOPE_DEMO_RABBITMQ_URL")
    link = AmqpLink(service.config, service.name, service.tracer)
    try:
        await Subscription(service, link, queue, group, make_handler(link), **options).run()
    finally:
        await link.close()
