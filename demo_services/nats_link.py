"""The demo services' link to NATS (nats-py): one connection that reconnects forever, the
JetStream topology, and traced publishing, to JetStream (acknowledged) or core NATS (not).

The client reconnects after a server restart and re-creates its subscriptions; while it is
away, core publishes wait in its buffer. A JetStream publish returns only once the stream has
stored the message (its PubAck); when it cannot (the server is down or reconnecting, no stream
captures the subject) it raises SendFailed within publish_timeout_s, as a Kafka send does, so
that the caller keeps its input unacknowledged and tries again later. Publishing the same
Nats-Msg-Id again within the stream's duplicate window stores it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from demo_services import instrumentation as inst
from demo_services import nats_tracing as tracing
from demo_services.config import DemoConfig
from demo_services.producer import SendFailed, describe
from demo_services.retry import Backoff
from demo_services.subjects import ensure_jetstream

log = logging.getLogger(__name__)

RECONNECT_INTERVAL_S = 1.0
CLOSE_TIMEOUT_S = 10.0


class NatsLink:
    """One service's connection to NATS and its JetStream context.

    Constructing it connects nothing: connect() does, and publishing before raises
    SendFailed."""

    def __init__(self, config: DemoConfig, name: str, tracer: trace.Tracer, *,
                 connect_timeout_s: float = 2.0, publish_timeout_s: float = 5.0,
                 setup_timeout_s: float = 10.0) -> None:
        if not config.nats_url:
            raise ValueError("no NATS URL configured (FLOWSCOPE_DEMO_NATS_URL)")
        if min(connect_timeout_s, publish_timeout_s, setup_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        self.config = config
        self.name = name
        self.tracer = tracer
        self.server = tracing.server_of(config.nats_url)
        self.connect_timeout_s = connect_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.setup_timeout_s = setup_timeout_s
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._last_error: str | None = None
        self._closing = False

    @property
    def where(self) -> str:
        """The server's address, without credentials (for logs)."""
        return f"{self.server[0]}:{self.server[1]}"

    @property
    def connected(self) -> bool:
        """True while the client is connected (not connecting, reconnecting or closed)."""
        return self._client is not None and self._client.is_connected

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context (after connect())."""
        if self._js is None:
            raise RuntimeError("NatsLink.connect() first")
        return self._js

    async def connect(self) -> None:
        """Connect (the client tries again every RECONNECT_INTERVAL_S while the server does not
        answer) and create or update the JetStream topology (once); raise when that fails."""
        async with self._lock:
            if self._client is not None:
                return
            client = Client()
            try:
                await client.connect(
                    servers=[self.config.nats_url], name=self.name,
                    connect_timeout=self.connect_timeout_s,  # type: ignore[arg-type]
                    reconnect_time_wait=RECONNECT_INTERVAL_S,  # type: ignore[arg-type]
                    max_reconnect_attempts=-1, allow_reconnect=True,
                    error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected)
                js = client.jetstream(timeout=self.publish_timeout_s)
                await ensure_jetstream(js, self.config, self.setup_timeout_s)
            except BaseException:
                await _close_quietly(client)
                raise
            self._client, self._js = client, js
            self._last_error = None
            log.info("%s: connected to NATS at %s; JetStream streams and consumer ready",
                     self.name, self.where)

    async def _on_error(self, exc: Exception) -> None:
        text = describe(exc)
        if text != self._last_error:  # once per outage, not once per connection attempt
            self._last_error = text
            log.warning("%s: NATS at %s: %s", self.name, self.where, text)

    async def _on_disconnected(self) -> None:
        if not self._closing and self._client is not None:
            log.warning("%s: lost the connection to NATS at %s; reconnecting every %gs",
                        self.name, self.where, RECONNECT_INTERVAL_S)

    async def _on_reconnected(self) -> None:
        self._last_error = None
        log.warning("%s: reconnected to NATS at %s; subscriptions restored", self.name,
                    self.where)

    async def connect_until_ready(self, stopping: asyncio.Event) -> bool:
        """Connect, trying again with backoff while the topology cannot be set up; False when
        stopping was set first."""
        backoff = Backoff(0.5, 10.0)
        while not stopping.is_set():
            attempt = asyncio.ensure_future(self.connect())
            stopper = asyncio.ensure_future(stopping.wait())
            await asyncio.wait([attempt, stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await attempt
                return False
            exc = attempt.exception()
            if exc is None:
                return True
            delay = backoff.next_s()
            log.warning("%s: NATS at %s is not ready (%s); trying again in %.1fs", self.name,
                        self.where, describe(exc), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
        return False

    def _connected_client(self, destination: str) -> Client:
        if self._client is None or self._client.is_closed:
            raise SendFailed(f"not connected to NATS at {self.where} (to {destination})",
                             error_type="NotConnected", replaced=False)
        return self._client

    async def publish(self, subject: str, payload: dict[str, Any] | bytes, *,
                      template: str | None, correlation_id: str,
                      headers: dict[str, str] | None = None, message_id: str | None = None,
                      ) -> PubAck:
        """Publish one message to JetStream in a PRODUCER span and wait for the stream to
        store it; its PubAck. SendFailed when it was not stored in time.

        headers are copied, their trace context, correlation ID and message ID replaced by
        this message's; message_id (a new UUID when None) lets JetStream drop a re-publish."""
        body, out, message_id = self._prepare(payload, headers, correlation_id, message_id)
        span = self._send_span(subject, template, message_id, correlation_id, len(body))
        try:
            tracing.inject_headers(out, trace.set_span_in_context(span))
            self._connected_client(subject)
            ack = await asyncio.wait_for(
                self.js.publish(subject, body, timeout=self.publish_timeout_s, headers=out),
                self.publish_timeout_s + 1)
            inst.set_attributes(span, tracing.stored_attributes(ack.stream, ack.seq))
            if ack.duplicate:
                log.info("%s: %s (message %s) was stored before, as %s #%d", self.name,
                         subject, message_id, ack.stream, ack.seq)
            return ack
        except Exception as exc:  # a boundary: whatever the client raised, the send failed
            failure = _failed(span, exc, f"JetStream did not store the message to {subject}")
            raise failure from (None if failure is exc else exc)
        finally:
            span.end()

    async def publish_core(self, subject: str, payload: dict[str, Any] | bytes, *,
                           template: str | None, correlation_id: str,
                           headers: dict[str, str] | None = None) -> str:
        """Publish one message on core NATS in a PRODUCER span (no acknowledgement: whoever
        subscribes now gets it, nobody later); its message ID. SendFailed when the client
        refused it (closed, or its reconnect buffer full)."""
        body, out, message_id = self._prepare(payload, headers, correlation_id, None)
        span = self._send_span(subject, template, message_id, correlation_id, len(body))
        try:
            tracing.inject_headers(out, trace.set_span_in_context(span))
            client = self._connected_client(subject)
            await asyncio.wait_for(client.publish(subject, body, headers=out),
                                   self.publish_timeout_s)
            return message_id
        except Exception as exc:  # a boundary: whatever the client raised, the send failed
            failure = _failed(span, exc, f"NATS did not take the message to {subject}")
            raise failure from (None if failure is exc else exc)
        finally:
            span.end()

    def _prepare(self, payload: dict[str, Any] | bytes, headers: dict[str, str] | None,
                 correlation_id: str, message_id: str | None
                 ) -> tuple[bytes, dict[str, str], str]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        replaced = {*inst.PROPAGATION_FIELDS, inst.CORRELATION_HEADER,
                    tracing.MSG_ID_HEADER.lower()}
        out = {k: tracing.clean_header(v) for k, v in (headers or {}).items()
               if k.lower() not in replaced}
        message_id = message_id or str(uuid.uuid4())
        out[inst.CORRELATION_HEADER] = tracing.clean_header(correlation_id)
        out[tracing.MSG_ID_HEADER] = message_id
        return body, out, message_id

    def _send_span(self, subject: str, template: str | None, message_id: str,
                   correlation_id: str, size: int) -> Span:
        # A plain start_span, never made current: nothing runs inside it but the publish.
        return self.tracer.start_span(
            f"send {subject}", kind=SpanKind.PRODUCER,
            attributes=tracing.send_attributes(
                subject=subject, template=template, message_id=message_id,
                correlation_id=correlation_id, size=size, server=self.server))

    async def terminate(self, message: Msg, reason: str) -> None:
        """Terminate a JetStream delivery with a reason (`+TERM <reason>`: never delivered
        again; the server's MSG_TERMINATED advisory carries the reason)."""
        if not message.reply:
            raise ValueError(f"{message.subject}: not a JetStream delivery")
        client = self._connected_client(message.reply)
        await client.publish(message.reply, b"+TERM " + tracing.clean_header(reason).encode())

    async def subscribe(self, subject: str, queue: str,
                        handler: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """Subscribe handler to subject in a queue group (core NATS; restored on reconnect)."""
        client = self._connected_client(subject)
        return await client.subscribe(subject, queue=queue, cb=handler)

    async def flush(self) -> None:
        """Wait until the server has processed everything sent so far (a subscription is in
        place once this returns)."""
        await self._connected_client("flush").flush()

    async def close(self) -> None:
        """Drain (pending publishes flushed, subscriptions finished) and close, bounded."""
        self._closing = True
        client, self._client, self._js = self._client, None, None
        if client is not None:
            await _close_quietly(client, drain=True)


def _failed(span: Span, exc: BaseException, what: str) -> SendFailed:
    if isinstance(exc, SendFailed):  # not connected: said already
        inst.fail_span(span, exc, exc.error_type)
        return exc
    inst.fail_span(span, exc)
    return SendFailed(f"{what}: {describe(exc)}", error_type=type(exc).__qualname__,
                      replaced=False)


async def _close_quietly(client: Client, *, drain: bool = False) -> None:
    """Drain or close a client whatever state it is in, within CLOSE_TIMEOUT_S."""
    try:
        if drain and client.is_connected:
            await asyncio.wait_for(client.drain(), CLOSE_TIMEOUT_S)
    except Exception as exc:  # a dead connection: nothing left to flush
        log.warning("draining the NATS connection failed: %s", describe(exc))
    try:
        if not client.is_closed:
            await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_S)
    except Exception as exc:
        log.warning("closing the NATS connection failed: %s", describe(exc))


async def stay_connected(link: NatsLink, stopping: asyncio.Event) -> None:
    """Connect link, keep it until stopping is set, then close it (a service task)."""
    try:
        if await link.connect_until_ready(stopping):
            await stopping.wait()
    finally:
        await link.close()

