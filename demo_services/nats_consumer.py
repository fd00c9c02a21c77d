"""Consumers of NATS: a durable JetStream pull consumer (traced, explicitly acknowledged,
redelivered with backoff, dead-lettered, poison-safe, pausable) and a core NATS subscriber in a
queue group (traced; nothing to acknowledge, nothing kept).

The pull consumer fetches batches with a bounded wait (a fetch that times out is an idle
stream, nothing more) and handles each message in its own CONSUMER span. A message handled is
acknowledged; one whose handling failed transiently is negatively acknowledged with the retry
policy's backoff, so the server redelivers it; at its max_attempts-th delivery, or when it is
invalid (not JSON, not UTF-8, fields missing) or failed for good, it is published to the
dead-letter subject with the reason in `dlq-reason`, then terminated with that reason (never
delivered again; the server's MSG_TERMINATED advisory names it).
A fetch error (the consumer gone, say) is logged and fetched again after a bounded backoff,
the topology re-created first; while the client reconnects it fetches nothing. While the
service's pause for its group lasts it fetches nothing either: the consumer's pending count
builds on the server, and drains after.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from opentelemetry.trace import Span

from demo_services import instrumentation as inst
from demo_services import nats_tracing as tracing
from demo_services.nats_link import NatsLink
from demo_services.producer import SendFailed, describe
from demo_services.retry import Backoff, RetryPolicy
from demo_services.runtime import (
    BadMessage,
    Decoded,
    PermanentFailure,
    Service,
    TransientFailure,
    decode_payload,
)
from demo_services.subjects import ensure_jetstream

log = logging.getLogger(__name__)
ACK_TIMEOUT_S = 2.0
RPC_TIMEOUT_S = 5.0
DLQ_NAMESPACE = uuid.UUID("6f1d3c0e-5b0a-4a8e-9d1e-2f7c9a4b8e10")


@dataclass(kw_only=True)
class StreamDelivery(Decoded):
    """A JetStream message delivered to a durable consumer, decoded: the message, its headers
    and where it is stored. Its attempt is the delivery count (1: the first delivery)."""

    message: Msg
    headers: dict[str, str]
    stream: str
    sequence: int
    acked: bool | None = None  # None: not acknowledged yet

    async def ack(self) -> bool:
        """Acknowledge it and wait (bounded) for the server to confirm; False when that did
        not happen (the server redelivers it after the ack wait)."""
        if self.acked is not None:
            return self.acked
        try:
            await self.message.ack_sync(timeout=ACK_TIMEOUT_S)
            self.acked = True
        except Exception as exc:  # the server went away: it redelivers the message later
            log.warning("ack of %s not confirmed (%s); it may be delivered again",
                        where(self.message), describe(exc))
            self.acked = False
        return self.acked


@dataclass(kw_only=True)
class CoreMessage(Decoded):
    """A core NATS message, decoded: the message and its headers (attempt is always 1)."""

    message: Msg
    headers: dict[str, str]


StreamHandler = Callable[[StreamDelivery], Awaitable[None]]
CoreHandler = Callable[[CoreMessage], Awaitable[None]]


def where(message: Msg) -> str:
    """A message's coordinates for logs: subject, and stream, sequence and deliveries."""
    try:
        meta = message.metadata
    except Exception:  # a core message: no JetStream metadata
        return message.subject
    return (f"{message.subject} ({meta.stream} #{meta.sequence.stream}, delivery "
            f"{meta.num_delivered})")


def dead_letter_headers(headers: dict[str, str], reason: str, *, message: Msg, consumer: str,
                        service: str) -> dict[str, str]:
    """The headers of a dead-lettered copy: the original's that are readable, less those the
    server acts on (Nats-*) and earlier dlq-*; the reason, where it was and what was left
    out."""
    kept, dropped = {}, []
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(("nats-", "dlq-")):
            continue
        if tracing.header_text({name: value}, name) is None:
            dropped.append(name)
        else:
            kept[name] = value
    meta = message.metadata
    kept.update({"dlq-reason": tracing.clean_header(reason, 1000),
                 "dlq-original-subject": message.subject,
                 "dlq-original-stream": meta.stream,
                 "dlq-original-sequence": str(meta.sequence.stream),
                 "dlq-deliveries": str(meta.num_delivered), "dlq-consumer": consumer,
                 "dlq-service": service})
    if dropped:
        kept["dlq-dropped-headers"] = tracing.clean_header(", ".join(sorted(dropped)), 1000)
    return kept


def dead_letter_id(message: Msg, headers: dict[str, str]) -> str:
    """The Nats-Msg-Id of a message's dead-lettered copy: the same for every try, so that a
    copy published twice is stored once."""
    meta = message.metadata
    original = tracing.header_text(headers, tracing.MSG_ID_HEADER) or ""
    return str(uuid.uuid5(DLQ_NAMESPACE, f"{meta.stream}:{meta.sequence.stream}:{original}"))


@dataclass
class PullConsumer:
    """One durable pull consumer of a stream: fetch, handle, then ack, nak or dead-letter."""

    service: Service
    link: NatsLink
    stream: str  # full names
    durable: str
    template: str  # the consumer's filter subject, the spans' destination template
    group: str  # the name pause commands use
    handler: StreamHandler
    dead_letters: str  # the full dead-letter subject
    batch: int = 16
    fetch_timeout_s: float = 0.5
    check_every_s: float = 0.2
    counts: Counter[str] = field(default_factory=Counter)
    errors: Backoff = field(default_factory=lambda: Backoff(0.5, 10.0))
    _paused: bool = False

    def __post_init__(self) -> None:
        if self.batch < 1 or self.fetch_timeout_s <= 0:
            raise ValueError("batch must be at least 1 and fetch_timeout_s positive")

    @property
    def group_id(self) -> str:
        """The full name pause commands are kept under."""
        return self.service.config.group(self.group)

    @property
    def policy(self) -> RetryPolicy:
        """How many deliveries, and the backoff between them."""
        return RetryPolicy.of(self.service.config)

    async def run(self) -> None:
        """Fetch and handle until the service stops, following pause commands."""
        stopping = self.service.stopping
        if not await self.link.connect_until_ready(stopping):
            return
        subscription: JetStreamContext.PullSubscription | None = None
        try:
            while not stopping.is_set():
                # While the client reconnects it would buffer pull requests, and the server
                # would answer them all at once when it is back: more messages than can be
                # handled within the ack wait, redelivered meanwhile. So it fetches nothing.
                if self._follow_pause() or not self.link.connected:
                    await self.service.sleep(self.check_every_s)
                    continue
                try:
                    subscription = subscription or await self._bind()
                    messages = await self._fetch(subscription)
                except Exception as exc:  # a boundary: the client and server raise many types
                    await self._unbind(subscription)
                    subscription = None
                    await self._back_off(exc)
                    continue
                self.errors.reset()
                for message in messages:
                    await self._on_message(message)
        finally:
            await self._unbind(subscription)
            log.info("%s: stopped consuming %s/%s (%s)", self.service.name, self.stream,
                     self.durable, dict(self.counts))

    def _follow_pause(self) -> bool:
        paused = self.service.is_paused(self.group_id)
        if paused != self._paused:
            self._paused = paused
            if paused:
                log.warning("%s: stopped fetching from %s/%s while %s is paused; its pending "
                            "messages build up", self.service.name, self.stream, self.durable,
                            self.group_id)
            else:
                log.warning("%s: fetching from %s/%s again", self.service.name, self.stream,
                            self.durable)
        return paused

    async def _bind(self) -> JetStreamContext.PullSubscription:
        if self.counts["fetch-errors"]:  # the server may have lost the consumer (restarted
            # without its store): create it again
            await ensure_jetstream(self.link.js, self.service.config, RPC_TIMEOUT_S)
        return await asyncio.wait_for(
            self.link.js.pull_subscribe_bind(durable=self.durable, stream=self.stream),
            RPC_TIMEOUT_S)

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        """The next batch; empty when none came within fetch_timeout_s (an idle stream, or
        the server away while the client reconnects)."""
        try:
            return await subscription.fetch(self.batch, timeout=self.fetch_timeout_s)
        except TimeoutError:
            return []

    async def _back_off(self, exc: Exception) -> None:
        delay = self.errors.next_s()
        self.counts["fetch-errors"] += 1
        log.warning("%s: fetching from %s/%s failed (%s); trying again in %.1fs",
                    self.service.name, self.stream, self.durable, describe(exc), delay)
        await self.service.sleep(delay)

    async def _unbind(self, subscription: JetStreamContext.PullSubscription | None) -> None:
        if subscription is not None:
            try:
                await asyncio.wait_for(subscription.unsubscribe(), RPC_TIMEOUT_S)
            except Exception as exc:  # the connection is gone, and the subscription with it
                log.info("%s: unsubscribing from %s/%s: %s", self.service.name, self.stream,
                         self.durable, describe(exc))

    async def _on_message(self, message: Msg) -> None:
        try:
            await self._process(message)
        except Exception:  # a boundary: one message never ends the consumer
            self.counts["crashed"] += 1
            log.exception("%s: %s failed outside its handler; the server redelivers it after "
                          "the ack wait", self.service.name, where(message))

    async def _process(self, message: Msg) -> None:
        headers = dict(message.headers or {})
        meta = message.metadata
        stream, sequence = meta.stream, meta.sequence.stream
        correlation_id = (tracing.header_text(headers, inst.CORRELATION_HEADER)
                          or f"{stream}:{sequence}")
        attributes = tracing.jetstream_process_attributes(
            subject=message.subject, template=self.template, stream=stream, sequence=sequence,
            consumer=self.durable, deliveries=meta.num_delivered,
            message_id=tracing.header_text(headers, tracing.MSG_ID_HEADER),
            correlation_id=correlation_id, size=len(message.data), server=self.link.server)
        with inst.process_span(self.service.tracer, f"process {message.subject}",
                               tracing.extract_context(headers), attributes) as span:
            await self._handle(message, headers, span, correlation_id)

    async def _handle(self, message: Msg, headers: dict[str, str], span: Span,
                      correlation_id: str) -> None:
        """Handle one message in its span, then settle it: ack, nak (redelivery) or
        dead-letter and terminate."""
        meta = message.metadata
        try:
            delivery = StreamDelivery(decode_payload(message.data), correlation_id,
                                      meta.num_delivered, span, message=message,
                                      headers=headers, stream=meta.stream,
                                      sequence=meta.sequence.stream)
            await self.handler(delivery)
            acked = await delivery.ack()  # unless the handler did
            self.counts["acked" if acked else "ack-unconfirmed"] += 1
            return
        except TransientFailure as exc:
            inst.fail_span(span, exc, "TransientFailure")
            await self._retry(message, headers, correlation_id, str(exc))
            return
        except (BadMessage, PermanentFailure) as exc:
            inst.fail_span(span, exc)
            kind = "invalid message" if isinstance(exc, BadMessage) else "permanent failure"
            reason = f"{kind}: {exc}"
        except SendFailed as exc:  # an output failed before the ack: handle it again later
            inst.fail_span(span, exc)
            await self._redeliver(message, exc.reason)
            return
        except Exception as exc:  # a boundary: a message the handler chokes on is poison
            log.exception("%s: handling %s failed", self.service.name, where(message))
            inst.fail_span(span, exc)
            reason = f"handling failed: {describe(exc)}"
        await self._dead_letter(message, headers, correlation_id, reason)

    async def _retry(self, message: Msg, headers: dict[str, str], correlation_id: str,
                     reason: str) -> None:
        deliveries = message.metadata.num_delivered
        if deliveries >= self.policy.max_attempts:
            await self._dead_letter(message, headers, correlation_id,
                                    f"gave up after {deliveries} attempts: {reason}")
            return
        self.counts["retried"] += 1
        await self._redeliver(message, reason)

    async def _redeliver(self, message: Msg, reason: str) -> None:
        """Nak with the retry policy's backoff for this delivery."""
        deliveries = message.metadata.num_delivered
        delay_s = self.policy.backoff_ms(deliveries) / 1000
        if deliveries >= self.policy.max_attempts:
            log.error("%s: %s failed (%s) at its last delivery: the server will not deliver "
                      "it again; it stays in its stream", self.service.name, where(message),
                      reason)
        else:
            log.warning("%s: %s failed (%s); redelivered in %.2fs", self.service.name,
                        where(message), reason, delay_s)
        await self._settle(message, "nak", delay_s)

    async def _dead_letter(self, message: Msg, headers: dict[str, str], correlation_id: str,
                           reason: str) -> None:
        """Publish a copy to the dead-letter subject, then terminate the message; when the
        copy was not stored, nak it instead (redelivered while deliveries remain)."""
        log.warning("%s: dead-lettering %s (%s): %s", self.service.name, where(message),
                    correlation_id, reason)
        out = dead_letter_headers(headers, reason, message=message, consumer=self.durable,
                                  service=self.service.name)
        try:
            await self.link.publish(self.dead_letters, message.data, template=None,
                                    correlation_id=correlation_id, headers=out,
                                    message_id=dead_letter_id(message, headers))
        except SendFailed as exc:
            self.counts["dead-letter-failed"] += 1
            await self._redeliver(message, f"dead-lettering failed: {exc.reason}")
            return
        self.counts["dead-lettered"] += 1
        await self._settle(message, "term", reason=reason)

    async def _settle(self, message: Msg, how: str, delay_s: float | None = None,
                      reason: str = "") -> None:
        try:
            if how == "nak":
                await message.nak(delay=delay_s)
            else:
                await self.link.terminate(message, reason)
        except Exception as exc:  # the connection is gone: the server redelivers it
            log.warning("%s: cannot %s %s (%s); the server redelivers it after the ack wait",
                        self.service.name, how, where(message), describe(exc))


@dataclass
class CoreSubscriber:
    """A core NATS subscriber in a queue group: each message is handled by one member, in
    its own CONSUMER span; an invalid one is logged, counted and dropped (there is no
    dead-letter subject for messages nobody keeps)."""

    service: Service
    link: NatsLink
    subject: str  # full subject, wildcards allowed
    template: str | None
    queue: str  # the queue group
    handler: CoreHandler
    counts: Counter[str] = field(default_factory=Counter)

    async def run(self) -> None:
        """Subscribe (again after a failure, with backoff) and handle until the service
        stops."""
        stopping = self.service.stopping
        if not await self.link.connect_until_ready(stopping):
            return
        subscription: Subscription | None = None
        backoff = Backoff(0.5, 10.0)
        try:
            while subscription is None and not stopping.is_set():
                try:
                    subscription = await asyncio.wait_for(
                        self.link.subscribe(self.subject, self.queue, self._on_message),
                        RPC_TIMEOUT_S)
                    await asyncio.wait_for(self.link.flush(), RPC_TIMEOUT_S)
                    log.info("%s: subscribed to %s in queue group %s", self.service.name,
                             self.subject, self.queue)
                    self.service.mark_ready()
                except Exception as exc:  # a boundary: closed or refused, try again
                    delay = backoff.next_s()
                    log.warning("%s: cannot subscribe to %s (%s); trying again in %.1fs",
                                self.service.name, self.subject, describe(exc), delay)
                    await self.service.sleep(delay)
            await stopping.wait()
        finally:
            if subscription is not None:
                try:
                    await asyncio.wait_for(subscription.unsubscribe(), RPC_TIMEOUT_S)
                except Exception as exc:  # the connection is gone, and the subscription
                    log.info("%s: unsubscribing from %s: %s", self.service.name,
                             self.subject, describe(exc))
            log.info("%s: stopped listening to %s (%s)", self.service.name, self.subject,
                     dict(self.counts))

    async def _on_message(self, message: Msg) -> None:
        try:
            await self._process(message)
        except Exception:  # a boundary: one message never ends the subscription
            self.counts["crashed"] += 1
            log.exception("%s: %s failed outside its handler", self.service.name,
                          message.subject)

    async def _process(self, message: Msg) -> None:
        headers = dict(message.headers or {})
        message_id = tracing.header_text(headers, tracing.MSG_ID_HEADER)
        correlation_id = (tracing.header_text(headers, inst.CORRELATION_HEADER)
                          or message_id or str(uuid.uuid4()))
        attributes = tracing.process_attributes(
            subject=message.subject, template=self.template, message_id=message_id,
            correlation_id=correlation_id, size=len(message.data), server=self.link.server,
            group=self.queue)
        with inst.process_span(self.service.tracer, f"process {message.subject}",
                               tracing.extract_context(headers), attributes) as span:
            try:
                await self.handler(CoreMessage(decode_payload(message.data), correlation_id, 1,
                                               span, message=message, headers=headers))
                self.counts["handled"] += 1
            except (BadMessage, PermanentFailure) as exc:
                inst.fail_span(span, exc)
                self.counts["dropped"] += 1
                log.warning("%s: dropping %s (%s): %s", self.service.name, message.subject,
                            correlation_id, exc)

