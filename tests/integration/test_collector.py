"""The collector against the real broker, the real Jaeger and the demo services: topology
counts, flows by correlation ID, statuses, forwarding, foreign instrumentation, bad input,
the spans topic and a collector killed mid-run."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from google.protobuf import json_format

from demo_services import topics
from flowscope.infra.jaeger import JaegerStatus
from tests.integration.collector_process import Collector, post_otlp
from tests.integration.conftest import create_topic, run_flowscope
from tests.integration.demo_stack import (
    FILE_TERMINALS,
    ORDER_TERMINALS,
    DemoStack,
    headers_of,
    read_topics,
    wait_for_outcomes,
)
from tests.integration.jaeger_api import fetch_trace
from tests.otlp_factory import new_span_id, new_trace_id, request, span

pytestmark = pytest.mark.jaeger

PRODUCERS = {topics.FILES_UPLOADED: "uploads", topics.ORDERS_PLACED: "orders"}
CONSUMERS = {
    topics.FILES_UPLOADED: ["processor"], topics.FILES_RETRY: ["processor"],
    topics.FILES_PROCESSED: ["notifier"], topics.FILES_CALLBACK_RETRY: ["notifier"],
    topics.ORDERS_PLACED: ["payments"], topics.PAYMENTS_CHARGED: ["inventory", "orders"],
    topics.INVENTORY_RESERVED: ["shipping"], topics.INVENTORY_FAILED: ["payments"],
    topics.SHIPPING_DISPATCHED: ["orders"], topics.PAYMENTS_REFUNDED: ["orders"],
}
# The tap of the module's collector reads this run's demo topics and test topics only.
DEMO_AND_TEST_TOPICS = r"^(demo[0-9a-f]{8}\.|test-)"
SERVICES = {"uploads", "processor", "notifier", "orders", "payments", "inventory", "shipping"}
LOAD = ["--rate", "20", "--duration", "3", "--seed", "5", "--transient-failure", "0.3",
        "--permanent-failure", "0.1", "--inventory-failure", "0.3"]


@pytest.fixture(scope="module")
def collector(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    home = tmp_path_factory.mktemp("collector")
    running = Collector.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http,
                               jaeger_endpoints.query, f"spans-{uuid.uuid4().hex[:8]}")
    running.env.update(FLOWSCOPE_TAP="on", FLOWSCOPE_TAP_TOPICS=DEMO_AND_TEST_TOPICS)
    running.start()
    yield running
    assert running.stop() == 0


@pytest.fixture
def spawned() -> Iterator[list[Collector]]:
    """Collectors a test starts itself; whatever happens, none outlives the test."""
    started: list[Collector] = []
    yield started
    for collector in started:
        if collector.proc is not None and collector.proc.poll() is None:
            collector.kill()


@pytest.fixture(scope="module")
def demo(collector: Collector, kafka_bootstrap: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoStack, dict]]:  # type: ignore[type-arg]
    home = tmp_path_factory.mktemp("demo")
    stack = DemoStack.create(home, kafka_bootstrap, collector.otlp_url,
                             f"demo{uuid.uuid4().hex[:8]}.",
                             callback_failure="0.2", max_attempts="3", backoff_base_ms="50",
                             backoff_max_ms="200", work_ms="5")
    stack.start()
    report = stack.loadgen(*LOAD)
    asyncio.run(wait_for_outcomes(stack.config, {u["correlation_id"] for u in report["uploads"]},
                                  FILE_TERMINALS))
    asyncio.run(wait_for_outcomes(stack.config, {o["correlation_id"] for o in report["orders"]},
                                  ORDER_TERMINALS))
    yield stack, report
    stack.stop()


def _cid(record: object) -> str:
    return headers_of(record).get("correlation-id", b"").decode()  # type: ignore[arg-type]


def test_topology_has_every_service_and_topic_with_the_counts_produced(
        collector: Collector, demo: tuple[DemoStack, dict]) -> None:  # type: ignore[type-arg]
    stack, _ = demo
    prefix = stack.config.topic_prefix
    names = [t for t in topics.ALL_TOPICS if t != topics.CONTROL]
    produced = {prefix + t: len(r) for t, r in asyncio.run(read_topics(stack.config, names))
                .items()}
    expected: Counter[tuple[str, str]] = Counter()
    for topic, count in produced.items():
        for consumer in CONSUMERS.get(topic.removeprefix(prefix), []):
            expected[(topic, consumer)] = count

    def complete(result: dict) -> bool:  # type: ignore[type-arg]
        edges = {(e["source"], e["target"]): e["count"] for e in result["edges"]}
        into = Counter[str]()
        for (_, target), count in edges.items():
            if target in produced:
                into[target] += count
        return all(edges.get(k) == v for k, v in expected.items()) and dict(into) == produced

    result = collector.wait_for(complete, "topology", "--since", "1h")
    nodes = {n["id"]: n["kind"] for n in result["nodes"]}
    demo_nodes = {n: k for n, k in nodes.items() if n in SERVICES or n.startswith(prefix)}
    assert {n for n, k in demo_nodes.items() if k == "service"} == SERVICES
    assert {n for n, k in demo_nodes.items() if k == "topic"} == set(produced)
    edges = {(e["source"], e["target"]): e for e in result["edges"]}
    assert edges[("uploads", prefix + topics.FILES_UPLOADED)]["count"] == \
        produced[prefix + topics.FILES_UPLOADED]
    retry_edge = edges[(prefix + topics.FILES_RETRY, "processor")]
    assert retry_edge["retries"] == retry_edge["count"] > 0
    assert retry_edge["p95_ms"] >= retry_edge["p50_ms"] > 0


def test_flow_by_correlation_id_lists_every_hop_with_retries(
        collector: Collector, demo: tuple[DemoStack, dict]) -> None:  # type: ignore[type-arg]
    stack, _ = demo
    prefix = stack.config.topic_prefix
    seen = asyncio.run(read_topics(stack.config, [topics.FILES_RETRY, topics.FILES_NOTIFIED,
                                                  topics.FILES_CALLBACK_RETRY]))
    retries = Counter(_cid(r) for r in seen[topics.FILES_RETRY])
    callback_retries = Counter(_cid(r) for r in seen[topics.FILES_CALLBACK_RETRY])
    notified = {_cid(r) for r in seen[topics.FILES_NOTIFIED]}
    wanted = max((c for c in notified if retries[c]), key=lambda c: retries[c])
    hops_expected = 1 + retries[wanted] + 1 + callback_retries[wanted]
    flow = collector.wait_for(lambda f: f["hops"] == hops_expected, "flow", wanted)
    assert flow["status"] == "completed"
    assert flow["retries"] == retries[wanted] + callback_retries[wanted]
    consumed = [h["topic"].removeprefix(prefix) for h in flow["hop_list"] if h["consumer"]]
    assert Counter(consumed) == Counter({
        topics.FILES_UPLOADED: 1, topics.FILES_RETRY: retries[wanted],
        topics.FILES_PROCESSED: 1, topics.FILES_CALLBACK_RETRY: callback_retries[wanted]})
    assert consumed[0] == topics.FILES_UPLOADED
    waiting = [h for h in flow["hop_list"] if h["consumer"] is None]
    assert [h["topic"].removeprefix(prefix) for h in waiting] == [topics.FILES_NOTIFIED]
    times = [h["produced"] for h in flow["hop_list"]]
    assert times == sorted(times)
    for hop in flow["hop_list"]:
        if hop["consumer"]:
            assert hop["queue_ms"] is not None
            assert hop["processing_ms"] > 0


def test_dead_lettered_compensated_and_completed_flows_have_those_statuses(
        collector: Collector, demo: tuple[DemoStack, dict]) -> None:  # type: ignore[type-arg]
    stack, _ = demo
    ends = asyncio.run(read_topics(stack.config, [topics.FILES_DLQ, topics.ORDERS_CANCELLED,
                                                  topics.ORDERS_COMPLETED]))
    for topic, status in ((topics.FILES_DLQ, "dead-lettered"),
                          (topics.ORDERS_CANCELLED, "compensated"),
                          (topics.ORDERS_COMPLETED, "completed")):
        assert ends[topic], f"the seed gave no flow ending on {topic}"
        for record in ends[topic][:3]:
            collector.wait_for(lambda f, s=status: f["status"] == s, "flow", _cid(record))
    listed = collector.inspect("flows", "--since", "1h", "--limit", "1000")
    statuses = Counter(f["status"] for f in listed["flows"])
    assert statuses["dead-lettered"] == len({_cid(r) for r in ends[topics.FILES_DLQ]})
    assert statuses["compensated"] == len(ends[topics.ORDERS_CANCELLED])


def test_spans_forwarded_to_jaeger_are_found_by_its_query_api(
        collector: Collector, demo: tuple[DemoStack, dict],  # type: ignore[type-arg]
        jaeger_endpoints: JaegerStatus) -> None:
    stack, report = demo
    cid = report["uploads"][0]["correlation_id"]
    flow = collector.wait_for(lambda f: f["trace_ids"], "flow", cid)
    trace = fetch_trace(jaeger_endpoints.query, flow["trace_ids"][0], lambda t: any(
        s["operationName"] == f"send {stack.config.topic(topics.FILES_UPLOADED)}"
        for s in t["spans"]))
    services = {p["serviceName"] for p in trace["processes"].values()}
    assert {"uploads", "processor"} <= services


async def test_official_aiokafka_instrumentation_yields_the_right_edges(
        collector: Collector, kafka_bootstrap: str, unique_name: str) -> None:
    topic = await create_topic(kafka_bootstrap, unique_name, partitions=2)
    script = str(Path(__file__).with_name("official_aiokafka_client.py"))
    for role, service in (("produce", "shop-producer"), ("consume", "shop-consumer")):
        done = subprocess.run([sys.executable, script, role, kafka_bootstrap, topic, "6",
                               collector.otlp_url, service], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr

    def complete(result: dict) -> bool:  # type: ignore[type-arg]
        edges = {(e["source"], e["target"]): e["count"] for e in result["edges"]}
        return edges.get(("shop-producer", topic)) == 6 and edges.get(
            (topic, "shop-consumer")) == 6

    result = collector.wait_for(complete, "topology", "--since", "1h")
    edges = {(e["source"], e["target"]): e for e in result["edges"]}
    assert edges[(topic, "shop-consumer")]["p50_ms"] is not None  # queue time: matched hops


def test_bad_bodies_get_400_or_413_and_are_counted(collector: Collector) -> None:
    before = collector.inspect("counters")["counters"]
    url = collector.otlp_url
    assert post_otlp(url, b"\xff\xff\xff garbage", "application/x-protobuf")[0] == 400
    status, body, _ = post_otlp(url, b"{not json", "application/json")
    assert status == 400
    assert b"not OTLP/JSON" in body
    assert post_otlp(url, b"\x1f\x8b broken", "application/x-protobuf", "gzip")[0] == 400
    assert post_otlp(url, b"x" * (300 * 1024), "application/x-protobuf")[0] == 413
    assert post_otlp(url, gzip.compress(b"\0" * (600 * 1024)), "application/x-protobuf",
                 "gzip")[0] == 413
    good = request({"json-client": [span(name="send jtopic", kind="producer", attributes={
        "messaging.system": "kafka", "messaging.destination.name": "jtopic",
        "messaging.message.conversation_id": "json-flow"})]})
    document = json_format.MessageToDict(good)
    for resource in document["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for item in scope["spans"]:
                for key in ("traceId", "spanId"):
                    item[key] = base64.b64decode(item[key]).hex()
    assert post_otlp(url, json.dumps(document).encode(), "application/json")[0] == 200
    collector.wait_for(lambda f: f["id"] == "json-flow", "flow", "json-flow")
    large = request({"bulk-client": [span(name="send bulk", kind="producer", attributes={
        "messaging.system": "kafka", "messaging.destination.name": "bulk",
        "messaging.message.conversation_id": "bulk-flow", "padding": "x" * 400})
        for _ in range(420)]}).SerializeToString()
    assert 200 * 1024 < len(large) < 256 * 1024
    assert post_otlp(url, large, "application/x-protobuf")[0] == 200
    collector.wait_for(lambda f: f["id"] == "bulk-flow", "flow", "bulk-flow")
    # Counters reach the store once a second: wait until both kinds have arrived.
    after = collector.wait_for(
        lambda c: c["counters"].get("rejected_bodies_malformed", 0)
        >= before.get("rejected_bodies_malformed", 0) + 3
        and c["counters"].get("rejected_bodies_oversized", 0)
        >= before.get("rejected_bodies_oversized", 0) + 2, "counters")["counters"]
    assert after["rejected_bodies_oversized"] >= before.get("rejected_bodies_oversized", 0) + 2


async def _produce_span_batches(bootstrap: str, topic: str, flows: list[str],
                                per_second: float | None = None) -> None:
    """One garbage record, then a batch (a produce and its consume) per flow; at a steady
    rate when per_second is given, else as fast as the broker takes them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    started = time.monotonic()
    try:
        await producer.send_and_wait(topic, b"\x08\x96\x01 not an export request \xff")
        for index, flow in enumerate(flows):
            if per_second is not None:  # pace, not synchronise: the test waits on the store
                await asyncio.sleep(max(0.0, started + index / per_second - time.monotonic()))
            trace, producer_span = new_trace_id(), new_span_id()
            batch = request({"kafka-svc": [
                span(name="send kt", kind="producer", trace_id=trace, span_id=producer_span,
                     attributes={"messaging.system": "kafka", "messaging.destination.name": "kt",
                                 "messaging.message.conversation_id": flow}),
                span(name="process kt", kind="consumer", trace_id=trace, parent=producer_span,
                     start_ms=5, attributes={"messaging.system": "kafka",
                                             "messaging.destination.name": "kt",
                                             "messaging.message.conversation_id": flow})]})
            await producer.send(topic, batch.SerializeToString())
        await producer.flush()
    finally:
        await producer.stop()


def test_collector_killed_mid_run_loses_and_duplicates_no_span_from_the_topic(
        kafka_bootstrap: str, tmp_path: Path, jaeger_endpoints: JaegerStatus,
        spawned: list[Collector]) -> None:
    own = Collector.create(tmp_path, kafka_bootstrap, jaeger_endpoints.otlp_http,
                           jaeger_endpoints.query, f"spans-kill-{uuid.uuid4().hex[:8]}")
    spawned.append(own)
    flows = [f"kill-flow-{i}" for i in range(600)]
    own.start()
    # Spans keep arriving at a steady rate (about 15 s of them) while the collector is killed
    # and started again.
    sender = threading.Thread(target=asyncio.run, args=(_produce_span_batches(
        kafka_bootstrap, own.env["FLOWSCOPE_SPANS_TOPIC"], flows, per_second=40),))
    sender.start()
    try:
        own.wait_for(lambda r: 50 <= len(r["flows"]) < len(flows), "flows", "--since",
                     "100000d", "--limit", "1000")
        counters = own.wait_for(lambda c: c["counters"].get("spans_topic_garbage", 0) >= 1,
                                "counters")["counters"]
        assert counters["spans_topic_garbage"] == 1
        own.kill()
        own.start()
        stored_at_restart = len(own.inspect("flows", "--since", "100000d",
                                            "--limit", "1000")["flows"])  # type: ignore[arg-type]
        assert stored_at_restart < len(flows)  # the restart happened while spans arrived
    finally:
        sender.join(timeout=60)
    assert not sender.is_alive()
    result = own.wait_for(lambda r: len(r["flows"]) == len(flows), "flows", "--since",
                          "100000d", "--limit", "1000", timeout_s=120)
    assert sorted(f["id"] for f in result["flows"]) == sorted(flows)
    assert {f["hops"] for f in result["flows"]} == {1}
    topology = own.inspect("topology", "--since", "100000d")
    edges = {(e["source"], e["target"]): e["count"] for e in topology["edges"]}
    assert edges == {("kafka-svc", "kt"): len(flows), ("kt", "kafka-svc"): len(flows)}
    assert own.stop() == 0


def test_collector_keeps_running_through_a_broker_restart(
        own_broker_env: dict[str, str], tmp_path: Path, jaeger_endpoints: JaegerStatus,
        spawned: list[Collector]) -> None:
    started = run_flowscope(own_broker_env, "kafka", "start")
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    own = Collector.create(tmp_path / "c", bootstrap, jaeger_endpoints.otlp_http,
                           jaeger_endpoints.query, f"spans-restart-{uuid.uuid4().hex[:8]}")
    spawned.append(own)
    own.start()
    topic = own.env["FLOWSCOPE_SPANS_TOPIC"]
    asyncio.run(_produce_span_batches(bootstrap, topic, ["before-restart"]))
    own.wait_for(lambda f: f["hops"] == 1, "flow", "before-restart")

    assert run_flowscope(own_broker_env, "kafka", "stop").returncode == 0
    # The outage shows on /health within seconds, though the consumer itself sees no error.
    own.wait_for_health(lambda h: h["components"]["spans_topic"]["state"] == "degraded"
                        and "broker unreachable" in h["components"]["spans_topic"]["reason"])
    # While the broker is away, OTLP/HTTP ingest goes on.
    trace = new_trace_id()
    during = request({"http-svc": [span(name="send t", kind="producer", trace_id=trace,
                                        attributes={"messaging.system": "kafka",
                                                    "messaging.destination.name": "t",
                                                    "messaging.message.conversation_id":
                                                        "during-outage"})]})
    assert post_otlp(own.otlp_url, during.SerializeToString(), "application/x-protobuf")[0] == 200
    own.wait_for(lambda f: f["id"] == "during-outage", "flow", "during-outage")

    restarted_at = time.time()
    assert run_flowscope(own_broker_env, "kafka", "start").returncode == 0
    asyncio.run(_produce_span_batches(bootstrap, topic, ["after-restart"]))
    own.wait_for(lambda f: f["hops"] == 1, "flow", "after-restart", timeout_s=120)
    # Lag polling came back too: the collector's own group is polled again, caught up.
    own.wait_for(lambda r: any(p["at"] > restarted_at and p["lag"] == 0
                               for p in r["partitions"]),
                 "lag", "--group", f"flowscope-collector.{topic}", timeout_s=120)
    assert own.proc is not None
    assert own.proc.poll() is None
    own.wait_for_health(lambda h: h["status"] == "ok", timeout_s=60)
    # The outage was seen, and the end of it counted, by every consumer and the lag poller.
    counters = own.wait_for(lambda c: all(c["counters"].get(f"{name}_reconnects", 0) >= 1
                                          for name in ("spans_topic", "lag_poller")),
                            "counters")["counters"]
    assert counters["spans_topic_broker_unreachable"] >= 1  # type: ignore[index]
    assert own.stop() == 0


async def test_tapped_messages_join_flows_even_where_no_span_was_sent(
        collector: Collector, kafka_bootstrap: str, unique_name: str) -> None:
    topic = await create_topic(kafka_bootstrap, unique_name)
    flow = f"tap-only-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", headers=[("correlation-id", flow.encode())])
    finally:
        await producer.stop()
    found = await asyncio.to_thread(collector.wait_for, lambda f: f["topics"] == [topic],
                                    "flow", flow)
    assert [(h["topic"], h["offset"], h["producer"]) for h in found["hop_list"]] == \
        [(topic, 0, None)]


async def test_propagation_health_is_zero_without_tracing_and_full_for_the_demo(
        collector: Collector, demo: tuple[DemoStack, dict], kafka_bootstrap: str,  # type: ignore[type-arg]
        unique_name: str) -> None:
    stack, _ = demo
    plain = await create_topic(kafka_bootstrap, unique_name)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(plain, f"m{i}".encode())
    finally:
        await producer.stop()
    demo_topics = {stack.config.topic(t) for t in topics.ALL_TOPICS if t != topics.CONTROL}

    def rows(result: dict) -> dict:  # type: ignore[type-arg]
        return {(r["topic"], r["producer"]): r for r in result["topics"]}

    result = await asyncio.to_thread(collector.wait_for, lambda r: any(
        t == plain and row["messages"] == 5 for (t, _), row in rows(r).items())
        and stack.config.topic(topics.FILES_UPLOADED) in {t for t, _ in rows(r)},
        "propagation", "--since", "1h")
    by_key = rows(result)
    assert by_key[(plain, "unknown")]["share"] == 0.0
    demo_rows = [r for (t, _), r in by_key.items() if t in demo_topics]
    assert demo_rows
    assert all(r["share"] == 1.0 for r in demo_rows)
    assert by_key[(stack.config.topic(topics.FILES_UPLOADED), "uploads")]["messages"] > 0
