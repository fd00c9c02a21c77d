"""Several collectors on one PostgreSQL store, against the real Kafka and the real PostgreSQL:
the same spans give the same topology, flows and hops as one collector on SQLite; a collector
killed with SIGKILL under load, or the server restarted under load, loses and doubles nothing;
work done once per cluster runs on one collector and moves when it dies.

The workload: orders -> orders.placed -> payments -> payments.done -> ledger, where ledger
takes payments.done in batches of five whose span links to the five sends: a batch consume's
span in a trace of its own, linking to producers of other traces, which other collectors may
hold (the spans topic is keyed by trace, so they land on other partitions).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from base.settings import Settings
from flowscope.infra import postgres
from flowscope.infra.jaeger import JaegerStatus
from store.contract import Store
from store.factory import open_store_at
from store.vocabulary import FlowRules
from tests.integration.collector_process import Collector, post_otlp
from tests.otlp_factory import BASE_NS, new_span_id, new_trace_id, request, span

RULES = FlowRules(completed=("*payments.done",), dead_letter=("*.dlq",), compensated=(),
                  stuck_after_s=300)
NO_BROKERS = ("--no-rabbitmq", "--no-nats", "--no-artemis")
BATCH = 5


def _messaging(topic: str, operation: str, correlation: str | None) -> dict[str, object]:
    attributes: dict[str, object] = {"messaging.system": "kafka",
                                     "messaging.destination.name": topic,
                                     "messaging.operation.type": operation}
    if correlation:
        attributes["messaging.message.conversation_id"] = correlation
    return attributes


def workload(flows: int, *, seed: int, per_request: int = 10) -> list[ExportTraceServiceRequest]:
    """The flows' spans as export requests of about per_request flows each, every span in
    one request, in a shuffled order (consumes often before their sends)."""
    rng = random.Random(seed)
    spans: list[tuple[str, object]] = []
    pending: list[tuple[str, str]] = []  # sends of payments.done waiting for their batch
    for i in range(flows):
        trace, send, process, done = new_trace_id(), new_span_id(), new_span_id(), new_span_id()
        flow = f"order-{seed}-{i}"
        at = i * 7.0
        spans += [
            ("orders", span(name="send orders.placed", kind="producer", trace_id=trace,
                            span_id=send, start_ms=at, duration_ms=2,
                            attributes=_messaging("orders.placed", "send", flow))),
            ("payments", span(name="process orders.placed", kind="consumer", trace_id=trace,
                              span_id=process, parent=send, start_ms=at + 5, duration_ms=4,
                              attributes=_messaging("orders.placed", "process", flow))),
            ("payments", span(name="send payments.done", kind="producer", trace_id=trace,
                              span_id=done, parent=process, start_ms=at + 6, duration_ms=1,
                              attributes=_messaging("payments.done", "send", flow)))]
        pending.append((trace, done))
        if len(pending) == BATCH:
            spans.append(("ledger", span(
                name="receive payments.done", kind="consumer", trace_id=new_trace_id(),
                links=pending, start_ms=at + 20, duration_ms=3,
                attributes={**_messaging("payments.done", "receive", None),
                            "messaging.batch.message_count": BATCH})))
            pending = []
    rng.shuffle(spans)
    size = per_request * 4
    return [request(_by_service(spans[i:i + size])) for i in range(0, len(spans), size)]


def _by_service(spans: list[tuple[str, object]]) -> dict[str, list[object]]:
    grouped: dict[str, list[object]] = {}
    for service, one in spans:
        grouped.setdefault(service, []).append(one)
    return grouped


def _spans_of(requests: list[ExportTraceServiceRequest]) -> int:
    return sum(len(s.spans) for r in requests for rs in r.resource_spans for s in rs.scope_spans)


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as db:
        return int(db.execute(sql).fetchone()[0])  # type: ignore[index]


def _wait_for_spans(url: str, expected: int, timeout_s: float) -> None:
    """Until the PostgreSQL store holds expected spans (bounded; a server away counts as
    not yet)."""
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline:
        try:
            seen = _count(url, "SELECT COUNT(*) FROM spans")
        except psycopg.OperationalError:
            seen = -1
        if seen == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"the store holds {seen} spans of {expected} after {timeout_s:.0f}s")


def _post_all(collector: Collector, requests: list[ExportTraceServiceRequest]) -> None:
    for export in requests:
        status, body, _ = post_otlp(collector.otlp_url, export.SerializeToString())
        assert status == 200, body


def _summary(store: Store) -> tuple[object, ...]:
    """What must be equal between stores: edges, flows, and every flow's hops."""
    since = BASE_NS - 10**12
    now = BASE_NS + 10**12
    edges = sorted((e.source, e.target, e.count, e.errors, e.retries)
                   for e in store.topology(since).edges)
    flows = sorted((f.id, f.status, f.hops, f.retries, f.errors, tuple(f.services),
                    tuple(f.topics)) for f in store.flows(since, now, limit=100_000))
    hops = {}
    for flow in flows:
        found = store.flow(str(flow[0]), now)
        assert found is not None
        hops[flow[0]] = sorted((h.topic, h.producer_service, h.consumer_service)
                               for h in found[1])
    return edges, flows, hops


def _orders(flow_rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The orders' flows (each batch consume is also a flow of its own trace, without
    hops: its hops belong to the orders it took)."""
    return [f for f in flow_rows if str(f[0]).startswith("order-")]


def _expected_edges(flows: int) -> list[tuple[str, str, int, int, int]]:
    return sorted([("orders", "orders.placed", flows, 0, 0),
                   ("orders.placed", "payments", flows, 0, 0),
                   ("payments", "payments.done", flows, 0, 0),
                   ("payments.done", "ledger", flows, 0, 0)])


@pytest.fixture
def make_collector(tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: JaegerStatus
                   ) -> Iterator:  # type: ignore[type-arg]
    """Makes collectors (home n under tmp_path) on one spans topic of this test's own."""
    topic = f"spans-{uuid.uuid4().hex[:8]}"
    made: list[Collector] = []

    def make(store: str | None, **env: str) -> Collector:
        collector = Collector.create(tmp_path / f"home{len(made)}", kafka_bootstrap,
                                     jaeger_endpoints.otlp_http, jaeger_endpoints.query,
                                     env.pop("spans_topic", topic))
        if store is not None:
            collector.env["FLOWSCOPE_STORE"] = store
        collector.env.update(FLOWSCOPE_FLOW_COMPLETED="*payments.done",
                             FLOWSCOPE_MAX_BODY_BYTES=str(4 << 20), **env)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        if collector.proc is not None and collector.proc.poll() is None:
            collector.kill()


def test_two_collectors_on_postgresql_store_what_one_on_sqlite_stores(
        make_collector, postgres_schema: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flows = 100
    requests = workload(flows, seed=1)
    receiver = make_collector(postgres_schema, FLOWSCOPE_OTLP_TO_KAFKA="on")
    other = make_collector(postgres_schema)
    alone = make_collector(str(tmp_path / "alone.db"),
                           spans_topic=f"spans-alone-{uuid.uuid4().hex[:8]}")
    for collector in (receiver, other, alone):
        collector.start(*NO_BROKERS)
    _post_all(receiver, requests)  # to the spans topic, for both collectors
    _post_all(alone, requests)  # stored by the one collector
    total = _spans_of(requests)
    _wait_for_spans(postgres_schema, total, timeout_s=120)
    alone.wait_for(lambda c: c["counters"].get("spans_written") == total, "counters",
                   timeout_s=60)

    shared = open_store_at(postgres_schema, RULES, readonly=True)
    single = open_store_at(tmp_path / "alone.db", RULES, readonly=True)
    summary = _summary(shared)
    assert summary == _summary(single)
    edges, flow_rows, hops = summary
    assert edges == _expected_edges(flows)
    orders = _orders(flow_rows)
    assert len(orders) == flows
    assert all(len(hops[f[0]]) == 2 for f in orders)  # both of each order's messages, once
    # Both collectors took spans from the topic (the receiver's counters say it published).
    receiver.wait_for(lambda c: c["counters"].get("spans_published") == total, "counters",
                      timeout_s=30)
    assert _count(postgres_schema, "SELECT COUNT(*) FROM hops") == 2 * flows
    shared.close()
    single.close()


def test_the_work_done_once_runs_on_one_collector_and_moves_when_it_dies(
        make_collector, postgres_schema: str) -> None:  # type: ignore[no-untyped-def]
    first, second = make_collector(postgres_schema), make_collector(postgres_schema)
    for collector in (first, second):
        collector.start(*NO_BROKERS)

    def states() -> dict[str, str]:
        return {name: str(c.health()["components"].get("lag_poller", {}).get("state"))
                for name, c in (("first", first), ("second", second))}

    deadline = time.monotonic() + 30
    while sorted(states().values()) != ["ok", "standby"] and time.monotonic() < deadline:
        time.sleep(0.3)
    now = states()
    assert sorted(now.values()) == ["ok", "standby"], now
    leader, standby = (first, second) if now["first"] == "ok" else (second, first)
    leader.kill()
    standby.wait_for_health(
        lambda body: body["components"]["lag_poller"]["state"] == "ok", timeout_s=20)


def test_a_collector_killed_under_load_loses_and_doubles_nothing(
        make_collector, postgres_schema: str) -> None:  # type: ignore[no-untyped-def]
    flows = 150
    requests = workload(flows, seed=2, per_request=5)
    receiver = make_collector(postgres_schema, FLOWSCOPE_OTLP_TO_KAFKA="on")
    victim = make_collector(postgres_schema)
    for collector in (receiver, victim):
        collector.start(*NO_BROKERS)
    third = len(requests) // 3
    _post_all(receiver, requests[:third])
    victim.kill()  # its partitions move to the receiver, from their last commit
    _post_all(receiver, requests[third:])
    total = _spans_of(requests)
    _wait_for_spans(postgres_schema, total, timeout_s=120)
    store = open_store_at(postgres_schema, RULES, readonly=True)
    edges, flow_rows, _ = _summary(store)
    assert edges == _expected_edges(flows)
    assert len(_orders(flow_rows)) == flows
    assert sum(int(f[2]) for f in flow_rows) == 2 * flows  # hops per flow, none twice
    assert _count(postgres_schema, "SELECT COUNT(*) FROM hops") == 2 * flows
    store.close()


def test_postgresql_restarting_under_load_loses_nothing(
        make_collector, postgres_schema: str) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.from_env()
    if settings.postgres.external:
        pytest.skip("FLOWSCOPE_POSTGRES_URL names a server this test cannot restart")
    flows = 100
    requests = workload(flows, seed=3, per_request=5)
    receiver = make_collector(postgres_schema, FLOWSCOPE_OTLP_TO_KAFKA="on")
    other = make_collector(postgres_schema)
    for collector in (receiver, other):
        collector.start(*NO_BROKERS)
    half = len(requests) // 2
    _post_all(receiver, requests[:half])
    postgres.stop(settings)
    _post_all(receiver, requests[half:])  # taken by Kafka while the store is away
    receiver.wait_for_health(lambda body: body["status"] == "degraded", timeout_s=30)
    postgres.start(settings)
    total = _spans_of(requests)
    _wait_for_spans(postgres_schema, total, timeout_s=180)
    store = open_store_at(postgres_schema, RULES, readonly=True)
    edges, flow_rows, _ = _summary(store)
    assert edges == _expected_edges(flows)
    assert sum(int(f[2]) for f in flow_rows) == 2 * flows
    for collector in (receiver, other):
        collector.wait_for_health(lambda body: body["status"] == "ok", timeout_s=60)
    store.close()
