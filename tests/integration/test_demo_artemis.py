"""The demo's Artemis leg against real Kafka, Artemis and Jaeger: a completed order's flow runs
Kafka -> the anycast queue `invoices` -> the multicast address `billing.events` under one
correlation ID and one trace; an invoice that fails is redelivered by the broker (its delivery
count rising) and, spent, lands in `DLQ.invoices`; both subscribers get each invoice once;
poison is rejected to the dead-letter queue while billing goes on; a pause command detaches
billing's receiver, so the `invoices` backlog builds, then drains."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from demo_services import addresses, topics
from demo_services.artemis_link import ArtemisLink
from demo_services.billing import billing_fails, invoice_id
from demo_services.config import DemoConfig
from demo_services.faults import Simulation
from demo_services.loadgen import send_pause
from flowscope.infra.jaeger import JaegerStatus
from tests.integration.artemis_tools import browse, queue_counts
from tests.integration.conftest import ArtemisBroker
from tests.integration.demo_stack import DemoStack, headers_of, wait_for_outcomes
from tests.integration.jaeger_api import fetch_spans_v3

pytestmark = [pytest.mark.jaeger, pytest.mark.timeout(240)]

SEED = 11
MAX_DELIVERY_ATTEMPTS = 4  # the broker's max-delivery-attempts
KNOBS = {"billing_failure": "0.5", "work_ms": "5", "inventory_failure": "0", "seed": str(SEED)}
RUNNING = ("orders", "payments", "inventory", "shipping", "billing", "ledger", "mailer")
PRODUCER, CONSUMER = 4, 5  # OTLP span kinds


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus, artemis_broker: ArtemisBroker,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    home = tmp_path_factory.mktemp("artemis-demo")
    prefix = f"a{uuid.uuid4().hex[:8]}."
    running = DemoStack.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http, prefix,
                               artemis_url=artemis_broker.amqp_url, **KNOBS)
    running.start(only=RUNNING)
    pids = running.pids()
    try:
        yield running
    finally:
        assert running.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids.values())


def billing_attempt(correlation_id: str) -> int | None:
    """The delivery at which the invoice is issued, by the seed's draws; None when every one
    the broker makes fails."""
    simulation = Simulation(0, 0, 0, 0, 5, billing_failure=0.5)
    return next((attempt for attempt in range(1, MAX_DELIVERY_ATTEMPTS + 1)
                 if not billing_fails(SEED, simulation, correlation_id, attempt)), None)


def choose_orders(run: str) -> dict[str, int | None]:
    """Correlation IDs covering each outcome at least twice: issued at once, issued after a
    redelivery, dead-lettered."""
    chosen: dict[str, int | None] = {}
    for i in range(300):
        correlation_id = f"art-{run}-{i:03d}"
        chosen[correlation_id] = billing_attempt(correlation_id)
        kinds = [0 if attempt is None else min(attempt, 2) for attempt in chosen.values()]
        if all(kinds.count(kind) >= 2 for kind in (0, 1, 2)):
            return chosen
    raise AssertionError("the draws never gave every outcome")


def post_order(config: DemoConfig, correlation_id: str) -> str:
    """Place an order under this correlation ID; its order ID."""
    body = {"customer": f"customer-{correlation_id}", "items": [{"sku": "sku-fig",
                                                                 "quantity": 1}],
            "amount": 12.5}
    request = urllib.request.Request(
        f"{config.url('orders')}/orders", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-Correlation-ID": correlation_id})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202
        return str(json.load(answer)["order_id"])


@pytest.fixture(scope="module")
def orders(stack: DemoStack) -> dict[str, tuple[str, int | None]]:
    """correlation ID -> (order ID, the delivery it is issued at; None: dead-lettered)."""
    return {correlation_id: (post_order(stack.config, correlation_id), attempt)
            for correlation_id, attempt in choose_orders(uuid.uuid4().hex[:6]).items()}


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = 90.0) -> Any:
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
        await asyncio.sleep(0.3)


def _names(config: DemoConfig) -> dict[str, str]:
    events = addresses.address(config, addresses.BILLING_EVENTS)
    return {"invoices": addresses.address(config, addresses.INVOICES), "events": events,
            "dead": addresses.dead_letter_queue(config, addresses.INVOICES),
            **{name: addresses.subscription_queue(config, addresses.BILLING_EVENTS, name)
               for name in addresses.SUBSCRIBERS}}


def _counts(broker: ArtemisBroker, queue: str) -> dict[str, int]:
    return queue_counts(broker.management_url, queue) or dict.fromkeys(
        ("MessageCount", "DeliveringCount", "MessagesAdded", "MessagesAcknowledged",
         "ConsumerCount"), 0)


def _issued(orders: dict[str, tuple[str, int | None]]) -> set[str]:
    return {cid for cid, (_, attempt) in orders.items() if attempt is not None}


def _spent(orders: dict[str, tuple[str, int | None]]) -> set[str]:
    return {cid for cid, (_, attempt) in orders.items() if attempt is None}


async def test_orders_are_invoiced_over_artemis_and_each_subscriber_gets_each_invoice_once(
        stack: DemoStack, orders: dict[str, tuple[str, int | None]],
        artemis_broker: ArtemisBroker) -> None:
    config, names = stack.config, _names(stack.config)
    await wait_for_outcomes(config, set(orders), [topics.ORDERS_COMPLETED])
    issued, spent = len(_issued(orders)), len(_spent(orders))

    def settled() -> bool:
        return (_counts(artemis_broker, names["dead"])["MessageCount"] == spent
                and all(_counts(artemis_broker, names[s])["MessagesAcknowledged"] == issued
                        for s in addresses.SUBSCRIBERS))

    await eventually(settled, "every invoice issued to both subscribers or dead-lettered")
    invoices = _counts(artemis_broker, names["invoices"])
    assert (invoices["MessagesAdded"], invoices["MessageCount"]) == (len(orders), 0)
    assert invoices["ConsumerCount"] == 1
    for subscriber in addresses.SUBSCRIBERS:
        counts = _counts(artemis_broker, names[subscriber])
        # each invoice once, however often billing tried: Artemis drops a repeated ID
        assert (counts["MessagesAdded"], counts["MessageCount"]) == (issued, 0)
    letters = await asyncio.to_thread(browse, artemis_broker.amqp_url,
                                      addresses.fully_qualified("DLA", names["dead"]))
    by_flow = {letter.properties["correlation-id"]: letter for letter in letters}
    assert set(by_flow) == _spent(orders)
    for correlation_id in _spent(orders):
        letter, order_id = by_flow[correlation_id], orders[correlation_id][0]
        assert json.loads(letter.body)["order_id"] == order_id
        assert letter.properties["traceparent"].startswith("00-")
        assert letter.correlation_id == correlation_id


async def test_one_trace_runs_kafka_the_invoices_queue_and_both_subscribers(
        stack: DemoStack, orders: dict[str, tuple[str, int | None]],
        jaeger_endpoints: JaegerStatus) -> None:
    config, names = stack.config, _names(stack.config)
    correlation_id = next(cid for cid, (_, attempt) in sorted(orders.items()) if attempt == 2)
    order_id = orders[correlation_id][0]
    found = await wait_for_outcomes(config, {correlation_id}, [topics.ORDERS_COMPLETED])
    (record,) = [r for r in found[topics.ORDERS_COMPLETED]
                 if headers_of(r).get("correlation-id") == correlation_id.encode()]
    trace_id = headers_of(record)["traceparent"].decode().split("-")[1]
    invoices, events = names["invoices"], names["events"]
    spans = fetch_spans_v3(
        jaeger_endpoints.query, trace_id,
        lambda found: len([s for s in found if s["name"] == f"process {invoices}"]) == 2
        and len([s for s in found if s["name"] == f"process {events}"]) == 2)
    by_id = {s["spanId"]: s for s in spans}

    def named(name: str) -> list[dict[str, Any]]:
        return sorted((s for s in spans if s["name"] == name), key=lambda s: s["start_ns"])

    (request,) = named(f"send {invoices}")
    assert (request["service"], request["kind"]) == ("orders", PRODUCER)
    assert by_id[request["parentSpanId"]]["name"] == \
        f"process {config.topic(topics.SHIPPING_DISPATCHED)}"
    first, second = named(f"process {invoices}")
    for attempt, span in ((1, first), (2, second)):
        assert (span["service"], span["kind"], span["parentSpanId"]) == (
            "billing", CONSUMER, request["spanId"])
        written = {k: v for k, v in span["attributes"].items() if not k.startswith("@jaeger")}
        failed = {"error.type": "TransientFailure"} if attempt == 1 else {}
        assert written == {
            "messaging.system": "activemq", "messaging.operation.name": "process",
            "messaging.operation.type": "process", "messaging.destination.name": invoices,
            "messaging.destination.subscription.name": invoices,
            "messaging.message.retry_attempt": str(attempt),
            "messaging.message.id": request["attributes"]["messaging.message.id"],
            "messaging.message.conversation_id": correlation_id,
            "messaging.message.body.size": request["attributes"][
                "messaging.message.body.size"],
            "server.address": "127.0.0.1",
            "server.port": config.artemis_url.rsplit(":", 1)[1], **failed}
    (announce,) = named(f"send {events}")
    assert (announce["service"], announce["kind"], announce["parentSpanId"]) == (
        "billing", PRODUCER, second["spanId"])
    assert announce["attributes"]["messaging.message.id"] == invoice_id(order_id)
    subscribers = {s["service"]: s for s in named(f"process {events}")}
    assert set(subscribers) == set(addresses.SUBSCRIBERS)
    for subscriber, span in subscribers.items():
        assert (span["kind"], span["parentSpanId"]) == (CONSUMER, announce["spanId"])
        assert span["attributes"]["messaging.destination.subscription.name"] == names[subscriber]
    assert {s["attributes"].get("messaging.message.conversation_id") for s in spans
            if "messaging.system" in s["attributes"]} == {correlation_id}


async def test_poison_requests_are_rejected_to_the_dead_letters_and_billing_goes_on(
        stack: DemoStack, artemis_broker: ArtemisBroker) -> None:
    config, names = stack.config, _names(stack.config)
    before = stack.pids()["billing"]
    run = uuid.uuid4().hex[:6]
    good = {"order_id": f"o-{run}", "customer": "c", "amount": 3,
            "simulate": {"billing_failure": 0}}
    poison: dict[str, dict[str, Any] | bytes] = {
        f"p-{run}-a": b"\x00not json", f"p-{run}-b": b"[1, 2]",
        f"p-{run}-c": {"order_id": "x"}}
    dead_before = _counts(artemis_broker, names["dead"])["MessageCount"]
    booked_before = _counts(artemis_broker, names["ledger"])["MessagesAcknowledged"]
    link = ArtemisLink(config, "test", trace.get_tracer("test"))
    try:
        await link.connect()
        for correlation_id, body in poison.items():
            await link.send(names["invoices"], body, correlation_id=correlation_id)
        await link.send(names["invoices"], good, correlation_id=f"g-{run}",
                        properties={"traceparent": "00-garbage-garbage-01", "tracestate": "=,"})
    finally:
        await link.close()
    await eventually(lambda: _counts(artemis_broker, names["dead"])["MessageCount"]
                     == dead_before + len(poison), "every poison dead-lettered", 30)
    await eventually(lambda: _counts(artemis_broker, names["ledger"])["MessagesAcknowledged"]
                     == booked_before + 1, "the good one booked", 30)
    log = (stack.home / "services" / "billing.log").read_text()
    for correlation_id in poison:
        assert f"({correlation_id}): BadMessage" in log, correlation_id
    assert stack.pids()["billing"] == before
    state = json.loads((stack.home / "services" / "services.json").read_text())
    assert state["billing"]["restarts"] == 0


async def test_pause_command_detaches_billing_so_the_backlog_builds_then_drains(
        stack: DemoStack, artemis_broker: ArtemisBroker) -> None:
    config, names = stack.config, _names(stack.config)
    log = stack.home / "services" / "billing.log"
    detached = f"receiver of {names['invoices']} detached"
    seen = log.read_text().count(detached)
    pause_s = 6.0
    await send_pause(config, "billing", pause_s)
    paused_at = time.monotonic()
    await eventually(lambda: log.read_text().count(detached) > seen, "billing pauses", 10)
    run = uuid.uuid4().hex[:6]
    booked_before = _counts(artemis_broker, names["mailer"])["MessagesAcknowledged"]
    link = ArtemisLink(config, "test", trace.get_tracer("test"))
    try:
        await link.connect()
        for i in range(4):
            await link.send(names["invoices"], {"order_id": f"pause-{run}-{i}", "customer": "c",
                                                "amount": 1, "simulate": {"billing_failure": 0}},
                            correlation_id=f"pause-{run}-{i}")
    finally:
        await link.close()

    def backlog() -> bool:  # nobody consumes: the queue holds them
        counts = _counts(artemis_broker, names["invoices"])
        assert time.monotonic() - paused_at < pause_s, "the pause ended too early"
        return (counts["MessageCount"], counts["ConsumerCount"]) == (4, 0)

    await eventually(backlog, "the invoices backlog builds", pause_s)
    await eventually(lambda: _counts(artemis_broker, names["invoices"])["MessageCount"] == 0,
                     "the backlog drains", 30)
    assert time.monotonic() - paused_at >= pause_s - 1.0
    await eventually(lambda: _counts(artemis_broker, names["mailer"])["MessagesAcknowledged"]
                     == booked_before + 4, "the drained invoices mailed", 30)
