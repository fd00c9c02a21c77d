"""A consumer of an Artemis queue over AMQP 1.0: traced, settled explicitly one delivery at a
time, poison-safe and pausable by the control topic's pause commands.

Each delivery is handled in its own CONSUMER span, then settled by what became of it
(settle_outcome): accepted once handled; settled as failed when handling failed transiently, so
that the broker counts it, delivers it again after its redelivery delay and, at
max-delivery-attempts, moves it to its dead-letter address; rejected when it is invalid or
failed for good, so that the broker dead-letters it at once; released (back to the queue, not
counted) after a backoff when an output could not be sent. One without a trace context starts
a new trace. While the service's pause for its group lasts the receiver is detached: the queue
has no consumer and its backlog builds, and drains when the receiver is back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Span

from demo_services import addresses
from demo_services import artemis_tracing as tracing
from demo_services import instrumentation as inst
from demo_services.artemis_delivery import Outcome, Received
from demo_services.artemis_link import ArtemisLink
from demo_services.producer import SendFailed, describe
from demo_services.retry import Backoff
from demo_services.runtime import (
    BadMessage,
    Decoded,
    PermanentFailure,
    Service,
    TransientFailure,
    decode_payload,
)

log = logging.getLogger(__name__)
DRAIN_TIMEOUT_S = 10.0


@dataclass(kw_only=True)
class QueueDelivery(Decoded):
    """A message from an Artemis queue, decoded: what was received, the queue and its
    application properties. Its attempt is the broker's delivery count plus one."""

    received: Received
    queue: str
    properties: dict[str, Any]


QueueHandler = Callable[[QueueDelivery], Awaitable[None]]


def settle_outcome(failure: BaseException | None) -> Outcome:
    """How a delivery is settled after its handler ended (failure None: it succeeded)."""
    if failure is None:
        return Outcome.ACCEPT
    if isinstance(failure, TransientFailure):
        return Outcome.RETRY
    if isinstance(failure, SendFailed):
        return Outcome.RELEASE
    return Outcome.REJECT  # invalid, failed for good, or a handler that choked on it


def correlation_of(received: Received) -> str:
    """The flow's correlation ID: the property, else the AMQP correlation-id, else the message
    ID, else a new one (a message from outside the demo)."""
    return (tracing.property_text(received.properties, inst.CORRELATION_HEADER)
            or received.correlation_id or received.message_id or str(uuid.uuid4()))


def where(queue: str, received: Received) -> str:
    """A delivery's coordinates for logs: queue, message ID and delivery count."""
    return (f"{queue} message {received.message_id or '-'} (delivery "
            f"{tracing.attempt_of(received.delivery_count)})")


@dataclass
class QueueConsumer:
    """One receiver of an anycast queue, or of a subscriber's queue on a multicast address."""

    service: Service
    link: ArtemisLink
    address: str  # full names
    queue: str
    group: str  # the name pause commands use
    handler: QueueHandler
    prefetch: int = 1
    multicast: bool = False
    check_every_s: float = 0.2
    counts: Counter[str] = field(default_factory=Counter)
    releases: Backoff = field(default_factory=lambda: Backoff(0.2, 5.0))
    _receiver: int | None = None
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.prefetch < 1:
            raise ValueError("prefetch must be at least 1")

    @property
    def source(self) -> str:
        """What the receiver reads: the queue, by its fully qualified name when multicast."""
        return addresses.fully_qualified(self.address, self.queue) if self.multicast \
            else self.queue

    @property
    def group_id(self) -> str:
        """The full name pause commands are kept under."""
        return self.service.config.group(self.group)

    async def run(self) -> None:
        """Receive until the service stops, following pause commands; then drain."""
        if not await self.link.connect_until_ready(self.service.stopping):
            return
        try:
            while not self.service.stopping.is_set():
                await self._follow_pause()
                await self.service.sleep(self.check_every_s)
        finally:
            await self._stop_receiving()
            log.info("%s: stopped consuming %s (%s)", self.service.name, self.source,
                     dict(self.counts))

    async def _follow_pause(self) -> None:
        paused = self.service.is_paused(self.group_id)
        if paused and self._receiver is not None:
            await self._stop_receiving()
            log.warning("%s: receiver of %s detached while %s is paused; its backlog builds",
                        self.service.name, self.source, self.group_id)
        elif not paused and self._receiver is None:
            self._receiver = self.link.receive(self.source, self.prefetch, self._on_received,
                                               multicast=self.multicast,
                                               on_attached=self.service.mark_ready)
            log.info("%s: consuming %s, prefetch %d", self.service.name, self.source,
                     self.prefetch)

    async def _stop_receiving(self) -> None:
        """Take no more, let what is being handled be settled (bounded), then detach."""
        receiver, self._receiver = self._receiver, None
        if receiver is None:
            return
        self.link.hold(receiver)
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=DRAIN_TIMEOUT_S)
        self.link.detach(receiver)

    def _on_received(self, received: Received) -> None:
        task = asyncio.ensure_future(self._on_message(received))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _on_message(self, received: Received) -> None:
        try:
            await self._process(received)
        except Exception as exc:  # a boundary: one delivery never ends the consumer
            self.counts["crashed"] += 1
            log.exception("%s: %s failed outside its handler; rejected", self.service.name,
                          where(self.queue, received))
            self.link.settle(received, Outcome.REJECT, f"crashed: {describe(exc)}")

    async def _process(self, received: Received) -> None:
        correlation_id = correlation_of(received)
        attributes = tracing.process_attributes(
            address=self.address, queue=self.queue, message_id=received.message_id,
            correlation_id=correlation_id, delivery_count=received.delivery_count,
            size=len(received.body or b""), server=self.link.server)
        with inst.process_span(self.service.tracer, f"process {self.address}",
                               tracing.extract_context(received.properties), attributes) as span:
            failure = await self._handle(received, span, correlation_id)
        outcome = settle_outcome(failure)
        reason = "" if failure is None else describe(failure)
        if outcome is Outcome.RELEASE:
            delay = self.releases.next_s()
            log.warning("%s: outputs of %s failed (%s); released in %.1fs", self.service.name,
                        where(self.queue, received), reason, delay)
            await self.service.sleep(delay)
        elif outcome is Outcome.RETRY:
            log.warning("%s: %s failed (%s); settled as failed: the broker delivers it again "
                        "after its redelivery delay, or dead-letters it when its attempts are "
                        "spent", self.service.name, where(self.queue, received), reason)
        elif outcome is Outcome.REJECT:
            log.warning("%s: rejecting %s (%s): %s; the broker dead-letters it",
                        self.service.name, where(self.queue, received), correlation_id, reason)
        else:
            self.releases.reset()
        self.link.settle(received, outcome, reason)
        self.counts[outcome.value] += 1

    async def _handle(self, received: Received, span: Span, correlation_id: str
                      ) -> BaseException | None:
        """Run the handler in the delivery's span; the failure, or None when it succeeded."""
        try:
            await self.handler(QueueDelivery(
                decode_payload(received.body), correlation_id,
                tracing.attempt_of(received.delivery_count), span, received=received,
                queue=self.queue, properties=received.properties))
            return None
        except TransientFailure as exc:
            inst.fail_span(span, exc, "TransientFailure")
            return exc
        except (BadMessage, PermanentFailure, SendFailed) as exc:
            inst.fail_span(span, exc, exc.error_type if isinstance(exc, SendFailed) else None)
            return exc
        except Exception as exc:  # a boundary: a message the handler chokes on is poison
            log.exception("%s: handling %s failed", self.service.name,
                          where(self.queue, received))
            inst.fail_span(span, exc)
            return exc


async def consume(service: Service, address: str, queue: str, group: str,
                  make_handler: Callable[[ArtemisLink], QueueHandler], **options: Any) -> None:
    """Run one QueueConsumer on a link of its own until the service stops; address and queue
    are full names, options the QueueConsumer's (prefetch, multicast)."""
    if not service.config.artemis_url:
        raise ValueError(f"{service.name} consumes Artemis: set FLOWSCOPE_DEMO_ARTEMIS_URL")
    link = ArtemisLink(service.config, service.name, service.tracer)
    try:
        await QueueConsumer(service, link, address, queue, group, make_handler(link),
                            **options).run()
    finally:
        await link.close()
