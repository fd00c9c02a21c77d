"""The demo's NATS leg against real Kafka, NATS (JetStream) and Jaeger: an order's flow runs
Kafka -> JetStream -> core NATS under one correlation ID and one trace; the tracking consumer
acknowledges every shipment it followed; a failed lookup is redelivered by the server (its
second delivery counted) and a spent one is dead-lettered to SHIPMENTS_DLQ and terminated;
poison in the stream is dead-lettered with its reason while tracking goes on; a pause command
stops the fetching, so the consumer's pending count builds, then drains; a restart of the NATS
server loses and duplicates no shipment."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats as nats_client
import pytest
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from base.settings import Settings
from demo_services import subjects, topics
from demo_services.config import DemoConfig
from demo_services.faults import Simulation
from demo_services.loadgen import send_pause
from demo_services.shipping import shipment_id
from demo_services.tracking import tracking_fails
from flowscope.infra import nats as nats_infra
from flowscope.infra.jaeger import JaegerStatus
from flowscope.infra.nats import NatsStatus
from tests.integration.demo_stack import DemoStack, wait_for_outcomes
from tests.integration.jaeger_api import fetch_spans_v3

pytestmark = [pytest.mark.jaeger, pytest.mark.timeout(180)]

SEED = 7
MAX_ATTEMPTS = 3
KNOBS = {"tracking_failure": "0.5", "max_attempts": str(MAX_ATTEMPTS), "backoff_base_ms": "50",
         "backoff_max_ms": "200", "work_ms": "5", "inventory_failure": "0", "seed": str(SEED)}
RUNNING = ("orders", "payments", "inventory", "shipping", "tracking", "portal")
GAVE_UP = f"gave up after {MAX_ATTEMPTS} attempts: the carrier's tracking API timed out"
PRODUCER, CONSUMER = 4, 5  # OTLP span kinds


class StatusListener:
    """Every core NATS message on a subject from now on, heard on a thread of its own (core
    NATS keeps nothing for a subscriber that comes later)."""

    def __init__(self, url: str, subject: str) -> None:
        self.url, self.subject = url, subject
        self.heard: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    def __enter__(self) -> StatusListener:
        self._thread.start()
        assert self._ready.wait(15), f"could not subscribe to {self.subject}"
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def by_correlation(self) -> dict[str, tuple[str, dict[str, str], dict[str, Any]]]:
        """What was heard, by the correlation-id header (the last one wins)."""
        return {headers.get("correlation-id", ""): (subject, headers, payload)
                for subject, headers, payload in list(self.heard)}

    async def _listen(self) -> None:
        async def quiet(_: Exception) -> None:  # the server restarts on purpose
            pass

        client = await nats_client.connect(self.url, connect_timeout=5, error_cb=quiet,
                                           max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

        async def heard(message: Any) -> None:
            self.heard.append((message.subject, dict(message.headers or {}),
                               json.loads(message.data)))

        await client.subscribe(self.subject, cb=heard)
        await client.flush(timeout=5)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await client.close()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus, nats_server: NatsStatus,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    home = tmp_path_factory.mktemp("nats-demo")
    prefix = f"n{uuid.uuid4().hex[:8]}."
    running = DemoStack.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http, prefix,
                               nats_url=nats_server.url, **KNOBS)
    running.start(only=RUNNING)
    pids = running.pids()
    try:
        yield running
    finally:
        assert running.stop() == 0
        asyncio.run(delete_streams(running.config))
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids.values())


@pytest.fixture(scope="module")
def statuses(stack: DemoStack) -> Iterator[StatusListener]:
    with StatusListener(stack.config.nats_url,
                        subjects.subject(stack.config, subjects.STATUS_TEMPLATE)) as listener:
        yield listener


def tracking_attempt(correlation_id: str) -> int | None:
    """The delivery whose lookup succeeds, by the seed's draws; None when every one fails."""
    simulation = Simulation(0, 0, 0, 0, 5, tracking_failure=0.5)
    return next((attempt for attempt in range(1, MAX_ATTEMPTS + 1)
                 if not tracking_fails(SEED, simulation, correlation_id, attempt)), None)


def choose_orders(run: str) -> dict[str, int | None]:
    """Correlation IDs covering each outcome at least twice: followed at once, followed after
    a redelivery, dead-lettered; with the delivery each is followed at."""
    chosen: dict[str, int | None] = {}
    for i in range(200):
        correlation_id = f"nats-{run}-{i:03d}"
        chosen[correlation_id] = tracking_attempt(correlation_id)
        # 0: dead-lettered (every delivery failed); a success at a later delivery is its own.
        kinds = [0 if attempt is None else attempt for attempt in chosen.values()]
        if all(kinds.count(kind) >= 2 for kind in (0, 1, 2)):
            return chosen
    raise AssertionError("the draws never gave every outcome")


def post_order(config: DemoConfig, correlation_id: str, **extra: object) -> str:
    """Place an order under this correlation ID; its order ID."""
    body = {"customer": f"customer-{correlation_id}", "items": [{"sku": "sku-fig",
                                                                 "quantity": 1}],
            "amount": 12.5, **extra}
    request = urllib.request.Request(
        f"{config.url('orders')}/orders", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-Correlation-ID": correlation_id})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202
        return str(json.load(answer)["order_id"])


@pytest.fixture(scope="module")
def orders(stack: DemoStack, statuses: StatusListener) -> dict[str, tuple[str, int | None]]:
    """correlation ID -> (order ID, the delivery it is followed at, None: dead-lettered)."""
    return {correlation_id: (post_order(stack.config, correlation_id), attempt)
            for correlation_id, attempt in choose_orders(uuid.uuid4().hex[:6]).items()}


@asynccontextmanager
async def jetstream(config: DemoConfig) -> AsyncIterator[JetStreamContext]:
    client = await nats_client.connect(config.nats_url, connect_timeout=5)
    try:
        yield client.jetstream(timeout=10)
    finally:
        await client.close()


async def delete_streams(config: DemoConfig) -> None:
    """Delete this run's streams (their names have its prefix), and the consumer with them."""
    async with jetstream(config) as js:
        for name in (subjects.SHIPMENTS, subjects.SHIPMENTS_DLQ):
            await js.delete_stream(subjects.stream_name(config, name))


async def stream_messages(js: JetStreamContext, stream: str) -> list[RawStreamMsg]:
    """Every message a stream holds now."""
    state = (await js.stream_info(stream)).state
    if not state.messages:
        return []
    return [await js.get_msg(stream, seq) for seq in range(state.first_seq, state.last_seq + 1)]


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 60.0,
                     ) -> Any:
    """check()'s first truthy answer, polled until timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await check()
        if answer:
            return answer
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.2)


async def settled_consumer(config: DemoConfig, js: JetStreamContext) -> Any:
    """The tracking consumer's info once nothing is pending or unacknowledged and its ack
    floor is the stream's last message."""
    stream = subjects.stream_name(config, subjects.SHIPMENTS)

    async def settled() -> Any:
        last = (await js.stream_info(stream)).state.last_seq
        info = await js.consumer_info(stream, subjects.TRACKING)
        done = (info.num_pending, info.num_ack_pending, info.ack_floor.stream_seq) == (0, 0, last)
        return info if done else None

    return await eventually(settled, f"{stream}/tracking settled")


def heard_all(statuses: StatusListener, wanted: set[str], timeout_s: float = 60.0
              ) -> dict[str, tuple[str, dict[str, str], dict[str, Any]]]:
    """The status updates of every wanted flow (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while not wanted <= set(heard := statuses.by_correlation()):
        assert time.monotonic() < deadline, f"no status for {sorted(wanted - set(heard))}"
        time.sleep(0.2)
    return heard


def _followed(orders: dict[str, tuple[str, int | None]]) -> set[str]:
    return {cid for cid, (_, attempt) in orders.items() if attempt is not None}


def _spent(orders: dict[str, tuple[str, int | None]]) -> set[str]:
    return {cid for cid, (_, attempt) in orders.items() if attempt is None}


async def test_orders_run_kafka_jetstream_core_nats_and_every_shipment_is_acknowledged(
        stack: DemoStack, orders: dict[str, tuple[str, int | None]],
        statuses: StatusListener) -> None:
    config = stack.config
    await wait_for_outcomes(config, set(orders), [topics.ORDERS_COMPLETED])
    heard = heard_all(statuses, _followed(orders))
    for correlation_id in _followed(orders):
        order_id, attempt = orders[correlation_id]
        subject, headers, status = heard[correlation_id]
        region = subjects.region_of(order_id)
        assert subject == subjects.subject(config, subjects.STATUS_TEMPLATE, region)
        assert (status["order_id"], status["region"], status["status"], status["attempts"]) \
            == (order_id, region, "in_transit", attempt)
        assert headers["traceparent"].startswith("00-")
        assert uuid.UUID(headers["Nats-Msg-Id"]).version == 4
    assert not _spent(orders) & set(heard)  # a shipment given up on has no status
    async with jetstream(config) as js:
        info = await settled_consumer(config, js)
        assert (info.config.max_deliver, str(info.config.ack_policy)) == (MAX_ATTEMPTS,
                                                                          "explicit")
        shipments = await stream_messages(js, subjects.stream_name(config, subjects.SHIPMENTS))
    by_flow = {m.headers["correlation-id"]: m for m in shipments if m.headers}
    for correlation_id, (order_id, _) in orders.items():
        message = by_flow[correlation_id]
        region = subjects.region_of(order_id)
        assert message.subject == subjects.subject(config, subjects.SHIPMENTS_TEMPLATE, region)
        assert message.headers is not None
        assert message.headers["Nats-Msg-Id"] == shipment_id(order_id)
        assert message.headers["traceparent"].startswith("00-")
        shipment = json.loads(message.data or b"")
        assert (shipment["type"], shipment["order_id"], shipment["region"]) == (
            "shipment.dispatched", order_id, region)
    assert len(shipments) == len(orders)  # one each, however often shipping tried


async def test_a_failed_lookup_is_redelivered_and_a_spent_one_is_dead_lettered(
        stack: DemoStack, orders: dict[str, tuple[str, int | None]],
        statuses: StatusListener) -> None:
    config = stack.config
    heard = heard_all(statuses, _followed(orders))
    # each followed at the delivery the draws say: a failed one was delivered again
    assert {cid: heard[cid][2]["attempts"] for cid in _followed(orders)} == {
        cid: orders[cid][1] for cid in _followed(orders)}
    assert 2 in {orders[cid][1] for cid in _followed(orders)}
    dlq = subjects.stream_name(config, subjects.SHIPMENTS_DLQ)
    async with jetstream(config) as js:
        async def letters() -> dict[str, RawStreamMsg] | None:
            found = {m.headers["correlation-id"]: m for m in await stream_messages(js, dlq)
                     if m.headers}
            return found if _spent(orders) <= set(found) else None

        found = await eventually(letters, f"every spent shipment in {dlq}")
        await settled_consumer(config, js)  # terminated, so not pending either
    stream = subjects.stream_name(config, subjects.SHIPMENTS)
    for correlation_id in _spent(orders):
        letter, (order_id, _) = found[correlation_id], orders[correlation_id]
        headers = letter.headers
        assert headers is not None
        region = subjects.region_of(order_id)
        assert letter.subject == subjects.subject(config, subjects.SHIPMENTS_DLQ_SUBJECT)
        assert headers["dlq-reason"] == GAVE_UP
        assert (headers["dlq-deliveries"], headers["dlq-consumer"], headers["dlq-service"]) \
            == (str(MAX_ATTEMPTS), "tracking", "tracking")
        assert headers["dlq-original-stream"] == stream
        assert headers["dlq-original-subject"] == \
            subjects.subject(config, subjects.SHIPMENTS_TEMPLATE, region)
        assert int(headers["dlq-original-sequence"]) > 0
        assert headers["traceparent"].startswith("00-")
        assert json.loads(letter.data or b"")["order_id"] == order_id
    assert len([cid for cid in found if cid in orders]) == len(_spent(orders))


def _by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["name"] == name), key=lambda s: s["start_ns"])


def _written(span: dict[str, Any]) -> dict[str, str]:
    """The attributes the service wrote (Jaeger adds warnings of its own, '@jaeger@...')."""
    return {k: v for k, v in span["attributes"].items() if not k.startswith("@jaeger@")}


async def test_one_trace_runs_kafka_jetstream_core_nats_with_conventional_spans(
        stack: DemoStack, orders: dict[str, tuple[str, int | None]], statuses: StatusListener,
        jaeger_endpoints: JaegerStatus) -> None:
    config = stack.config
    correlation_id = next(cid for cid, (_, attempt) in sorted(orders.items()) if attempt == 2)
    order_id = orders[correlation_id][0]
    region = subjects.region_of(order_id)
    _, headers, _ = heard_all(statuses, {correlation_id})[correlation_id]
    trace_id = headers["traceparent"].split("-")[1]
    p = config.topic
    shipments = subjects.subject(config, subjects.SHIPMENTS_TEMPLATE, region)
    status = subjects.subject(config, subjects.STATUS_TEMPLATE, region)
    wanted = {f"send {shipments}", f"process {shipments}", f"send {status}",
              f"process {status}", f"process {p('inventory.reserved')}",
              f"send {p('shipping.dispatched')}"}
    spans = fetch_spans_v3(jaeger_endpoints.query, trace_id,
                           lambda found: wanted <= {s["name"] for s in found}
                           and len(_by_name(found, f"process {shipments}")) == 2)
    (reserved,) = _by_name(spans, f"process {p('inventory.reserved')}")
    (send,) = _by_name(spans, f"send {shipments}")
    first, second = _by_name(spans, f"process {shipments}")
    (announce,) = _by_name(spans, f"send {status}")
    (portal,) = _by_name(spans, f"process {status}")
    server = {"server.address": "127.0.0.1", "server.port": config.nats_url.rsplit(":", 1)[1]}
    stored = {"messaging.nats.stream": subjects.stream_name(config, subjects.SHIPMENTS),
              "messaging.nats.stream.sequence": send["attributes"][
                  "messaging.nats.stream.sequence"]}
    template = subjects.subject(config, subjects.SHIPMENTS_TEMPLATE)
    assert (send["service"], send["kind"], send["parentSpanId"]) == (
        "shipping", PRODUCER, reserved["spanId"])
    assert _written(send) == {
        "messaging.system": "nats", "messaging.operation.name": "send",
        "messaging.operation.type": "send", "messaging.destination.name": shipments,
        "messaging.destination.template": template,
        "messaging.message.id": shipment_id(order_id),
        "messaging.message.conversation_id": correlation_id,
        "messaging.message.body.size": send["attributes"]["messaging.message.body.size"],
        **stored, **server}
    assert int(stored["messaging.nats.stream.sequence"]) > 0
    consumed = {"messaging.system": "nats", "messaging.operation.name": "process",
                "messaging.operation.type": "process", "messaging.destination.name": shipments,
                "messaging.destination.template": template, **stored,
                "messaging.nats.consumer": "tracking",
                "messaging.consumer.group.name": "tracking",
                "messaging.message.id": shipment_id(order_id),
                "messaging.message.conversation_id": correlation_id,
                "messaging.message.body.size": send["attributes"][
                    "messaging.message.body.size"], **server}
    # The first delivery fails and is nakked; the server delivers it again: both are
    # children of shipping's publish, the second counted as delivery 2.
    for delivery, span in ((1, first), (2, second)):
        assert (span["service"], span["kind"], span["parentSpanId"]) == (
            "tracking", CONSUMER, send["spanId"])
        failed = {"error.type": "TransientFailure"} if delivery == 1 else {}
        assert _written(span) == {**consumed, "messaging.nats.num_delivered": str(delivery),
                                  "messaging.message.retry_attempt": str(delivery), **failed}
    assert (announce["service"], announce["kind"], announce["parentSpanId"]) == (
        "tracking", PRODUCER, second["spanId"])
    assert _written(announce) == {
        "messaging.system": "nats", "messaging.operation.name": "send",
        "messaging.operation.type": "send", "messaging.destination.name": status,
        "messaging.destination.template": subjects.subject(config, subjects.STATUS_TEMPLATE),
        "messaging.message.id": headers["Nats-Msg-Id"],
        "messaging.message.conversation_id": correlation_id,
        "messaging.message.body.size": announce["attributes"]["messaging.message.body.size"],
        **server}
    assert (portal["service"], portal["kind"], portal["parentSpanId"]) == (
        "portal", CONSUMER, announce["spanId"])
    assert _written(portal) == {
        "messaging.system": "nats", "messaging.operation.name": "process",
        "messaging.operation.type": "process", "messaging.destination.name": status,
        "messaging.destination.template": subjects.subject(config, subjects.STATUS_TEMPLATE),
        "messaging.consumer.group.name": "portal",
        "messaging.message.id": headers["Nats-Msg-Id"],
        "messaging.message.conversation_id": correlation_id,
        "messaging.message.body.size": announce["attributes"]["messaging.message.body.size"],
        **server}
    assert {s["attributes"].get("messaging.message.conversation_id") for s in spans
            if "messaging.system" in s["attributes"]} == {correlation_id}


async def test_a_spent_shipment_is_dead_lettered_in_its_trace(
        stack: DemoStack, orders: dict[str, tuple[str, int | None]],
        jaeger_endpoints: JaegerStatus) -> None:
    config = stack.config
    correlation_id = sorted(_spent(orders))[0]
    region = subjects.region_of(orders[correlation_id][0])
    dlq = subjects.stream_name(config, subjects.SHIPMENTS_DLQ)
    async with jetstream(config) as js:
        async def letter() -> RawStreamMsg | None:
            return next((m for m in await stream_messages(js, dlq) if m.headers and
                         m.headers.get("correlation-id") == correlation_id), None)

        found = await eventually(letter, f"{correlation_id} in {dlq}")
    trace_id = found.headers["traceparent"].split("-")[1]
    shipments = subjects.subject(config, subjects.SHIPMENTS_TEMPLATE, region)
    dead = subjects.subject(config, subjects.SHIPMENTS_DLQ_SUBJECT)
    spans = fetch_spans_v3(jaeger_endpoints.query, trace_id,
                           lambda found: len(_by_name(found, f"process {shipments}")) == 3
                           and bool(_by_name(found, f"send {dead}")))
    (send,) = _by_name(spans, f"send {shipments}")
    deliveries = _by_name(spans, f"process {shipments}")
    assert [s["attributes"]["messaging.nats.num_delivered"] for s in deliveries] == [
        "1", "2", "3"]
    assert all(s["attributes"]["error.type"] == "TransientFailure" for s in deliveries)
    assert {s["parentSpanId"] for s in deliveries} == {send["spanId"]}
    (letter_span,) = _by_name(spans, f"send {dead}")
    assert (letter_span["service"], letter_span["kind"], letter_span["parentSpanId"]) == (
        "tracking", PRODUCER, deliveries[-1]["spanId"])
    assert letter_span["attributes"]["messaging.nats.stream"] == dlq
    assert "messaging.destination.template" not in letter_span["attributes"]
    assert not _by_name(spans, f"send {subjects.subject(config, subjects.STATUS_TEMPLATE, region)}")


async def test_poison_in_the_stream_is_dead_lettered_and_tracking_goes_on(
        stack: DemoStack, statuses: StatusListener) -> None:
    config = stack.config
    run = uuid.uuid4().hex[:6]
    before = stack.pids()["tracking"]
    good = {"order_id": f"o-{run}", "tracking": "t-1", "region": "eu",
            "simulate": {"tracking_failure": 0}}
    poison = {
        f"p-{run}-a": (b"\x00not json", "invalid message: value is not JSON: "),
        f"p-{run}-b": (b"\xff\xfe\xfd", "invalid message: value is not JSON: "),
        f"p-{run}-c": (json.dumps({"order_id": "x"}).encode(),
                       "invalid message: missing field(s): tracking, region"),
        f"p-{run}-d": (json.dumps({**good, "region": "mars"}).encode(),
                       "invalid message: unknown region 'mars'"),
        f"p-{run}-e": (json.dumps([1, 2]).encode(),
                       "invalid message: value is JSON list, not an object"),
    }
    subject = subjects.subject(config, subjects.SHIPMENTS_TEMPLATE, "eu")
    untraced = f"p-{run}-f"  # garbage trace context: a new trace, not a poison
    async with jetstream(config) as js:
        for correlation_id, (body, _) in poison.items():
            await js.publish(subject, body, headers={"correlation-id": correlation_id})
        await js.publish(subject, json.dumps(good).encode(), headers={
            "correlation-id": untraced, "traceparent": "00-garbage-garbage-01",
            "tracestate": "=,=;;"})
        dlq = subjects.stream_name(config, subjects.SHIPMENTS_DLQ)

        async def letters() -> dict[str, RawStreamMsg] | None:
            found = {m.headers["correlation-id"]: m for m in await stream_messages(js, dlq)
                     if m.headers}
            return found if set(poison) <= set(found) else None

        found = await eventually(letters, "every poison dead-lettered")
        await settled_consumer(config, js)
    for correlation_id, (body, reason) in poison.items():
        letter = found[correlation_id]
        assert letter.headers is not None
        assert letter.headers["dlq-reason"].startswith(reason), correlation_id
        assert letter.headers["dlq-deliveries"] == "1"  # never retried
        assert letter.data == body
    _, headers, status = heard_all(statuses, {untraced})[untraced]
    assert status["order_id"] == f"o-{run}"
    assert headers["traceparent"].startswith("00-")
    assert stack.pids()["tracking"] == before
    state = json.loads((stack.home / "services" / "services.json").read_text())
    assert state["tracking"]["restarts"] == 0


async def test_pause_command_stops_fetching_so_pending_builds_then_drains(
        stack: DemoStack, statuses: StatusListener) -> None:
    config = stack.config
    stream = subjects.stream_name(config, subjects.SHIPMENTS)
    log = stack.home / "services" / "tracking.log"
    stopped_line = f"stopped fetching from {stream}/tracking"
    resumed_line = f"fetching from {stream}/tracking again"
    seen = log.read_text().count(stopped_line), log.read_text().count(resumed_line)
    pause_s = 6.0
    await send_pause(config, "tracking", pause_s)
    paused_at = time.monotonic()

    async def logged(line: str, before: int) -> bool:
        return log.read_text().count(line) > before

    await eventually(lambda: logged(stopped_line, seen[0]), "tracking says it paused", 10)
    run = uuid.uuid4().hex[:6]
    waiting = {f"pause-{run}-{i}": f"order-{run}-{i}" for i in range(4)}
    async with jetstream(config) as js:
        last = (await js.stream_info(stream)).state.last_seq
        for correlation_id, order_id in waiting.items():
            region = subjects.region_of(order_id)
            await js.publish(subjects.subject(config, subjects.SHIPMENTS_TEMPLATE, region),
                             json.dumps({"order_id": order_id, "tracking": "t",
                                         "region": region,
                                         "simulate": {"tracking_failure": 0}}).encode(),
                             headers={"correlation-id": correlation_id})

        async def backlog() -> bool:  # nobody fetches: the consumer's pending builds
            info = await js.consumer_info(stream, subjects.TRACKING)
            assert time.monotonic() - paused_at < pause_s, "the pause ended too early"
            assert info.ack_floor.stream_seq <= last
            return bool(info.num_pending == len(waiting))

        await eventually(backlog, "the pending count builds", pause_s)
        await eventually(lambda: logged(resumed_line, seen[1]), "tracking resumes", 20)
        assert time.monotonic() - paused_at >= pause_s - 1.0
        await settled_consumer(config, js)  # and it drains
    heard_all(statuses, set(waiting), timeout_s=20)


async def test_a_nats_server_restart_loses_and_duplicates_no_shipment(
        stack: DemoStack, nats_server: NatsStatus, settings: Settings) -> None:
    if nats_server.pid is None:
        pytest.skip("an external NATS server (FLOWSCOPE_NATS_URL) is not restarted by tests")
    config = stack.config
    pids = stack.pids()
    assert nats_infra.stop(settings) is not None
    run = uuid.uuid4().hex[:6]
    during = {f"restart-{run}-{i}": post_order(config, f"restart-{run}-{i}",
                                              simulate={"tracking_failure": 0})
              for i in range(4)}
    shipping_log = stack.home / "services" / "shipping.log"

    async def shipping_retries() -> bool:  # the publish fails: Kafka hands it over again
        return "will be handled again" in shipping_log.read_text()

    await eventually(shipping_retries, "shipping retries its input while NATS is away", 30)
    await asyncio.to_thread(nats_infra.start, settings)
    await wait_for_outcomes(config, set(during), [topics.ORDERS_COMPLETED], timeout_s=60)
    async with jetstream(config) as js:
        await settled_consumer(config, js)
        shipments = await stream_messages(js, subjects.stream_name(config, subjects.SHIPMENTS))
    ids = [m.headers.get("Nats-Msg-Id") for m in shipments if m.headers]
    for order_id in during.values():
        assert ids.count(shipment_id(order_id)) == 1  # stored once, however often sent
    for name in ("shipping", "tracking"):
        text = (stack.home / "services" / f"{name}.log").read_text()
        assert "reconnected to NATS" in text, name
    assert stack.pids() == pids  # nobody crashed: the clients reconnected
