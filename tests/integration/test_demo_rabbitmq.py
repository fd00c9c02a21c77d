"""The demo's RabbitMQ leg against real Kafka, RabbitMQ and Jaeger: an upload's flow runs
Kafka -> RabbitMQ -> Kafka under one correlation ID and one trace; failed renders come back
through the delay queue and spent ones are dead-lettered; rendered thumbnails fan out to two
queues; poison in the jobs queue is dead-lettered with its reason while the thumbnailer goes
on; a pause command cancels the thumbnailer's consumers until it ends."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from demo_services import exchanges, topics
from demo_services.config import DemoConfig
from demo_services.faults import Simulation
from demo_services.loadgen import send_pause
from demo_services.thumbnailer import render_fails
from flowscope.infra.jaeger import JaegerStatus
from flowscope.infra.rabbitmq import RabbitmqStatus, api_get
from tests.integration.demo_stack import DemoStack, headers_of, read_topics, wait_for_outcomes
from tests.integration.jaeger_api import fetch_spans_v3

pytestmark = [pytest.mark.jaeger, pytest.mark.timeout(120)]

SEED = 5
MAX_ATTEMPTS = 3
KNOBS = {"thumbnail_failure": "0.5", "max_attempts": str(MAX_ATTEMPTS), "backoff_base_ms": "50",
         "backoff_max_ms": "200", "work_ms": "5", "transient_failure": "0",
         "permanent_failure": "0", "callback_failure": "0", "seed": str(SEED),
         "thumbnail_prefetch": "2"}
RUNNING = ("webhook", "uploads", "processor", "notifier", "thumbnailer", "indexer", "auditor")
GAVE_UP = f"gave up after {MAX_ATTEMPTS} attempts: transient failure: the renderer timed out"
PRODUCER, CONSUMER = 4, 5  # OTLP span kinds


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus, rabbitmq_node: RabbitmqStatus,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    home = tmp_path_factory.mktemp("rabbitmq-demo")
    prefix = f"r{uuid.uuid4().hex[:8]}."
    running = DemoStack.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http, prefix,
                               rabbitmq_url=rabbitmq_node.amqp_url, **KNOBS)
    running.start(only=RUNNING)
    pids = running.pids()
    try:
        yield running
    finally:
        assert running.stop() == 0
        asyncio.run(delete_topology(running.config))
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids.values())


def rendering_attempt(correlation_id: str) -> int | None:
    """The attempt whose render succeeds, by the seed's draws; None when every one fails."""
    simulation = Simulation(0, 0, 0, 0, 5, thumbnail_failure=0.5)
    return next((attempt for attempt in range(1, MAX_ATTEMPTS + 1)
                 if not render_fails(SEED, simulation, correlation_id, attempt)), None)


def choose_uploads(run: str) -> dict[str, int | None]:
    """Correlation IDs covering each outcome at least twice: rendered at once, rendered after
    retries, dead-lettered; with the attempt each renders at."""
    chosen: dict[str, int | None] = {}
    for i in range(200):
        correlation_id = f"rmq-{run}-{i:03d}"
        chosen[correlation_id] = rendering_attempt(correlation_id)
        kinds = [1 if a == 1 else 0 if a is None else 2 for a in chosen.values()]
        if all(kinds.count(kind) >= 2 for kind in (0, 1, 2)):
            return chosen
    raise AssertionError("the draws never gave every outcome")


def post_upload(config: DemoConfig, correlation_id: str, **extra: object) -> None:
    body = {"name": f"{correlation_id}.pdf", "size": 1234,
            "callback_url": f"{config.url('webhook')}/callbacks/{correlation_id}", **extra}
    request = urllib.request.Request(
        f"{config.url('uploads')}/files", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-Correlation-ID": correlation_id})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202
        assert json.load(answer)["correlation_id"] == correlation_id


@pytest.fixture(scope="module")
def uploads(stack: DemoStack) -> dict[str, int | None]:
    chosen = choose_uploads(uuid.uuid4().hex[:6])
    for correlation_id in chosen:
        post_upload(stack.config, correlation_id)
    return chosen


def _rendered(uploads: dict[str, int | None]) -> set[str]:
    return {cid for cid, attempt in uploads.items() if attempt is not None}


def _retries(uploads: dict[str, int | None]) -> int:
    return sum((attempt or MAX_ATTEMPTS) - 1 for attempt in uploads.values())


async def _connect(stack: DemoStack) -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(stack.config.rabbitmq_url, timeout=10)


async def peek(stack: DemoStack, queue: str, done: Callable[[list[AbstractIncomingMessage]],
                                                           bool],
               timeout_s: float = 30.0) -> list[AbstractIncomingMessage]:
    """Every message in a queue, read and put back (nothing acknowledged), until done(them)."""
    connection = await _connect(stack)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                channel = await connection.channel()
                found = []
                source = await channel.declare_queue(stack.config.topic(queue), passive=True)
                while (message := await source.get(no_ack=False, fail=False)) is not None:
                    found.append(message)
                await channel.close()  # unacknowledged: back into the queue
                if done(found):
                    return found
                await asyncio.sleep(0.3)
    finally:
        await connection.close()


async def queue_state(stack: DemoStack, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, as the queue itself answers a passive declare."""
    connection = await _connect(stack)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(stack.config.topic(queue), passive=True)
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0
    finally:
        await connection.close()


async def wait_for_stats(management_url: str, queue: str, done: Callable[[dict[str, Any]], bool],
                         timeout_s: float = 30.0) -> dict[str, Any]:
    """The management API's view of a queue, once it has its figures (a new queue lacks them
    for a moment, and they lag a little) and done(it) holds."""
    path = f"/api/queues/%2F/{quote(queue, safe='')}"
    deadline = time.monotonic() + timeout_s
    while True:
        code, body = api_get(management_url, path)
        if code == 200 and isinstance(body, dict) and {"consumers", "messages"} <= set(body) \
                and done(body):
            return body
        assert time.monotonic() < deadline, f"{queue}: {code} {body}"
        await asyncio.sleep(0.5)


async def delete_topology(config: DemoConfig) -> None:
    """Delete the demo's exchanges and queues of this run (their names have its prefix)."""
    connection = await aio_pika.connect(config.rabbitmq_url, timeout=10)
    try:
        channel = await connection.channel()
        for binding in exchanges.BINDINGS:
            await channel.queue_delete(config.topic(binding.queue), if_unused=False,
                                       if_empty=False)
        for name in exchanges.EXCHANGES:
            await channel.exchange_delete(config.topic(name))
    finally:
        await connection.close()


def _stat(queue: dict[str, Any], name: str) -> int:
    return int(queue.get("message_stats", {}).get(name, 0))


async def test_uploads_run_kafka_rabbitmq_kafka_under_one_correlation_id(
        stack: DemoStack, uploads: dict[str, int | None]) -> None:
    rendered = _rendered(uploads)
    await wait_for_outcomes(stack.config, rendered, [topics.FILES_NOTIFIED], timeout_s=60)
    processed = (await read_topics(stack.config, [topics.FILES_PROCESSED]))[
        topics.FILES_PROCESSED]
    by_flow = {headers_of(r)["correlation-id"].decode(): json.loads(r.value or b"")
               for r in processed}
    assert {cid for cid in by_flow if cid in uploads} == rendered
    for correlation_id in rendered:
        payload = by_flow[correlation_id]
        assert payload["type"] == "file.processed"
        assert payload["name"] == f"{correlation_id}.pdf"
        assert payload["checksum"]
        assert payload["attempts"] == 1
        assert payload["thumbnail"]["attempts"] == uploads[correlation_id]
        assert payload["thumbnail"]["path"] == f"thumbnails/{payload['file_id']}.png"


async def test_failed_renders_come_back_through_the_delay_queue_and_spent_ones_are_dead_lettered(
        stack: DemoStack, uploads: dict[str, int | None], rabbitmq_node: RabbitmqStatus) -> None:
    await wait_for_outcomes(stack.config, _rendered(uploads), [topics.FILES_NOTIFIED])
    spent = {cid for cid, attempt in uploads.items() if attempt is None}
    found = await peek(stack, exchanges.THUMBNAILS_DLQ,
                       lambda found: spent <= {m.correlation_id for m in found})
    letters = {m.correlation_id: m for m in found if m.correlation_id in spent}
    for correlation_id, letter in letters.items():
        headers = letter.headers
        assert headers["x-dead-letter-reason"] == GAVE_UP
        assert headers["correlation-id"] == correlation_id
        assert headers["retry-attempt"] == str(MAX_ATTEMPTS)
        assert headers["x-dead-letter-queue"] == stack.config.topic(exchanges.THUMBNAILS_JOBS)
        assert str(headers["traceparent"]).startswith("00-")
        assert letter.content_type == "application/json"
        assert letter.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert uuid.UUID(str(letter.message_id)).version == 4
        assert letter.timestamp is not None
        assert json.loads(letter.body)["type"] == "thumbnail.requested"
    # Every failed attempt but the last of each job went through the delay queue, whose
    # messages the broker dead-letters back to the jobs queue when they expire.
    delay = await wait_for_stats(rabbitmq_node.management_url,
                                 stack.config.topic(exchanges.THUMBNAILS_DELAY),
                                 lambda q: _stat(q, "publish") >= _retries(uploads))
    assert _stat(delay, "publish") == _retries(uploads)
    assert (delay["consumers"], delay["messages"]) == (0, 0)
    assert delay["arguments"] == {
        "x-dead-letter-exchange": stack.config.topic(exchanges.THUMBNAILS),
        "x-dead-letter-routing-key": exchanges.RENDER}
    jobs = await wait_for_stats(rabbitmq_node.management_url,
                                stack.config.topic(exchanges.THUMBNAILS_JOBS),
                                lambda q: _stat(q, "ack") >= len(uploads) + _retries(uploads))
    assert jobs["consumers"] == 2


async def test_rendered_thumbnails_fan_out_to_both_event_queues(
        stack: DemoStack, uploads: dict[str, int | None], rabbitmq_node: RabbitmqStatus) -> None:
    await wait_for_outcomes(stack.config, _rendered(uploads), [topics.FILES_NOTIFIED])
    for queue in (exchanges.FILES_EVENTS_SEARCH, exchanges.FILES_EVENTS_AUDIT):
        state = await wait_for_stats(rabbitmq_node.management_url, stack.config.topic(queue),
                                     lambda q: _stat(q, "ack") >= len(_rendered(uploads)))
        assert _stat(state, "ack") == len(_rendered(uploads))
        assert state["consumers"] == 1


def _by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["name"] == name), key=lambda s: s["start_ns"])


def _written(span: dict[str, Any]) -> dict[str, str]:
    """The attributes the service wrote (Jaeger adds warnings of its own, '@jaeger@...')."""
    return {k: v for k, v in span["attributes"].items() if not k.startswith("@jaeger@")}


async def test_one_trace_runs_kafka_rabbitmq_kafka_with_conventional_spans(
        stack: DemoStack, uploads: dict[str, int | None],
        jaeger_endpoints: JaegerStatus) -> None:
    correlation_id = next(cid for cid, attempt in sorted(uploads.items()) if attempt == 2)
    await wait_for_outcomes(stack.config, {correlation_id}, [topics.FILES_NOTIFIED])
    processed = next(r for r in (await read_topics(stack.config, [topics.FILES_PROCESSED]))[
        topics.FILES_PROCESSED] if headers_of(r)["correlation-id"] == correlation_id.encode())
    trace_id = headers_of(processed)["traceparent"].decode().split("-")[1]
    p = stack.config.topic
    jobs = f"{p('thumbnails')}:render:{p('thumbnails.jobs')}"
    wanted = {f"send {p('thumbnails')}:render", f"process {jobs}",
              f"send {p('thumbnails.retry')}:render", f"send {p('files.processed')}",
              f"process {p('files.processed')}", f"send {p('files.events')}",
              f"process {p('files.events')}:{p('files.events.search')}",
              f"process {p('files.events')}:{p('files.events.audit')}",
              f"process {p('files.uploaded')}"}
    spans = fetch_spans_v3(jaeger_endpoints.query, trace_id,
                           lambda found: wanted <= {s["name"] for s in found}
                           and len(_by_name(found, f"process {jobs}")) == 2)
    (job,) = _by_name(spans, f"send {p('thumbnails')}:render")
    first, second = _by_name(spans, f"process {jobs}")
    (retry,) = _by_name(spans, f"send {p('thumbnails.retry')}:render")
    (events,) = _by_name(spans, f"send {p('files.events')}")
    (to_kafka,) = _by_name(spans, f"send {p('files.processed')}")
    (upload,) = _by_name(spans, f"process {p('files.uploaded')}")
    server = {"server.address": "127.0.0.1",
              "server.port": stack.config.rabbitmq_url.rsplit(":", 1)[1].strip("/")}
    assert (job["service"], job["kind"], job["parentSpanId"]) == \
        ("processor", PRODUCER, upload["spanId"])
    assert _written(job) == {
        "messaging.system": "rabbitmq", "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": f"{p('thumbnails')}:render",
        "messaging.rabbitmq.destination.routing_key": "render",
        "messaging.message.id": job["attributes"]["messaging.message.id"],
        "messaging.message.conversation_id": correlation_id,
        "messaging.message.body.size": first["attributes"]["messaging.message.body.size"],
        **server}
    assert uuid.UUID(job["attributes"]["messaging.message.id"]).version == 4
    # The first attempt: a child of the processor's publish; it fails and is retried.
    assert (first["service"], first["kind"], first["parentSpanId"]) == \
        ("thumbnailer", CONSUMER, job["spanId"])
    assert _written(first) == {
        "messaging.system": "rabbitmq", "messaging.operation.name": "process",
        "messaging.operation.type": "process", "messaging.destination.name": jobs,
        "messaging.rabbitmq.destination.routing_key": "render",
        "messaging.destination.subscription.name": p("thumbnails.jobs"),
        "messaging.message.id": job["attributes"]["messaging.message.id"],
        "messaging.message.conversation_id": correlation_id,
        "messaging.rabbitmq.message.delivery_tag":
            first["attributes"]["messaging.rabbitmq.message.delivery_tag"],
        "messaging.message.body.size": job["attributes"]["messaging.message.body.size"],
        "error.type": "TransientFailure", **server}
    assert int(first["attributes"]["messaging.rabbitmq.message.delivery_tag"]) > 0
    assert retry["parentSpanId"] == first["spanId"]
    assert retry["attributes"]["messaging.destination.name"] == f"{p('thumbnails.retry')}:render"
    # The second attempt came back from the delay queue: a child of the retry's publish.
    assert second["parentSpanId"] == retry["spanId"]
    assert second["attributes"]["messaging.message.retry_attempt"] == "2"
    assert second["attributes"]["messaging.message.id"] == \
        retry["attributes"]["messaging.message.id"]
    assert "error.type" not in second["attributes"]
    assert (to_kafka["service"], to_kafka["parentSpanId"]) == ("thumbnailer", second["spanId"])
    assert events["parentSpanId"] == second["spanId"]
    assert "messaging.rabbitmq.destination.routing_key" not in events["attributes"]
    for queue, service in (("files.events.search", "indexer"), ("files.events.audit", "auditor")):
        (fanned,) = _by_name(spans, f"process {p('files.events')}:{p(queue)}")
        assert (fanned["service"], fanned["parentSpanId"]) == (service, events["spanId"])
        assert fanned["attributes"]["messaging.destination.subscription.name"] == p(queue)
    assert {s["attributes"].get("messaging.message.conversation_id") for s in spans
            if "messaging.system" in s["attributes"]} == {correlation_id}


async def _publish_raw(stack: DemoStack, body: bytes, headers: dict[str, Any],
                       correlation_id: str) -> None:
    """Straight into the jobs queue through the default exchange, as a stranger would."""
    connection = await _connect(stack)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(body, headers=headers, correlation_id=correlation_id,
                             message_id=str(uuid.uuid4())),
            routing_key=stack.config.topic(exchanges.THUMBNAILS_JOBS))
    finally:
        await connection.close()


async def test_poison_in_the_jobs_queue_is_dead_lettered_and_the_thumbnailer_goes_on(
        stack: DemoStack) -> None:
    run = uuid.uuid4().hex[:6]
    before = stack.pids()["thumbnailer"]
    job = {"file_id": f"f-{run}", "name": "poison.pdf", "size": 1, "simulate":
           {"thumbnail_failure": 0},
           "callback_url": f"{stack.config.url('webhook')}/callbacks/poison-{run}"}
    good = json.dumps(job).encode()
    poison = {
        f"p-{run}-a": (b"\x00not json", {}, "invalid message: value is not JSON: "),
        f"p-{run}-b": (json.dumps({"file_id": "x"}).encode(), {},
                       "invalid message: missing field(s): name, size, callback_url"),
        f"p-{run}-c": (good, {"correlation-id": bytearray(b"\xff\xfe")},
                       "invalid message: header 'correlation-id' is not UTF-8"),
        f"p-{run}-d": (good, {"correlation-id": "x" * 5000},
                       "invalid message: header 'correlation-id' is 5000 bytes (at most 1024)"),
    }
    for correlation_id, (body, headers, _) in poison.items():
        await _publish_raw(stack, body, headers, correlation_id)
    untraced = f"p-{run}-e"  # a valid job without trace context: a new trace, not a poison
    await _publish_raw(stack, good, {"correlation-id": untraced}, untraced)

    found = await peek(stack, exchanges.THUMBNAILS_DLQ,
                       lambda found: set(poison) <= {m.correlation_id for m in found})
    letters = {m.correlation_id: m for m in found if m.correlation_id in poison}
    for correlation_id, (body, headers, reason) in poison.items():
        letter = letters[correlation_id]
        assert str(letter.headers["x-dead-letter-reason"]).startswith(reason), correlation_id
        assert letter.headers["correlation-id"] == correlation_id
        assert letter.body == body
        dropped = letter.headers.get("x-dead-letter-dropped-headers")
        assert dropped == ("correlation-id" if headers else None)
    await wait_for_outcomes(stack.config, {untraced}, [topics.FILES_PROCESSED])
    processed = (await read_topics(stack.config, [topics.FILES_PROCESSED]))[
        topics.FILES_PROCESSED]
    (record,) = [r for r in processed if headers_of(r)["correlation-id"] == untraced.encode()]
    assert headers_of(record)["traceparent"].startswith(b"00-")
    assert stack.pids()["thumbnailer"] == before
    state = json.loads((stack.home / "services" / "services.json").read_text())
    assert state["thumbnailer"]["restarts"] == 0


async def test_pause_command_cancels_the_thumbnailer_consumers_until_it_ends(
        stack: DemoStack) -> None:
    assert await queue_state(stack, exchanges.THUMBNAILS_JOBS) == (0, 2)
    pause_s = 6.0
    await send_pause(stack.config, "thumbnailer", pause_s)
    paused_at = time.monotonic()
    async with asyncio.timeout(10):
        while (await queue_state(stack, exchanges.THUMBNAILS_JOBS))[1] != 0:
            await asyncio.sleep(0.1)
    run = uuid.uuid4().hex[:6]
    waiting = {f"pause-{run}-{i}" for i in range(4)}
    for correlation_id in waiting:
        post_upload(stack.config, correlation_id, simulate={"thumbnail_failure": 0})
    async with asyncio.timeout(15):  # the backlog builds: nobody consumes the queue
        while (await queue_state(stack, exchanges.THUMBNAILS_JOBS))[0] < len(waiting):
            assert time.monotonic() - paused_at < pause_s, "the pause ended too early"
            await asyncio.sleep(0.1)
    async with asyncio.timeout(20):  # the pause ends: two consumers again, the backlog drains
        while await queue_state(stack, exchanges.THUMBNAILS_JOBS) != (0, 2):
            await asyncio.sleep(0.2)
    assert time.monotonic() - paused_at >= pause_s - 1.0
    await wait_for_outcomes(stack.config, waiting, [topics.FILES_PROCESSED], timeout_s=30)
