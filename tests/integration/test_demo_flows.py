"""The demo services against the real broker and the real Jaeger: flows, retries, dead letters,
sagas, correlation IDs, traces and bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from demo_services import topics
from demo_services.faults import Simulation, draw
from demo_services.inventory import reservation_fails
from demo_services.processor import outcome
from flowscope.infra.jaeger import JaegerStatus
from tests.integration.demo_stack import (
    FILE_TERMINALS,
    ORDER_TERMINALS,
    DemoStack,
    headers_of,
    read_topics,
    wait_for_outcomes,
)
from tests.integration.jaeger_api import fetch_spans_v3, fetch_trace
from tests.integration.kafka_tools import read_group_lag

pytestmark = pytest.mark.jaeger

SEED = 11
FLOWS = 40
KNOBS = {"callback_failure": "0.25", "max_attempts": "3", "backoff_base_ms": "50",
         "backoff_max_ms": "200", "work_ms": "5"}
LOAD = ["--rate", "20", "--duration", str(FLOWS / 20), "--seed", str(SEED),
        "--transient-failure", "0.35", "--permanent-failure", "0.1",
        "--inventory-failure", "0.3"]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    home = tmp_path_factory.mktemp("demo")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    running = DemoStack.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http, prefix, **KNOBS)
    running.start()
    yield running
    pids = running.pids()
    assert running.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids.values())


@pytest.fixture(scope="module")
def report(stack: DemoStack) -> dict[str, list[dict[str, str]]]:
    result = stack.loadgen(*LOAD)
    assert result["errors"] == []
    return result  # type: ignore[return-value]


def _correlation_id(record: object) -> str:
    return headers_of(record).get("correlation-id", b"").decode()  # type: ignore[arg-type]


def _expected_upload(stack: DemoStack, correlation_id: str) -> tuple[str, int, int]:
    """(terminal topic, processor retries, callback retries) the seed and the draws imply."""
    config = stack.config
    simulation = Simulation(0.35, 0.1, config.callback_failure, 0.3, config.work_ms)
    processor_retries = 0
    for attempt in range(1, config.max_attempts + 1):
        result = outcome(config.seed, simulation, correlation_id, attempt)
        if result == "permanent":
            return topics.FILES_DLQ, processor_retries, 0
        if result == "processed":
            break
        if attempt == config.max_attempts:
            return topics.FILES_DLQ, processor_retries, 0
        processor_retries += 1
    for attempt in range(1, config.max_attempts + 1):
        if draw(config.seed, "callback", correlation_id, str(attempt)) >= config.callback_failure:
            return topics.FILES_NOTIFIED, processor_retries, attempt - 1
    return topics.FILES_DLQ, processor_retries, config.max_attempts - 1


async def test_uploads_end_processed_or_dead_lettered_with_expected_retries(
        stack: DemoStack, report: dict[str, list[dict[str, str]]]) -> None:
    uploads = {u["correlation_id"] for u in report["uploads"]}
    assert len(uploads) == FLOWS // 2
    ended = await wait_for_outcomes(stack.config, uploads, FILE_TERMINALS)
    seen = await read_topics(stack.config, [topics.FILES_RETRY, topics.FILES_CALLBACK_RETRY])
    retries = Counter(_correlation_id(r) for r in seen[topics.FILES_RETRY])
    callback_retries = Counter(_correlation_id(r) for r in seen[topics.FILES_CALLBACK_RETRY])
    where = {_correlation_id(r): topic for topic in FILE_TERMINALS for r in ended[topic]
             if _correlation_id(r) in uploads}

    observed = {cid: (where[cid], retries[cid], callback_retries[cid]) for cid in uploads}
    expected = {cid: _expected_upload(stack, cid) for cid in uploads}
    assert observed == expected
    outcomes = Counter(topic for topic, _, _ in expected.values())
    assert outcomes[topics.FILES_NOTIFIED] > 0
    assert outcomes[topics.FILES_DLQ] > 0
    assert sum(r for _, r, _ in expected.values()) > 0
    for record in ended[topics.FILES_DLQ]:
        reason = headers_of(record)["dlq-reason"].decode()
        assert reason.startswith(("permanent failure: file", "gave up after 3 attempts"))


async def test_retry_messages_carry_attempt_and_not_before(
        stack: DemoStack, report: dict[str, list[dict[str, str]]],
        jaeger_endpoints: JaegerStatus) -> None:
    await wait_for_outcomes(stack.config, {u["correlation_id"] for u in report["uploads"]},
                            FILE_TERMINALS)
    retried = (await read_topics(stack.config, [topics.FILES_RETRY]))[topics.FILES_RETRY]
    assert retried
    for record in retried:
        headers = headers_of(record)
        assert int(headers["retry-attempt"]) >= 2
        assert int(headers["retry-not-before"]) >= record.timestamp
        assert headers["retry-reason"] == b"transient failure: storage timed out"
    # The backoff is waited out before the process span starts: in the trace it is time in
    # the topic, not processing.
    for record in retried[:3]:
        headers = headers_of(record)
        message_id = f"{record.topic}.{record.partition}.{record.offset}"
        spans = fetch_spans_v3(jaeger_endpoints.query,
                               headers["traceparent"].decode().split("-")[1],
                               lambda found, m=message_id: bool(_processing_of(found, m)))
        (process,) = _processing_of(spans, message_id)
        not_before_ns = int(headers["retry-not-before"]) * 1_000_000
        assert process["start_ns"] >= not_before_ns - 1_000_000, (message_id, process)


def _processing_of(spans: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"].startswith("process ")
            and s["attributes"].get("messaging.message.id") == message_id]


async def test_sagas_end_in_exactly_one_terminal_state(
        stack: DemoStack, report: dict[str, list[dict[str, str]]]) -> None:
    orders = {o["correlation_id"] for o in report["orders"]}
    assert len(orders) == FLOWS // 2
    ended = await wait_for_outcomes(stack.config, orders, ORDER_TERMINALS)
    states: dict[str, set[str]] = {cid: set() for cid in orders}
    for topic in ORDER_TERMINALS:
        for record in ended[topic]:
            if _correlation_id(record) in orders:
                states[_correlation_id(record)].add(json.loads(record.value)["saga_state"])
    simulation = Simulation(0.35, 0.1, 0.25, 0.3, stack.config.work_ms)
    expected = {cid: {"compensated" if reservation_fails(stack.config.seed, simulation, cid)
                      else "completed"} for cid in orders}
    assert states == expected
    assert {"completed"} in expected.values()
    assert {"compensated"} in expected.values()
    refunded = (await read_topics(stack.config, [topics.PAYMENTS_REFUNDED]))
    assert {_correlation_id(r) for r in refunded[topics.PAYMENTS_REFUNDED]} == {
        cid for cid, state in expected.items() if state == {"compensated"}}


async def test_payments_charged_fans_out_to_two_consumer_groups(
        stack: DemoStack, report: dict[str, list[dict[str, str]]]) -> None:
    orders = {o["correlation_id"] for o in report["orders"]}
    await wait_for_outcomes(stack.config, orders, ORDER_TERMINALS)
    charged = stack.config.topic(topics.PAYMENTS_CHARGED)
    for group in ("inventory", "orders"):
        async with asyncio.timeout(30):
            while True:
                lag = [p for p in await read_group_lag(stack.config.bootstrap,
                                                       stack.config.group(group))
                       if p.topic == charged]
                if lag and all(p.lag == 0 for p in lag):
                    break
                await asyncio.sleep(0.2)
        assert sum(p.committed or 0 for p in lag) >= len(orders)


async def test_every_message_carries_its_flow_correlation_id(
        stack: DemoStack, report: dict[str, list[dict[str, str]]]) -> None:
    uploads = {u["correlation_id"] for u in report["uploads"]}
    orders = {o["correlation_id"] for o in report["orders"]}
    await wait_for_outcomes(stack.config, uploads, FILE_TERMINALS)
    await wait_for_outcomes(stack.config, orders, ORDER_TERMINALS)
    names = [t for t in topics.ALL_TOPICS if t != topics.CONTROL]
    everything = await read_topics(stack.config, names)
    file_topics = {t for t in names if t.startswith("files.")}
    for topic, records in everything.items():
        flows = uploads if topic in file_topics else orders
        for record in records:
            headers = headers_of(record)
            assert _correlation_id(record) in flows | BAD_INPUT, (topic, record.offset)
            assert headers["traceparent"].startswith(b"00-")
    first_topic_of = {_correlation_id(r) for r in everything[topics.FILES_UPLOADED]}
    assert uploads <= first_topic_of


async def test_one_upload_is_one_trace_from_request_to_callback_in_jaeger(
        stack: DemoStack, report: dict[str, list[dict[str, str]]],
        jaeger_endpoints: JaegerStatus) -> None:
    uploads = {u["correlation_id"] for u in report["uploads"]}
    ended = await wait_for_outcomes(stack.config, uploads, FILE_TERMINALS)
    wanted = next(cid for cid in sorted(uploads) if _expected_upload(stack, cid)[0]
                  == topics.FILES_NOTIFIED and _expected_upload(stack, cid)[1] > 0)
    record = next(r for r in ended[topics.FILES_NOTIFIED] if _correlation_id(r) == wanted)
    trace_id = headers_of(record)["traceparent"].decode().split("-")[1]
    prefix = stack.config.topic_prefix
    retries = _expected_upload(stack, wanted)[1]

    spans = fetch_spans_v3(jaeger_endpoints.query, trace_id, lambda found: any(
        s["name"] == f"send {prefix}files.notified" for s in found))
    by_name: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        by_name.setdefault(str(span["name"]), []).append(span)
    by_id = {span["spanId"]: span for span in spans}

    def parent(span: dict[str, object]) -> dict[str, object]:
        return by_id[span["parentSpanId"]]

    (request,) = by_name["POST /files"]
    assert (request["service"], request["parentSpanId"]) == ("uploads", "")
    hops = [("files.uploaded", "uploads", "processor"),
            ("files.processed", "processor", "notifier"),
            ("files.notified", "notifier", None)]
    for topic, producer, consumer in hops:
        (send,) = by_name[f"send {prefix}{topic}"]
        assert send["service"] == producer
        if consumer:
            (process,) = by_name[f"process {prefix}{topic}"]
            assert process["service"] == consumer
            assert process["parentSpanId"] == send["spanId"]
            assert process["links"] == [send["spanId"]]
    assert parent(by_name[f"send {prefix}files.uploaded"][0]) is request
    retried = by_name.get(f"process {prefix}files.uploaded.retry", [])
    assert len(retried) == retries
    for span in retried:
        assert parent(span)["name"] == f"send {prefix}files.uploaded.retry"
    callbacks = by_name["POST /callbacks/{name}"]
    assert len(callbacks) == _expected_upload(stack, wanted)[2] + 1
    for callback in callbacks:
        assert callback["service"] == "webhook"
        assert (parent(callback)["name"], parent(callback)["service"]) == ("POST", "notifier")

    # The v1 API shows the same producer -> consumer edge as the span's only reference.
    v1 = fetch_trace(jaeger_endpoints.query, trace_id, lambda t: True)
    (process_v1,) = [s for s in v1["spans"] if s["operationName"]
                     == f"process {prefix}files.uploaded"]
    send_id = by_name[f"send {prefix}files.uploaded"][0]["spanId"]
    assert [r["spanID"] for r in process_v1["references"]] == [send_id]


BAD_INPUT = {"bad-json", "bad-fields", "bad-context"}  # correlation IDs of the test below


async def test_bad_messages_are_dead_lettered_and_garbage_context_starts_a_new_trace(
        stack: DemoStack, report: dict[str, list[dict[str, str]]]) -> None:
    good = {"file_id": "f-garbage-ctx", "name": "ok.pdf", "size": 10,
            "callback_url": f"{stack.config.url('webhook')}/callbacks/x", "simulate": {
                "transient_failure": 0, "permanent_failure": 0}}
    producer = AIOKafkaProducer(bootstrap_servers=stack.config.bootstrap)
    await producer.start()
    try:
        topic = stack.config.topic(topics.FILES_UPLOADED)
        await producer.send_and_wait(topic, b"\xff not json", headers=[
            ("correlation-id", b"bad-json")])
        await producer.send_and_wait(topic, b'{"file_id": "f-missing"}', headers=[
            ("correlation-id", b"bad-fields")])
        await producer.send_and_wait(topic, json.dumps(good).encode(), headers=[
            ("correlation-id", b"bad-context"), ("traceparent", b"00-zz-garbage-01"),
            ("x-binary", b"\xff\xfe\x00")])
    finally:
        await producer.stop()
    # Each on its own correlation ID: they may be handled in any order (other partitions).
    dead = await wait_for_outcomes(stack.config, {"bad-json", "bad-fields"}, [topics.FILES_DLQ])
    reasons = {_correlation_id(r): headers_of(r)["dlq-reason"].decode()
               for r in dead[topics.FILES_DLQ] if _correlation_id(r).startswith("bad-")}
    assert reasons["bad-fields"] == "invalid message: missing field(s): name, size, callback_url"
    assert reasons["bad-json"].startswith("invalid message: value is not JSON")
    done = await wait_for_outcomes(stack.config, {"bad-context"}, [topics.FILES_NOTIFIED])
    notified = [r for r in done[topics.FILES_NOTIFIED] if _correlation_id(r) == "bad-context"]
    assert json.loads(notified[0].value)["file_id"] == "f-garbage-ctx"
    assert headers_of(notified[0])["traceparent"].startswith(b"00-")


def _post(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_post_files_with_an_invalid_body_gets_400_with_reasons(stack: DemoStack) -> None:
    url = f"{stack.config.url('uploads')}/files"
    assert _post(url, b"{not json") == (400, {"error": "the body is not valid JSON"})
    status, body = _post(url, json.dumps({"name": "", "size": -1}).encode())
    assert status == 400
    for field in ("'name'", "'size'", "'callback_url'"):
        assert field in body["error"]
    status, body = _post(f"{stack.config.url('orders')}/orders", b"[]")
    assert (status, body) == (400, {"error": "the body must be a JSON object"})


async def test_sigkilled_services_restart_and_lose_no_flow(
        stack: DemoStack, report: dict[str, list[dict[str, str]]]) -> None:
    await wait_for_outcomes(stack.config, {u["correlation_id"] for u in report["uploads"]},
                            FILE_TERMINALS)
    before = stack.pids()
    load = subprocess.Popen([sys.executable, "-m", "flowscope", "loadgen", "--json", "--rate",
                             "20", "--duration", "4", "--seed", str(SEED + 1),
                             "--work-ms", "40"], env=stack.env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    # Kill once the processor has committed part of the new load: mid-run, not before or after.
    processor_group = stack.config.group("processor")
    async with asyncio.timeout(60):
        while sum(p.committed or 0 for p in await read_group_lag(
                stack.config.bootstrap, processor_group)) < FLOWS // 2 + 10:
            await asyncio.sleep(0.1)
    for name in ("processor", "payments", "notifier"):
        os.kill(before[name], signal.SIGKILL)
    out, _ = load.communicate(timeout=120)
    second = json.loads(out)
    assert second["errors"] == []
    await wait_for_outcomes(stack.config, {u["correlation_id"] for u in second["uploads"]},
                            FILE_TERMINALS)
    await wait_for_outcomes(stack.config, {o["correlation_id"] for o in second["orders"]},
                            ORDER_TERMINALS)
    after = stack.pids()
    for name in ("processor", "payments", "notifier"):
        assert after[name] != before[name]
    assert after["uploads"] == before["uploads"]
