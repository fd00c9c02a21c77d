"""A flow that crosses Kafka and ActiveMQ Artemis, as the collector sees it: the demo's orders
run Kafka -> orders -> the anycast queue `invoices` -> billing -> the multicast address
`billing.events` -> the ledger's and the mailer's queues, against the real broker, the real
Artemis and a real `flowscope collect`; each order is one flow with every hop; the map draws
service -> address -> queue -> service; a redelivered invoice request counts as a retry on its
edge and in its flow, a spent one (moved by the broker to DLQ.invoices) dead-letters its flow;
the queues' backlog is polled."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from demo_services import addresses, topics
from flowscope.infra.jaeger import JaegerStatus
from tests.integration.collector_process import Collector
from tests.integration.conftest import ArtemisBroker
from tests.integration.demo_stack import DemoStack
from tests.integration.test_demo_artemis import KNOBS, RUNNING, choose_orders, post_order

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def collector(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus,
              artemis_broker: ArtemisBroker, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Collector]:
    home = tmp_path_factory.mktemp("artemis-flows")
    running = Collector.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http,
                               jaeger_endpoints.query, f"spans-{uuid.uuid4().hex[:8]}")
    running.env.update(FLOWSCOPE_ARTEMIS_URL=artemis_broker.amqp_url,
                       FLOWSCOPE_ARTEMIS_MANAGEMENT_URL=artemis_broker.management_url,
                       FLOWSCOPE_LAG_INTERVAL="1")
    running.start("--no-rabbitmq", "--no-nats")
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def orders(collector: Collector, kafka_bootstrap: str, artemis_broker: ArtemisBroker,
           tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[DemoStack, dict[str, int | None]]]:
    """The stack, and correlation ID -> the delivery its invoice is issued at (None: every
    delivery failed, dead-lettered)."""
    home = tmp_path_factory.mktemp("artemis-flows-demo")
    stack = DemoStack.create(home, kafka_bootstrap, collector.otlp_url,
                             f"af{uuid.uuid4().hex[:8]}.", artemis_url=artemis_broker.amqp_url,
                             **KNOBS)
    stack.start(only=RUNNING)
    try:
        chosen = choose_orders(uuid.uuid4().hex[:6])
        for correlation_id in chosen:
            post_order(stack.config, correlation_id)
        yield stack, chosen
    finally:
        assert stack.stop() == 0


def _hops(flow: dict) -> list[tuple[object, ...]]:  # type: ignore[type-arg]
    return [(h["system"], h["topic"], h["queue"], h["producer"], h["consumer"])
            for h in flow["hop_list"]]


def test_an_order_is_one_flow_across_kafka_the_invoices_queue_and_both_subscribers(
        collector: Collector, orders: tuple[DemoStack, dict[str, int | None]]) -> None:
    stack, chosen = orders
    config = stack.config
    invoices = addresses.address(config, addresses.INVOICES)
    events = addresses.address(config, addresses.BILLING_EVENTS)
    expected = [("kafka", config.topic(topics.SHIPPING_DISPATCHED), None, "shipping", "orders"),
                ("activemq", invoices, invoices, "orders", "billing"),
                *[("activemq", events,
                   addresses.subscription_queue(config, addresses.BILLING_EVENTS, name),
                   "billing", name) for name in addresses.SUBSCRIBERS]]
    for correlation_id, attempt in chosen.items():
        if attempt is None:
            continue
        flow = collector.wait_for(lambda f: all(hop in _hops(f) for hop in expected),
                                  "flow", correlation_id, timeout_s=120)
        billed = [h for h in flow["hop_list"]  # type: ignore[attr-defined]
                  if h["system"] == "activemq" and h["queue"] == invoices]
        # One hop per delivery: a redelivered request has a hop for each attempt.
        assert sorted(h["retry_attempt"] or 1 for h in billed) == list(range(1, attempt + 1))
        assert flow["retries"] >= attempt - 1  # type: ignore[operator]
        assert flow["status"] == "completed"
        assert len(flow["trace_ids"]) == 1  # type: ignore[arg-type]


def test_an_invoice_request_the_broker_gave_up_dead_letters_its_flow(
        collector: Collector, orders: tuple[DemoStack, dict[str, int | None]]) -> None:
    stack, chosen = orders
    spent = [c for c, attempt in chosen.items() if attempt is None]
    assert spent  # choose_orders gives every outcome at least twice
    dead = addresses.dead_letter_queue(stack.config, addresses.INVOICES)
    for correlation_id in spent:
        flow = collector.wait_for(lambda f: f.get("status") == "dead-lettered", "flow",
                                  correlation_id, timeout_s=120)
        assert flow["retries"] == 3  # type: ignore[operator]  # deliveries 2, 3 and 4
        assert any(h["topic"] == dead for h in flow["hop_list"])  # type: ignore[attr-defined]


def test_the_map_draws_address_and_queue_nodes_and_the_lag_has_each_queue(
        collector: Collector, orders: tuple[DemoStack, dict[str, int | None]]) -> None:
    stack, chosen = orders
    config = stack.config
    invoices = addresses.address(config, addresses.INVOICES)
    events = addresses.address(config, addresses.BILLING_EVENTS)
    ledger = addresses.subscription_queue(config, addresses.BILLING_EVENTS, addresses.LEDGER)
    request_address, request_queue = f"activemq:address:{invoices}", f"activemq:queue:{invoices}"
    events_address, ledger_queue = f"activemq:address:{events}", f"activemq:queue:{ledger}"
    wanted = {("orders", request_address), (request_address, request_queue),
              (request_queue, "billing"), ("billing", events_address),
              (events_address, ledger_queue), (ledger_queue, "ledger")}

    def complete(result: dict) -> bool:  # type: ignore[type-arg]
        edges = {(e["source"], e["target"]): e for e in result["edges"]}
        return all(pair in edges for pair in wanted) and \
            edges[(request_queue, "billing")]["retries"] > 0 and \
            edges[("orders", request_address)]["count"] >= len(chosen)

    result = collector.wait_for(complete, "topology", "--since", "1h", timeout_s=120)
    nodes = {n["id"]: n for n in result["nodes"]}  # type: ignore[attr-defined]
    assert nodes[request_address] == {"id": request_address, "kind": "address",
                                      "system": "activemq", "name": invoices}
    assert nodes[ledger_queue] == {"id": ledger_queue, "kind": "queue", "system": "activemq",
                                   "name": ledger}
    lag = collector.wait_for(lambda r: {invoices, ledger} <= {
        row["group"] for row in r["partitions"] if row["system"] == "activemq"}, "lag")
    rows = {r["group"]: r for r in lag["partitions"]  # type: ignore[attr-defined]
            if r["system"] == "activemq"}
    assert rows[invoices]["topic"] == invoices
    assert rows[ledger]["topic"] == events
    assert rows[invoices]["lag"] == rows[invoices]["ready"] + rows[invoices]["unacknowledged"]
    assert rows[invoices]["end"] >= len(chosen)  # every order's request went into the queue
