"""A flow that crosses brokers, as the collector sees it: the demo's uploads run Kafka ->
RabbitMQ -> Kafka against the real broker, the real RabbitMQ and a real `flowscope collect`;
each upload is one flow with every hop matched (the RabbitMQ hop with its exchange, routing key,
queue, time waiting and processing time), and the map draws service -> exchange -> queue ->
service, the fanout reaching both of its queues."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from demo_services import topics
from flowscope.infra.jaeger import JaegerStatus
from flowscope.infra.rabbitmq import RabbitmqStatus
from tests.integration.collector_process import Collector
from tests.integration.demo_stack import DemoStack
from tests.integration.test_demo_rabbitmq import delete_topology, post_upload

pytestmark = pytest.mark.timeout(180)
RUNNING = ("webhook", "uploads", "processor", "notifier", "thumbnailer", "indexer", "auditor")
KNOBS = {"thumbnail_failure": "0", "transient_failure": "0", "permanent_failure": "0",
         "callback_failure": "0", "work_ms": "5", "seed": "1"}
UPLOADS = 4


@pytest.fixture(scope="module")
def collector(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus, rabbitmq_node: RabbitmqStatus,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    home = tmp_path_factory.mktemp("rabbitmq-flows")
    running = Collector.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http,
                               jaeger_endpoints.query, f"spans-{uuid.uuid4().hex[:8]}")
    running.env.update(FLOWSCOPE_RABBITMQ_URL=rabbitmq_node.amqp_url,
                       FLOWSCOPE_RABBITMQ_MANAGEMENT_URL=rabbitmq_node.management_url,
                       FLOWSCOPE_LAG_INTERVAL="1")
    running.start()
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def uploads(collector: Collector, kafka_bootstrap: str, rabbitmq_node: RabbitmqStatus,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoStack, list[str]]]:
    home = tmp_path_factory.mktemp("rabbitmq-flows-demo")
    stack = DemoStack.create(home, kafka_bootstrap, collector.otlp_url,
                             f"x{uuid.uuid4().hex[:8]}.", rabbitmq_url=rabbitmq_node.amqp_url,
                             **KNOBS)
    stack.start(only=RUNNING)
    try:
        flows = [f"cross-{uuid.uuid4().hex[:8]}" for _ in range(UPLOADS)]
        for flow in flows:
            post_upload(stack.config, flow)
        yield stack, flows
    finally:
        assert stack.stop() == 0
        asyncio.run(delete_topology(stack.config))


def _hops(flow: dict) -> list[tuple[object, ...]]:  # type: ignore[type-arg]
    return [(h["system"], h["topic"], h["queue"], h["producer"], h["consumer"])
            for h in flow["hop_list"]]


def test_an_upload_is_one_flow_across_kafka_rabbitmq_and_kafka(
        collector: Collector, uploads: tuple[DemoStack, list[str]]) -> None:
    stack, flows = uploads
    t = stack.config.topic
    expected = [("kafka", t(topics.FILES_UPLOADED), None, "uploads", "processor"),
                ("rabbitmq", t("thumbnails"), t("thumbnails.jobs"), "processor", "thumbnailer"),
                ("kafka", t(topics.FILES_PROCESSED), None, "thumbnailer", "notifier"),
                ("kafka", t(topics.FILES_NOTIFIED), None, "notifier", None)]
    for flow_id in flows:
        flow = collector.wait_for(lambda f: f.get("status") == "completed" and all(
            hop in _hops(f) for hop in expected), "flow", flow_id, timeout_s=90)
        rabbit = next(h for h in flow["hop_list"]  # type: ignore[attr-defined]
                      if h["queue"] == t("thumbnails.jobs"))
        assert rabbit["routing_key"] == "render"
        assert rabbit["queue_ms"] is not None
        assert rabbit["processing_ms"] is not None
        assert rabbit["processing_ms"] > 0
        # One trace from the upload's request to the callback.
        assert len(flow["trace_ids"]) == 1  # type: ignore[arg-type]
        # The fan-out: each rendered thumbnail's event reached both queues.
        consumers = {h["consumer"] for h in flow["hop_list"]  # type: ignore[attr-defined]
                     if h["system"] == "rabbitmq"}
        assert {"indexer", "auditor"} <= consumers, _hops(flow)  # type: ignore[arg-type]


def test_the_map_draws_exchange_and_queue_nodes_and_the_lag_page_has_the_queues(
        collector: Collector, uploads: tuple[DemoStack, list[str]]) -> None:
    stack, _ = uploads
    t = stack.config.topic
    jobs_exchange, jobs = f"rabbitmq:exchange:{t('thumbnails')}", \
        f"rabbitmq:queue:{t('thumbnails.jobs')}"
    events = f"rabbitmq:exchange:{t('files.events')}"
    wanted = {("processor", jobs_exchange), (jobs_exchange, jobs), (jobs, "thumbnailer"),
              ("thumbnailer", events), (events, f"rabbitmq:queue:{t('files.events.search')}"),
              (events, f"rabbitmq:queue:{t('files.events.audit')}"),
              (f"rabbitmq:queue:{t('files.events.search')}", "indexer"),
              (f"rabbitmq:queue:{t('files.events.audit')}", "auditor"),
              ("thumbnailer", t(topics.FILES_PROCESSED))}

    def complete(result: dict) -> bool:  # type: ignore[type-arg]
        edges = {(e["source"], e["target"]): e["count"] for e in result["edges"]}
        return all(edges.get(pair, 0) >= UPLOADS for pair in wanted)

    result = collector.wait_for(complete, "topology", "--since", "1h", timeout_s=90)
    nodes = {n["id"]: n for n in result["nodes"]}  # type: ignore[attr-defined]
    assert nodes[jobs] == {"id": jobs, "kind": "queue", "system": "rabbitmq",
                           "name": t("thumbnails.jobs")}
    assert nodes[jobs_exchange]["kind"] == "exchange"
    assert nodes[t(topics.FILES_UPLOADED)]["system"] == "kafka"
    # The thumbnailer's two competing consumers, once the management API counts both.
    lag = collector.wait_for(lambda r: any(
        row["system"] == "rabbitmq" and row["group"] == t("thumbnails.jobs")
        and row["consumers"] == 2 for row in r["partitions"]), "lag")
    row = next(r for r in lag["partitions"]  # type: ignore[attr-defined]
               if r["system"] == "rabbitmq" and r["group"] == t("thumbnails.jobs"))
    assert row["topic"] == t("thumbnails")  # fed by the thumbnails exchange
    assert row["lag"] == row["ready"] + row["unacknowledged"]
