"""The demo services' link to ActiveMQ Artemis over AMQP 1.0 (python-qpid-proton): one
connection that reconnects, traced and confirmed sends, and receivers whose deliveries are
settled one by one.

AMQP 1.0, not STOMP: Artemis' STOMP NACK discards the message (ARTEMIS-1983), while an AMQP
delivery settled as failed (MODIFIED with delivery-failed) is counted and redelivered by the
broker after its redelivery delay, then dead-lettered at max-delivery-attempts.

proton runs in a thread of its own (artemis_reactor.py); this side lives on the service's
asyncio loop and hears back through loop.call_soon_threadsafe. A send returns only once the
broker accepted the message (durable); when it cannot (the broker is down or reconnecting, it
refused the message) it raises SendFailed within send_timeout_s, as a Kafka send does, so that
the caller keeps its input unsettled and tries again later. A message_id given is also the
message's _AMQ_DUPL_ID, so that Artemis stores a repeated send once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from proton import Message

from demo_services import artemis_tracing as tracing
from demo_services import instrumentation as inst
from demo_services.artemis_delivery import OnMessage, Outcome, Received
from demo_services.artemis_reactor import ArtemisReactor
from demo_services.config import DemoConfig
from demo_services.producer import SendFailed, describe
from demo_services.retry import Backoff

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
CLOSE_TIMEOUT_S = 10.0
# Properties a send sets itself: whatever the caller's properties say of them is replaced.
SET_BY_SEND = {*inst.PROPAGATION_FIELDS, inst.CORRELATION_HEADER, tracing.DUPLICATE_ID_PROPERTY}


class ArtemisLink:
    """One service's AMQP 1.0 connection to Artemis.

    Constructing it connects nothing: connect() does, and sending before raises SendFailed."""

    def __init__(self, config: DemoConfig, name: str, tracer: trace.Tracer, *,
                 connect_timeout_s: float = 5.0, send_timeout_s: float = 5.0) -> None:
        if not config.artemis_url:
            raise ValueError("no Artemis URL configured (FLOWSCOPE_DEMO_ARTEMIS_URL)")
        if connect_timeout_s <= 0 or send_timeout_s <= 0:
            raise ValueError("connect_timeout_s and send_timeout_s must be positive")
        self.config = config
        self.name = name
        self.tracer = tracer
        self.server = tracing.server_of(config.artemis_url)
        self.connect_timeout_s = connect_timeout_s
        self.send_timeout_s = send_timeout_s
        self._reactor: ArtemisReactor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up = asyncio.Event()

    @property
    def where(self) -> str:
        """The broker's address, without credentials (for logs)."""
        return f"{self.server[0]}:{self.server[1]}"

    @property
    def connected(self) -> bool:
        """True while the connection is open."""
        return self._up.is_set()

    def _threadsafe(self, callback: Callable[..., None]) -> Callable[..., None]:
        """callback, made callable from proton's thread: it runs on this link's loop."""
        loop = self._loop
        assert loop is not None

        def call(*args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(callback, *args)
        return call

    async def connect(self) -> None:
        """Start the connection (once; it reconnects by itself from then on) and wait until it
        is open; ConnectionError when it is not within connect_timeout_s."""
        if self._reactor is None:
            self._loop = asyncio.get_running_loop()
            self._reactor = ArtemisReactor(self.config.artemis_url, self.name,
                                           self._threadsafe(self._on_state))
            self._reactor.start()
        try:
            await asyncio.wait_for(self._up.wait(), self.connect_timeout_s)
        except TimeoutError:
            raise ConnectionError(f"no AMQP connection to Artemis at {self.where} within "
                                  f"{self.connect_timeout_s:g}s") from None

    def _on_state(self, up: bool) -> None:
        if up:
            self._up.set()
        else:
            self._up.clear()

    async def connect_until_ready(self, stopping: asyncio.Event) -> bool:
        """Connect, waiting with backoff while the broker does not answer; False when stopping
        was set first."""
        backoff = Backoff(0.5, 10.0)
        while not stopping.is_set():
            try:
                await self.connect()
                return True
            except ConnectionError as exc:
                delay = backoff.next_s()
                log.warning("%s: %s; waiting %.1fs more", self.name, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
        return False

    def _connected_reactor(self, destination: str) -> ArtemisReactor:
        if self._reactor is None or not self.connected:
            raise SendFailed(f"not connected to Artemis at {self.where} (to {destination})",
                             error_type="NotConnected", replaced=False)
        return self._reactor

    async def send(self, address: str, payload: dict[str, Any] | bytes, *, correlation_id: str,
                   properties: dict[str, Any] | None = None, message_id: str | None = None,
                   multicast: bool = False) -> str:
        """Send one durable message to address in a PRODUCER span and wait for the broker to
        accept it; its message ID. SendFailed when it was not accepted in time.

        properties are cleaned and copied, their trace context and correlation ID replaced by
        this message's; message_id (a new UUID when None) also lets Artemis drop a repeat; a
        multicast address is made MULTICAST when it is new (every subscriber's queue gets a
        copy), else ANYCAST (the broker's default)."""
        body: str | bytes = json.dumps(payload) if isinstance(payload, dict) else payload
        size = len(body.encode() if isinstance(body, str) else body)
        out = {k: v for k, v in tracing.clean_properties(properties).items()
               if k not in SET_BY_SEND}
        out[inst.CORRELATION_HEADER] = inst.clean_text(correlation_id)
        if message_id is not None:
            out[tracing.DUPLICATE_ID_PROPERTY] = message_id
        message_id = message_id or str(uuid.uuid4())
        # A plain start_span, never made current: nothing runs inside it but the send.
        span = self.tracer.start_span(f"send {address}", kind=SpanKind.PRODUCER,
                                      attributes=tracing.send_attributes(
                                          address=address, message_id=message_id,
                                          correlation_id=correlation_id, size=size,
                                          server=self.server))
        try:
            tracing.inject_properties(out, trace.set_span_in_context(span))
            # creation_time: the broker's age of the message at the head of a queue reads it.
            message = Message(body=body, id=message_id, correlation_id=correlation_id,
                              properties=out, durable=True, address=address,
                              creation_time=time.time(),
                              content_type=CONTENT_TYPE if isinstance(payload, dict) else None)
            reactor = self._connected_reactor(address)
            accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            reactor.send(address, message, multicast=multicast,
                         deadline=time.monotonic() + self.send_timeout_s,
                         done=self._threadsafe(partial(_resolve, accepted)))
            await asyncio.wait_for(accepted, self.send_timeout_s + 1)
            return message_id
        except Exception as exc:  # a boundary: whatever failed, the send failed
            failure = exc if isinstance(exc, SendFailed) else SendFailed(
                f"Artemis did not accept the message to {address}: {describe(exc)}",
                error_type=type(exc).__qualname__, replaced=False)
            inst.fail_span(span, failure, failure.error_type)
            raise failure from (None if failure is exc else exc)
        finally:
            span.end()

    def receive(self, source: str, prefetch: int, on_message: Callable[[Received], None], *,
                multicast: bool = False, on_attached: Callable[[], None] | None = None) -> int:
        """Start receiving from source (a queue, or `address::queue` on a multicast address);
        on_message runs on this loop for each delivery, on_attached (in the AMQP thread) each
        time the broker has attached the receiver. Its receiver's ident."""
        if self._reactor is None:
            raise RuntimeError("ArtemisLink.connect() first")
        deliver: OnMessage = self._threadsafe(on_message)
        return self._reactor.open_receiver(source, prefetch, deliver, multicast=multicast,
                                           on_attached=on_attached)

    def hold(self, receiver: int) -> None:
        """Take no more deliveries on a receiver (those that come are released)."""
        if self._reactor is not None:
            self._reactor.hold_receiver(receiver)

    def detach(self, receiver: int) -> None:
        """Detach a receiver (what it holds unsettled goes back to its queue)."""
        if self._reactor is not None:
            self._reactor.close_receiver(receiver)

    def settle(self, received: Received, outcome: Outcome, reason: str = "") -> None:
        """Settle a delivery with outcome (reason goes with a rejection)."""
        if self._reactor is not None:
            self._reactor.settle(received, outcome, reason)

    async def close(self) -> None:
        """Close the connection and end proton's thread (bounded)."""
        reactor, self._reactor = self._reactor, None
        if reactor is not None:
            await asyncio.to_thread(reactor.stop, CLOSE_TIMEOUT_S)
        self._up.clear()


def _resolve(future: asyncio.Future[None], failure: BaseException | None) -> None:
    if not future.done():
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(failure)


async def stay_connected(link: ArtemisLink, stopping: asyncio.Event) -> None:
    """Connect link, keep it until stopping is set, then close it (a service task)."""
    try:
        if await link.connect_until_ready(stopping):
            await stopping.wait()
    finally:
        await link.close()
