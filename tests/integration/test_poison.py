"""Poison through the real broker: hostile headers, keys and values on a tapped topic, and
garbage on the spans topic, are recorded or counted, and the messages after them still are;
a tap that fails is shown as down on /health within seconds and started again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from base.settings import Settings
from collectors.collect import run_collector
from collectors.ingest import tap
from flowscope.infra.jaeger import JaegerStatus
from tests.integration.collector_process import Collector, get_json
from tests.integration.demo_stack import free_port
from tests.otlp_factory import new_span_id, new_trace_id, request, span

pytestmark = pytest.mark.jaeger
PREFIX = "poison-"
MB = 1024 * 1024
VALID_TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def collector(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    home = tmp_path_factory.mktemp("poison")
    running = Collector.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http,
                               jaeger_endpoints.query, f"spans-poison-{uuid.uuid4().hex[:8]}")
    running.env.update(FLOWSCOPE_TAP="on", FLOWSCOPE_TAP_TOPICS=f"^{PREFIX}")
    running.start()
    yield running
    assert running.stop() == 0


async def _big_topic(bootstrap: str) -> str:
    """A topic that takes messages of a few MB (the broker's default limit is 1 MB)."""
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await asyncio.wait_for(admin.create_topics([NewTopic(
            name, 1, 1, topic_configs={"max.message.bytes": str(8 * MB)})]), 30)
    finally:
        await admin.close()
    return name


async def test_hostile_messages_on_a_tapped_topic_are_recorded_and_the_tap_goes_on(
        collector: Collector, kafka_bootstrap: str) -> None:
    topic = await _big_topic(kafka_bootstrap)
    run = uuid.uuid4().hex[:6]
    hostile = [
        (f"sup2-{run}", b"k", [("retry-attempt", "²".encode())]),
        (f"big-{run}", b"K" * MB, [("x-big", b"v" * MB)]),
        (f"utf8-{run}", b"\xff\xfe\x00", [("x-bad", b"\xc3\x28\xa0\xa1")]),
        (f"tp-{run}", b"k", [("traceparent", b"00-" + b"a" * 10 * 1024)]),
        (f"html-{run}", b"<script>alert(1)</script>", [("x-html", b"<img src=x onerror=1>")]),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=8 * MB)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", headers=[
            ("correlation-id", f"before-{run}".encode()), ("traceparent", VALID_TRACEPARENT)])
        for correlation, key, headers in hostile:
            await producer.send_and_wait(topic, b"{}", key=key, headers=[
                ("correlation-id", correlation.encode()), *headers])
        await producer.send_and_wait(topic, b"{}", headers=[
            ("correlation-id", f"after-{run}".encode())])
    finally:
        await producer.stop()

    after = await asyncio.to_thread(collector.wait_for, lambda f: f["topics"] == [topic],
                                    "flow", f"after-{run}")
    assert [h["offset"] for h in after["hop_list"]] == [len(hostile) + 1]
    for offset, (correlation, _, _) in enumerate(hostile, start=1):
        found = collector.inspect("flow", correlation)
        assert [h["offset"] for h in found["hop_list"]] == [offset], correlation  # type: ignore[index]
    # The 1 MB key is cut; counters reach the store once a second.
    counters = collector.wait_for(lambda c: c["counters"].get("messages_truncated", 0) >= 1,
                                  "counters")["counters"]
    assert counters.get("tap_skipped_records", 0) == 0  # type: ignore[union-attr]
    assert collector.health()["components"]["tap"]["state"] == "ok"  # type: ignore[index]


async def test_garbage_and_hostile_spans_on_the_spans_topic_are_counted_and_the_rest_stored(
        collector: Collector, kafka_bootstrap: str) -> None:
    topic = collector.env["FLOWSCOPE_SPANS_TOPIC"]
    run = uuid.uuid4().hex[:6]
    huge_times = span(name="send t", kind="producer", attributes={
        "messaging.system": "kafka", "messaging.destination.name": "t",
        "messaging.message.conversation_id": f"huge-{run}", "messaging.kafka.offset": "²",
        "messaging.message.retry_attempt": "9" * 4000})
    huge_times.start_time_unix_nano = huge_times.end_time_unix_nano = 2**64 - 1
    long_name = span(name="send " + "x" * 200_000, kind="producer", attributes={
        "messaging.system": "kafka", "messaging.message.conversation_id": f"long-{run}"})
    trace, producer_span = new_trace_id(), new_span_id()
    after = request({"svc": [span(name="send t", kind="producer", trace_id=trace,
                                  span_id=producer_span, attributes={
                                      "messaging.system": "kafka",
                                      "messaging.destination.name": "t",
                                      "messaging.message.conversation_id": f"after-{run}"})]})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=8 * MB)
    await producer.start()
    try:
        for value in (b"\x0a\xff\xff\xff\xff\x0f", b"garbage", b"",
                      request({"svc": [huge_times, long_name]}).SerializeToString(),
                      after.SerializeToString()):
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()
    await asyncio.to_thread(collector.wait_for, lambda f: f["id"] == f"after-{run}",
                            "flow", f"after-{run}")
    huge = collector.inspect("flow", f"huge-{run}")
    assert huge["id"] == f"huge-{run}"
    long = collector.inspect("flow", f"long-{run}")
    assert all(len(topic) <= 512 for topic in long["topics"])  # type: ignore[union-attr]
    counters = collector.wait_for(lambda c: c["counters"].get("spans_topic_garbage", 0) >= 2,
                                  "counters")["counters"]
    assert counters["unplaced: time beyond int64 (clamped)"] >= 2  # type: ignore[index]
    assert counters.get("spans_topic_skipped_records", 0) == 0  # type: ignore[union-attr]


class _FailingConsumer(tap.AIOKafkaConsumer):  # type: ignore[misc]
    """A tap consumer that fails in a way the loop does not expect, while `failing` is set."""

    failing = True

    async def getmany(self, *args: object, **kwargs: object) -> dict:  # type: ignore[type-arg]
        if _FailingConsumer.failing:
            raise RuntimeError("tap consumer broke")
        return await super().getmany(*args, **kwargs)


async def test_a_failing_tap_is_down_on_health_within_seconds_and_is_started_again(
        kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tap, "AIOKafkaConsumer", _FailingConsumer)
    _FailingConsumer.failing = True
    port = free_port()
    settings = Settings.from_env({
        "FLOWSCOPE_HOME": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FLOWSCOPE_OTLP_ADDRESS": f"127.0.0.1:{port}",
        "FLOWSCOPE_SPANS_TOPIC": f"spans-health-{uuid.uuid4().hex[:8]}",
        "FLOWSCOPE_TAP_TOPICS": f"^{PREFIX}nothing-"})
    ready, stopping = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(run_collector(settings, on_ready=lambda _: ready.set(),
                                                stopping=stopping))
    health_url = f"http://127.0.0.1:{port}/health"

    async def health_until(predicate, timeout_s: float) -> tuple[int, dict]:  # type: ignore[no-untyped-def,type-arg]
        deadline = time.monotonic() + timeout_s
        status, body = 0, {}
        while time.monotonic() < deadline:
            status, body = await asyncio.to_thread(get_json, health_url)
            if predicate(body):
                return status, body
            await asyncio.sleep(0.2)
        raise AssertionError(f"health never satisfied the test: {status} {body}")

    try:
        await asyncio.wait_for(ready.wait(), 60)
        started = time.monotonic()
        status, body = await health_until(
            lambda b: b["components"].get("tap", {}).get("state") == "down", 15)
        assert time.monotonic() - started < 15
        assert status == 503
        assert body["status"] == "down"
        assert "RuntimeError: tap consumer broke" in body["components"]["tap"]["reason"]
        assert body["components"]["spans_topic"]["state"] in ("ok", "starting")
        _FailingConsumer.failing = False
        status, body = await health_until(
            lambda b: b["components"]["tap"]["state"] == "ok", 60)
        assert status == 200
        assert body["components"]["tap"]["restarts"] >= 1
    finally:
        _FailingConsumer.failing = False
        stopping.set()
        await asyncio.wait_for(running, 60)
