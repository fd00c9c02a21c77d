"""The demo services' link to RabbitMQ (aio-pika): one robust connection, the topology, and
traced publishing with publisher confirms.

connect_robust reconnects after a broker restart and replays the channels, declarations,
prefetch settings and consumers made through it. A publish returns only once the broker has
confirmed the message (a persistent one, into durable queues); when it cannot (the broker is
down or reconnecting, it refused the message, no queue took it) the publish raises SendFailed
within publish_timeout_s, as a Kafka send does, so that the caller keeps its input unacked
(or its Kafka offset uncommitted) and tries again later: nothing is lost, the service goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from demo_services import amqp_tracing as tracing
from demo_services import instrumentation as inst
from demo_services.config import DemoConfig
from demo_services.exchanges import declare_topology
from demo_services.producer import SendFailed, describe
from demo_services.retry import Backoff

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
RECONNECT_INTERVAL_S = 1.0


class AmqpLink:
    """One service's robust connection to RabbitMQ and its publisher channel (confirms on).

    Constructing it connects nothing: connect() or the first publish does."""

    def __init__(self, config: DemoConfig, name: str, tracer: trace.Tracer, *,
                 connect_timeout_s: float = 5.0, publish_timeout_s: float = 5.0) -> None:
        if not config.rabbitmq_url:
            raise ValueError("no RabbitMQ URL configured (FLOWSCOPE_DEMO_RABBITMQ_URL)")
        if connect_timeout_s <= 0 or publish_timeout_s <= 0:
            raise ValueError("connect_timeout_s and publish_timeout_s must be positive")
        self.config = config
        self.name = name
        self.tracer = tracer
        self.server = tracing.server_of(config.rabbitmq_url)
        self.connect_timeout_s = connect_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()
        self._lost = False

    @property
    def where(self) -> str:
        """The broker's address, without credentials (for logs)."""
        return f"{self.server[0]}:{self.server[1]}"

    async def connect(self) -> None:
        """Connect, open the publisher channel and declare the topology (once); raise when
        the broker does not answer."""
        async with self._lock:
            if self._connection is not None:
                return
            connection = await aio_pika.connect_robust(
                self.config.rabbitmq_url, timeout=self.connect_timeout_s,
                reconnect_interval=RECONNECT_INTERVAL_S,
                client_properties={"connection_name": self.name})
            try:
                channel = await connection.channel(publisher_confirms=True,
                                                   on_return_raises=True)
                self._exchanges = await declare_topology(channel, self.config)
            except BaseException:
                await connection.close()
                raise
            self._connection = connection
            connection.close_callbacks.add(self._on_lost)
            connection.reconnect_callbacks.add(self._on_reconnected)
            log.info("%s: connected to RabbitMQ at %s; topology declared", self.name, self.where)

    def _on_lost(self, _: object, exc: BaseException | None = None) -> None:
        # once per outage: the client itself tries again every RECONNECT_INTERVAL_S
        if not self._lost and self._connection is not None and exc is not None:
            self._lost = True
            log.warning("%s: lost the connection to RabbitMQ at %s (%s); reconnecting every "
                        "%gs", self.name, self.where, describe(exc), RECONNECT_INTERVAL_S)

    def _on_reconnected(self, _: object) -> None:
        if self._lost:
            self._lost = False
            log.warning("%s: reconnected to RabbitMQ at %s; channels, declarations and "
                        "consumers restored", self.name, self.where)

    async def connect_until_ready(self, stopping: asyncio.Event) -> bool:
        """Connect, trying again with backoff while the broker does not answer; False when
        stopping was set first."""
        backoff = Backoff(0.5, 10.0)
        while not stopping.is_set():
            try:
                await self.connect()
                return True
            except Exception as exc:  # a boundary: aiormq and the socket raise many types
                delay = backoff.next_s()
                log.warning("%s: RabbitMQ at %s does not answer (%s); trying again in %.1fs",
                            self.name, self.where, describe(exc), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
        return False

    async def channel(self, prefetch: int) -> AbstractChannel:
        """A new channel for one consumer, with at most prefetch unacknowledged deliveries."""
        if self._connection is None:
            raise RuntimeError("AmqpLink.connect() first")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def publish(self, exchange: str, routing_key: str, payload: dict[str, Any] | bytes,
                      *, correlation_id: str, headers: dict[str, Any] | None = None,
                      expiration_ms: int | None = None) -> str:
        """Publish one persistent message in a PRODUCER span and wait for the broker's
        confirmation; its message ID. SendFailed when it was not confirmed in time.

        exchange is a short name (exchanges.py); headers are copied, their trace context and
        correlation ID replaced by this message's."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        message_id = str(uuid.uuid4())
        out = {k: v for k, v in (headers or {}).items()
               if k not in inst.PROPAGATION_FIELDS and k != inst.CORRELATION_HEADER}
        out[inst.CORRELATION_HEADER] = correlation_id
        full = self.config.topic(exchange)
        destination = tracing.destination_name(full, routing_key)
        span = self.tracer.start_span(
            f"send {destination}", kind=SpanKind.PRODUCER,
            attributes=tracing.send_attributes(
                exchange=full, routing_key=routing_key, message_id=message_id,
                correlation_id=correlation_id, size=len(body), server=self.server))
        try:
            tracing.inject_headers(out, trace.set_span_in_context(span))
            message = aio_pika.Message(
                body, headers=out, content_type=CONTENT_TYPE, correlation_id=correlation_id,
                message_id=message_id, timestamp=datetime.now(UTC), app_id=self.name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                expiration=None if expiration_ms is None else timedelta(milliseconds=expiration_ms))
            await asyncio.wait_for(self._publish(exchange, message, routing_key),
                                   self.publish_timeout_s)
        except Exception as exc:  # a boundary: whatever the client raised, the send failed
            tracing.fail_span(span, exc)
            raise SendFailed(f"RabbitMQ did not confirm the message to {destination}: "
                             f"{describe(exc)}", error_type=type(exc).__qualname__,
                             replaced=False) from exc
        finally:
            span.end()
        return message_id

    async def _publish(self, exchange: str, message: aio_pika.Message, routing_key: str
                       ) -> None:
        if self._connection is None:
            await self.connect()
        await self._exchanges[exchange].publish(message, routing_key, mandatory=True)

    async def close(self) -> None:
        """Close the connection (its channels with it); unacknowledged deliveries return to
        their queues."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await asyncio.wait_for(connection.close(), 10)
            except Exception as exc:  # closing a dead connection: nothing left to do
                log.warning("%s: closing the RabbitMQ connection failed: %s", self.name,
                            describe(exc))
