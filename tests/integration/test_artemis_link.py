"""The demo services' Artemis link against the real broker (AMQP 1.0, python-qpid-proton): a
traced send and its consume share one trace; a delivery settled as failed is redelivered by
the broker with its delivery count rising and, after max-delivery-attempts, lands in its
dead-letter queue, while a rejected one lands there at once; a broker restart loses no message,
the receivers come back by themselves and a delivery in flight across it is delivered again.
Queue counts are read from Jolokia."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from demo_services import addresses
from demo_services.artemis_consumer import QueueConsumer, QueueDelivery
from demo_services.artemis_delivery import Outcome, Received
from demo_services.artemis_link import ArtemisLink
from demo_services.config import DemoConfig
from demo_services.producer import SendFailed
from demo_services.runtime import Service, TransientFailure
from flowscope.infra import artemis
from tests.integration.artemis_tools import queue_counts
from tests.integration.conftest import ArtemisBroker

pytestmark = pytest.mark.timeout(180)
MAX_DELIVERY_ATTEMPTS = 4  # the broker's address-settings for `#`


def _tracer() -> tuple[InMemorySpanExporter, Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider.get_tracer("test")


def _config(broker: ArtemisBroker) -> DemoConfig:
    return DemoConfig(artemis_url=broker.amqp_url, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """check()'s first truthy answer (awaited when it is a coroutine), polled until
    timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        if isinstance(answer, Awaitable):
            answer = await answer
        if answer:
            return answer
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.1)


@asynccontextmanager
async def consuming(config: DemoConfig, tracer: Any, queue: str,
                    handler: Callable[[QueueDelivery], Awaitable[None]], *,
                    address: str | None = None, prefetch: int = 1
                    ) -> AsyncIterator[QueueConsumer]:
    """A QueueConsumer of queue running on a link of its own, stopped (bounded) after."""
    service = Service("consumer", config, tracer)
    link = ArtemisLink(config, "consumer", tracer)
    consumer = QueueConsumer(service, link, address or queue, queue, "group", handler,
                             prefetch=prefetch)
    task = asyncio.ensure_future(consumer.run())
    try:
        yield consumer
    finally:
        service.stopping.set()
        await asyncio.wait_for(task, 30)
        await link.close()


@asynccontextmanager
async def sender_link(config: DemoConfig, tracer: Any) -> AsyncIterator[ArtemisLink]:
    link = ArtemisLink(config, "producer", tracer, send_timeout_s=8)
    await link.connect()
    try:
        yield link
    finally:
        await link.close()


def _one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


async def test_a_traced_send_and_its_consume_share_one_trace(artemis_broker: ArtemisBroker
                                                             ) -> None:
    exporter, tracer = _tracer()
    config = _config(artemis_broker)
    queue = addresses.address(config, "traced")
    got: list[QueueDelivery] = []

    async def record(delivery: QueueDelivery) -> None:
        got.append(delivery)

    async with sender_link(config, tracer) as link, \
            consuming(config, tracer, queue, record) as consumer:
        message_id = await link.send(queue, {"order_id": "o-1"}, correlation_id="c-1",
                                     properties={"x-tenant": "t\r\n1", "correlation-id": "x"})
        await eventually(lambda: got, "the message consumed")
        await eventually(lambda: consumer.counts["accept"] == 1, "the delivery accepted")
    (delivery,) = got
    assert (delivery.payload, delivery.correlation_id, delivery.attempt) == (
        {"order_id": "o-1"}, "c-1", 1)
    assert delivery.received.message_id == message_id
    assert (delivery.properties["x-tenant"], delivery.properties["correlation-id"]) == (
        "t 1", "c-1")
    assert delivery.properties["traceparent"].startswith("00-")
    spans = exporter.get_finished_spans()
    send, process = _one(spans, f"send {queue}"), _one(spans, f"process {queue}")
    assert (send.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert process.parent is not None
    assert (process.parent.trace_id, process.parent.span_id) == (
        send.context.trace_id, send.context.span_id)
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    port = int(artemis_broker.amqp_url.rsplit(":", 1)[1])
    assert dict(send.attributes or {}) == {
        "messaging.system": "activemq", "messaging.operation.name": "send",
        "messaging.operation.type": "send", "messaging.destination.name": queue,
        "messaging.message.id": message_id, "messaging.message.conversation_id": "c-1",
        "messaging.message.body.size": len(b'{"order_id": "o-1"}'),
        "server.address": "127.0.0.1", "server.port": port}
    assert dict(process.attributes or {}) == {
        "messaging.system": "activemq", "messaging.operation.name": "process",
        "messaging.operation.type": "process", "messaging.destination.name": queue,
        "messaging.destination.subscription.name": queue,
        "messaging.message.retry_attempt": 1, "messaging.message.id": message_id,
        "messaging.message.conversation_id": "c-1",
        "messaging.message.body.size": len(b'{"order_id": "o-1"}'),
        "server.address": "127.0.0.1", "server.port": port}
    counts = queue_counts(artemis_broker.management_url, queue)
    assert counts is not None
    assert (counts["MessageCount"], counts["MessagesAcknowledged"]) == (0, 1)


async def test_a_failed_delivery_is_redelivered_then_dead_lettered_and_poison_at_once(
        artemis_broker: ArtemisBroker) -> None:
    exporter, tracer = _tracer()
    config = _config(artemis_broker)
    queue = addresses.address(config, "invoices")
    dead = addresses.dead_letter_queue(config, "invoices")
    seen: list[tuple[str, int, int, float]] = []

    async def fail(delivery: QueueDelivery) -> None:
        seen.append((delivery.correlation_id, delivery.attempt,
                     delivery.received.delivery_count, time.monotonic()))
        raise TransientFailure("the invoicing system timed out")

    async with sender_link(config, tracer) as link, \
            consuming(config, tracer, queue, fail) as consumer:
        await link.send(queue, {"order_id": "o-1"}, correlation_id="failing")
        await link.send(queue, b"\x00not json", correlation_id="poison")

        def dead_lettered() -> bool:
            counts = queue_counts(artemis_broker.management_url, dead)
            return counts is not None and counts["MessageCount"] == 2

        await eventually(dead_lettered, f"both messages in {dead}", 30)
        await eventually(lambda: consumer.counts["retry"] == MAX_DELIVERY_ATTEMPTS,
                         "every failed delivery settled")
    failing = [s for s in seen if s[0] == "failing"]
    assert [(attempt, count) for _, attempt, count, _ in failing] == [
        (a, a - 1) for a in range(1, MAX_DELIVERY_ATTEMPTS + 1)]
    gaps = [later[3] - earlier[3] for earlier, later in itertools.pairwise(failing)]
    # the broker's redelivery delay: 500 ms, doubling (a little slack for scheduling)
    assert [g >= d for g, d in zip(gaps, (0.4, 0.9, 1.8), strict=True)] == [True] * 3
    assert not [s for s in seen if s[0] == "poison"]  # rejected before the handler ran
    assert dict(consumer.counts) == {"retry": MAX_DELIVERY_ATTEMPTS, "reject": 1}
    counts = queue_counts(artemis_broker.management_url, queue)
    assert counts is not None
    assert counts["MessageCount"] == 0
    spans = exporter.get_finished_spans()
    (send,) = [s for s in spans if s.name == f"send {queue}"
               and (s.attributes or {})["messaging.message.conversation_id"] == "failing"]
    processed = [s for s in spans if s.name == f"process {queue}"
                 and (s.attributes or {})["messaging.message.conversation_id"] == "failing"]
    assert [(s.attributes or {})["messaging.message.retry_attempt"] for s in processed] == [
        1, 2, 3, 4]
    assert {(s.attributes or {})["error.type"] for s in processed} == {"TransientFailure"}
    assert {s.parent.span_id for s in processed if s.parent} == {send.context.span_id}
    poison = [s for s in spans if s.name == f"process {queue}"
              and (s.attributes or {})["messaging.message.conversation_id"] == "poison"]
    assert [(s.attributes or {})["error.type"] for s in poison] == ["BadMessage"]
    # the dead letters keep their body and properties: trace context and correlation ID
    reader = ArtemisLink(config, "reader", tracer)
    letters: list[Received] = []
    try:
        await reader.connect()
        reader.receive(addresses.fully_qualified(addresses.DEAD_LETTER_ADDRESS, dead), 10,
                       letters.append)
        await eventually(lambda: len(letters) == 2, f"both letters read from {dead}")
        for letter in letters:
            reader.settle(letter, Outcome.ACCEPT)
    finally:
        await reader.close()
    by_flow = {letter.properties["correlation-id"]: letter for letter in letters}
    assert (by_flow["failing"].body, by_flow["poison"].body) == (b'{"order_id": "o-1"}',
                                                                 b"\x00not json")
    assert by_flow["failing"].properties["traceparent"].startswith("00-")
    assert by_flow["failing"].delivery_count == 0  # counted anew on the dead-letter queue


async def test_a_broker_restart_loses_no_message_and_receivers_come_back(
        artemis_broker: ArtemisBroker) -> None:
    if artemis_broker.settings.artemis.external:
        pytest.skip("an external Artemis (FLOWSCOPE_ARTEMIS_URL) is not restarted by tests")
    _, tracer = _tracer()
    config = _config(artemis_broker)
    live, stored, held = (addresses.address(config, name) for name in ("live", "stored", "held"))
    got: dict[str, list[str]] = {live: [], stored: [], held: []}
    back = asyncio.Event()

    async def record(delivery: QueueDelivery) -> None:
        got[delivery.queue].append(str(delivery.payload["n"]))
        if delivery.queue == held and len(got[held]) == 1:
            await back.wait()  # in flight while the broker restarts

    async with sender_link(config, tracer) as link, consuming(config, tracer, live, record), \
            consuming(config, tracer, held, record):
        sent = {live: [str(n) for n in range(3)], stored: [f"s{n}" for n in range(3)],
                held: ["h0"]}
        for target, numbers in sent.items():
            for n in numbers:
                await link.send(target, {"n": n}, correlation_id=f"c-{n}")
        await eventually(lambda: len(got[live]) == 3 and got[held] == ["h0"],
                         "the first messages consumed")
        assert artemis.stop(artemis_broker.settings) is not None
        await eventually(lambda: not link.connected, "the link sees the broker gone", 30)
        started = time.monotonic()
        with pytest.raises(SendFailed):
            await link.send(live, {"n": "lost"}, correlation_id="c-lost")
        assert time.monotonic() - started < link.send_timeout_s + 1.5  # fails, and soon
        await asyncio.to_thread(artemis.start, artemis_broker.settings)
        await eventually(lambda: link.connected, "the link reconnects", 60)
        for n in ("3", "4", "5"):
            await link.send(live, {"n": n}, correlation_id=f"c-{n}")
        sent[live] += ["3", "4", "5"]
        await eventually(lambda: len(got[live]) >= 6, "the receiver is back", 60)
        # the delivery in flight at the restart is the broker's again: delivered anew (its
        # receiver credited again), while its late settlement is left alone
        await eventually(lambda: got[held] == ["h0", "h0"], "the one in flight redelivered")
        back.set()
        await link.send(held, {"n": "h1"}, correlation_id="c-h1")
        await eventually(lambda: got[held] == ["h0", "h0", "h1"], "the next one consumed")
        async with consuming(config, tracer, stored, record):
            await eventually(lambda: len(got[stored]) >= 3, "the stored messages consumed")
    assert sorted(set(got[live])) == sorted(sent[live])  # none lost ("lost" was refused)
    assert sorted(set(got[stored])) == sorted(sent[stored])  # kept on disk through it
    for queue in (live, held):
        counts = queue_counts(artemis_broker.management_url, queue)
        assert counts is not None
        assert (counts["MessageCount"], counts["DeliveringCount"]) == (0, 0), queue
