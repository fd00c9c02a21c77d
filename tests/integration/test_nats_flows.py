"""A flow that crosses Kafka and NATS, as the collector sees it: the demo's orders run Kafka ->
JetStream (shipping -> SHIPMENTS -> the tracking consumer) -> core NATS (tracking -> the status
subject -> portal) against the real broker, the real NATS server and a real `flowscope
collect`; each order is one flow with every hop; the map draws service -> stream -> consumer ->
service and service -> subject -> service; a redelivered shipment counts as a retry on its
edge and in its flow, a spent one dead-letters its flow; the consumer's backlog is polled."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from demo_services import subjects, topics
from flowscope.infra.jaeger import JaegerStatus
from flowscope.infra.nats import NatsStatus
from tests.integration.collector_process import Collector
from tests.integration.demo_stack import DemoStack
from tests.integration.test_demo_nats import (
    KNOBS,
    RUNNING,
    choose_orders,
    delete_streams,
    post_order,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def collector(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus, nats_server: NatsStatus,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    home = tmp_path_factory.mktemp("nats-flows")
    running = Collector.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http,
                               jaeger_endpoints.query, f"spans-{uuid.uuid4().hex[:8]}")
    running.env.update(FLOWSCOPE_NATS_URL=nats_server.url,
                       FLOWSCOPE_NATS_MONITORING_URL=nats_server.monitoring_url,
                       FLOWSCOPE_LAG_INTERVAL="1")
    running.start("--no-rabbitmq")
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def orders(collector: Collector, kafka_bootstrap: str, nats_server: NatsStatus,
           tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[DemoStack, dict[str, int | None]]]:
    """The stack, and correlation ID -> the delivery its shipment is followed at (None:
    every delivery failed, dead-lettered)."""
    home = tmp_path_factory.mktemp("nats-flows-demo")
    stack = DemoStack.create(home, kafka_bootstrap, collector.otlp_url,
                             f"f{uuid.uuid4().hex[:8]}.", nats_url=nats_server.url, **KNOBS)
    stack.start(only=RUNNING)
    try:
        chosen = choose_orders(uuid.uuid4().hex[:6])
        for correlation_id in chosen:
            post_order(stack.config, correlation_id)
        yield stack, chosen
    finally:
        assert stack.stop() == 0
        asyncio.run(delete_streams(stack.config))


def _hops(flow: dict) -> list[tuple[object, ...]]:  # type: ignore[type-arg]
    return [(h["system"], h["topic"], h["queue"], h["producer"], h["consumer"])
            for h in flow["hop_list"]]


def test_an_order_is_one_flow_across_kafka_jetstream_and_core_nats(
        collector: Collector, orders: tuple[DemoStack, dict[str, int | None]]) -> None:
    stack, chosen = orders
    t = stack.config.topic
    stream = subjects.stream_name(stack.config, subjects.SHIPMENTS)
    status = subjects.subject(stack.config, subjects.STATUS_TEMPLATE)
    expected = [("kafka", t(topics.INVENTORY_RESERVED), None, "inventory", "shipping"),
                ("nats", stream, "tracking", "shipping", "tracking")]
    followed = [c for c, attempt in chosen.items() if attempt is not None]
    for correlation_id in followed:
        flow = collector.wait_for(lambda f: all(hop in _hops(f) for hop in expected) and any(
            hop[0] == "nats" and hop[1] == status and hop[4] == "portal" for hop in _hops(f)),
            "flow", correlation_id, timeout_s=120)
        nats_hops = [h for h in flow["hop_list"] if h["system"] == "nats"]  # type: ignore[attr-defined]
        tracked = [h for h in nats_hops if h["queue"] == "tracking"]
        assert {h["routing_key"] for h in tracked} <= {
            subjects.subject(stack.config, subjects.SHIPMENTS_TEMPLATE, r)
            for r in subjects.REGIONS}
        assert all(h["offset"] is not None for h in tracked)  # the stream sequence
        # One hop per delivery: a redelivered shipment has a hop for each attempt.
        assert sorted(h["retry_attempt"] or 1 for h in tracked) == \
            list(range(1, (chosen[correlation_id] or 0) + 1))
        if chosen[correlation_id] == 2:
            assert flow["retries"] >= 1  # type: ignore[operator]
        assert len(flow["trace_ids"]) == 1  # type: ignore[arg-type]


def test_a_shipment_given_up_dead_letters_its_flow(
        collector: Collector, orders: tuple[DemoStack, dict[str, int | None]]) -> None:
    _, chosen = orders
    spent = [c for c, attempt in chosen.items() if attempt is None]
    assert spent  # choose_orders gives every outcome at least twice
    for correlation_id in spent:
        flow = collector.wait_for(lambda f: f.get("status") == "dead-lettered", "flow",
                                  correlation_id, timeout_s=120)
        assert flow["retries"] == 2  # type: ignore[operator]  # deliveries 2 and 3


def test_the_map_draws_stream_consumer_and_subject_nodes_and_the_lag_has_the_consumer(
        collector: Collector, orders: tuple[DemoStack, dict[str, int | None]]) -> None:
    stack, chosen = orders
    stream = subjects.stream_name(stack.config, subjects.SHIPMENTS)
    stream_node, consumer_node = f"nats:topic:{stream}", f"nats:consumer:{stream}/tracking"
    status_node = f"nats:topic:{subjects.subject(stack.config, subjects.STATUS_TEMPLATE)}"
    wanted = {("shipping", stream_node), (stream_node, consumer_node),
              (consumer_node, "tracking"), ("tracking", status_node), (status_node, "portal")}

    def complete(result: dict) -> bool:  # type: ignore[type-arg]
        edges = {(e["source"], e["target"]): e for e in result["edges"]}
        return all(pair in edges for pair in wanted) and \
            edges[(consumer_node, "tracking")]["retries"] > 0 and \
            edges[("shipping", stream_node)]["count"] >= len(chosen)

    result = collector.wait_for(complete, "topology", "--since", "1h", timeout_s=120)
    nodes = {n["id"]: n for n in result["nodes"]}  # type: ignore[attr-defined]
    assert nodes[consumer_node] == {"id": consumer_node, "kind": "consumer", "system": "nats",
                                    "name": f"{stream}/tracking"}
    assert nodes[stream_node]["kind"] == "topic"
    lag = collector.wait_for(lambda r: any(
        row["system"] == "nats" and row["group"] == "tracking" and row["topic"] == stream
        for row in r["partitions"]), "lag")
    row = next(r for r in lag["partitions"]  # type: ignore[attr-defined]
               if r["system"] == "nats" and r["topic"] == stream)
    assert row["lag"] == row["ready"] + row["unacknowledged"]
    assert row["end"] >= len(chosen)  # every order's shipment went into the stream
