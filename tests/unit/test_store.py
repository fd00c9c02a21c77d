"""The store contract: every backend must pass these, with the collector's write path (flow
derivation) on top. A backend is one line of BACKENDS: where its store is, for a test's own
directory (PostgreSQL: a schema of its own on the real server). Tests of one backend alone are
in files of their own (test_sqlite_store.py, integration/test_postgres_store.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collectors.normalize import NormalizeReport, normalize_request
from store.contract import Store
from store.records import GroupLag, LagRow, MessageRecord, SpanRecord
from store.vocabulary import NS_PER_MS, FlowRules, FlowStatus, GroupStatus, PartitionStatus
from tests.otlp_factory import BASE_NS, new_span_id, new_trace_id, request, span
from tests.store_writer import WritableStore, open_writable

RULES = FlowRules(completed=("*done",), dead_letter=("*.dlq",), compensated=("*cancelled",),
                  stuck_after_s=60)
NOW = BASE_NS + 10_000_000_000  # 10 s after the spans


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Path | str]] = {
    "sqlite": lambda request, directory: directory / "store.db",
    # a schema of the test's own on the real server (tests/conftest.py)
    "postgresql": lambda request, directory: request.getfixturevalue("postgres_schema"),
}
Opener = Callable[..., WritableStore]


# PostgreSQL's runs need the real server: they count as integration tests.
@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.integration)
                        if name == "postgresql" else name for name in sorted(BACKENDS)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens this test's store of the backend (options: retention, readonly, ...)."""
    location = BACKENDS[request.param](request, tmp_path)
    opened: list[WritableStore] = []

    def open_(**options: object) -> WritableStore:
        opened.append(open_writable(location, RULES, **options))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Opener) -> WritableStore:
    return open_store()


def _records(service: str, *spans: object) -> list[SpanRecord]:
    return list(normalize_request(request({service: spans}), NormalizeReport()))  # type: ignore[dict-item]


def _send(topic: str, *, trace: str, span_id: str | None = None, start: float = 0,
          correlation: str | None = "flow-1", **extra: object) -> object:
    attributes = {"messaging.system": "kafka", "messaging.operation.type": "send",
                  "messaging.destination.name": topic, **extra}
    if correlation:
        attributes["messaging.message.conversation_id"] = correlation
    return span(name=f"send {topic}", kind="producer", trace_id=trace, span_id=span_id,
                attributes=attributes, start_ms=start, duration_ms=2)


def _process(topic: str, *, trace: str, parent: str | None = None, start: float = 10,
             links: tuple[tuple[str, str], ...] = (), correlation: str | None = "flow-1",
             error: bool = False, **extra: object) -> object:
    attributes = {"messaging.system": "kafka", "messaging.operation.type": "process",
                  "messaging.destination.name": topic, **extra}
    if correlation:
        attributes["messaging.message.conversation_id"] = correlation
    return span(name=f"process {topic}", kind="consumer", trace_id=trace, parent=parent,
                links=links, attributes=attributes, start_ms=start, duration_ms=5, error=error)


def _edges(store: Store) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(e.source, e.target): (e.count, e.errors, e.retries)
            for e in store.topology(BASE_NS - 10**12).edges}


def test_produce_and_consume_in_one_batch_make_one_hop_with_queue_time(store: Store) -> None:
    trace, producer = new_trace_id(), new_span_id()
    store.write_spans(_records("orders", _send("t", trace=trace, span_id=producer)))
    result = store.write_spans(_records("payments", _process("t", trace=trace, parent=producer)))
    assert result.hops == 1
    topology = store.topology(BASE_NS - 10**12)
    assert topology.nodes == {"orders": "service", "payments": "service", "t": "topic"}
    assert _edges(store) == {("orders", "t"): (1, 0, 0), ("t", "payments"): (1, 0, 0)}
    queue = next(e for e in topology.edges if e.source == "t")
    assert queue.p50_ms is not None
    assert 7.0 <= queue.p50_ms <= 10.0  # consume at 10 ms, produce ended at 2 ms


def test_consumer_before_producer_is_matched_later_and_counted_once(store: Store) -> None:
    trace, producer = new_trace_id(), new_span_id()
    first = store.write_spans(_records("payments", _process("t", trace=trace, parent=producer)))
    assert first.hops == 1
    assert _edges(store) == {("t", "payments"): (1, 0, 0)}
    store.write_spans(_records("orders", _send("t", trace=trace, span_id=producer)))
    assert _edges(store) == {("orders", "t"): (1, 0, 0), ("t", "payments"): (1, 0, 0)}
    flow, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert [(h.producer_service, h.consumer_service) for h in hops] == [("orders", "payments")]
    assert hops[0].queue_ms == pytest.approx(8.0)
    assert flow.hops == 1


def test_writing_the_same_spans_again_changes_nothing(store: Store) -> None:
    trace, producer = new_trace_id(), new_span_id()
    batch = _records("orders", _send("t", trace=trace, span_id=producer)) + \
        _records("payments", _process("t", trace=trace, parent=producer))
    store.write_spans(batch)
    again = store.write_spans(batch)
    assert (again.written, again.duplicates, again.hops) == (0, 2, 0)
    assert _edges(store) == {("orders", "t"): (1, 0, 0), ("t", "payments"): (1, 0, 0)}
    assert store.flow("flow-1", NOW)[0].hops == 1  # type: ignore[index]


def test_link_only_consumer_matches_its_producer(store: Store) -> None:
    producer_trace, producer = new_trace_id(), new_span_id()
    store.write_spans(_records("orders", _send("t", trace=producer_trace, span_id=producer)))
    store.write_spans(_records("payments", _process(
        "t", trace=new_trace_id(), links=((producer_trace, producer),), correlation=None)))
    _, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert [(h.producer_service, h.consumer_service) for h in hops] == [("orders", "payments")]


def test_message_id_matches_spans_in_different_traces(store: Store) -> None:
    ids = {"messaging.destination.partition.id": "1", "messaging.kafka.offset": 7}
    store.write_spans(_records("orders", _send("t", trace=new_trace_id(), **ids)))
    store.write_spans(_records("payments", _process("t", trace=new_trace_id(), **ids)))
    _, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert [(h.producer_service, h.offset) for h in hops] == [("orders", 7)]


def test_batch_receive_links_make_hops_and_per_message_spans_do_not_double_them(
        store: Store) -> None:
    producers = [(new_trace_id(), new_span_id()) for _ in range(3)]
    store.write_spans([r for t, s in producers
                       for r in _records("orders", _send("t", trace=t, span_id=s))])
    batch = span(name="receive t", kind="consumer", links=producers, attributes={
        "messaging.system": "kafka", "messaging.operation.type": "receive",
        "messaging.destination.name": "t", "messaging.batch.message_count": 3})
    assert store.write_spans(_records("payments", batch)).hops == 3
    for trace, producer in producers:
        store.write_spans(_records("payments", _process("t", trace=trace, parent=producer)))
    assert _edges(store)[("t", "payments")] == (3, 0, 0)


def test_fan_out_gives_one_hop_per_consuming_service(store: Store) -> None:
    trace, producer = new_trace_id(), new_span_id()
    store.write_spans(_records("payments", _send("charged", trace=trace, span_id=producer)))
    store.write_spans(_records("inventory", _process("charged", trace=trace, parent=producer)))
    store.write_spans(_records("orders", _process("charged", trace=trace, parent=producer)))
    assert _edges(store) == {("payments", "charged"): (1, 0, 0),
                             ("charged", "inventory"): (1, 0, 0),
                             ("charged", "orders"): (1, 0, 0)}


def test_retries_and_errors_are_counted_on_edges_and_flows(store: Store) -> None:
    trace = new_trace_id()
    store.write_spans(_records("processor",
                               _process("t", trace=trace, error=True),
                               _process("t", trace=trace, start=20,
                                        **{"messaging.message.retry_attempt": 2})))
    assert _edges(store) == {("t", "processor"): (2, 1, 1)}
    flow = store.flow("flow-1", NOW)[0]  # type: ignore[index]
    assert (flow.hops, flow.retries, flow.errors) == (2, 1, 1)


@pytest.mark.parametrize(("topic", "error", "now", "status"), [
    ("x.dlq", False, NOW, "dead-lettered"),
    ("orders.cancelled", False, NOW, "compensated"),
    ("files.done", False, NOW, "completed"),
    ("work", True, NOW, "failed"),
    ("work", False, NOW, "in flight"),
    ("work", False, NOW + 120 * 10**9, "stuck"),
])
def test_flow_status_follows_the_topics_it_reached(store: Store, topic: str, error: bool,
                                                   now: int, status: str) -> None:
    trace = new_trace_id()
    records = _records("svc", _send(topic, trace=trace, correlation="c-1"))
    if error:
        records += _records("svc", _process("in", trace=trace, correlation="c-1", error=True))
    store.write_spans(records)
    assert store.flow("c-1", now)[0].status == status  # type: ignore[index]
    assert [f.status for f in store.flows(BASE_NS - 10**12, now)] == [status]


def test_flow_is_found_by_any_of_its_trace_ids(store: Store) -> None:
    trace = new_trace_id()
    store.write_spans(_records("svc", _send("t", trace=trace, correlation="c-9")))
    flow, hops = store.flow(trace, NOW)  # type: ignore[misc]
    assert flow.id == "c-9"
    assert [(h.topic, h.consumer_service) for h in hops] == [("t", None)]
    assert store.flow("nothing-like-it", NOW) is None


def test_spans_without_correlation_id_form_a_flow_per_trace(store: Store) -> None:
    trace = new_trace_id()
    store.write_spans(_records("svc", _send("t", trace=trace, correlation=None)))
    assert store.flow(trace, NOW)[0].id == trace  # type: ignore[index]


def test_counters_add_up(store: Store) -> None:
    store.add_counters({"rejected_bodies": 2, "unplaced": 0})
    store.add_counters({"rejected_bodies": 3})
    assert store.counters() == {"rejected_bodies": 5}


def test_retention_deletes_raw_rows_but_keeps_aggregates(open_store: Opener) -> None:
    store = open_store(raw_retention_s=60, aggregate_retention_s=86400)
    trace, producer = new_trace_id(), new_span_id()
    store.write_spans(_records("a", _send("t", trace=trace, span_id=producer)) +
                      _records("b", _process("t", trace=trace, parent=producer)))
    assert store.apply_retention(BASE_NS + 3600 * 10**9) >= 4
    assert store.flow("flow-1", NOW) is None
    assert _edges(store) == {("a", "t"): (1, 0, 0), ("t", "b"): (1, 0, 0)}


def test_a_reader_in_another_connection_sees_committed_writes(open_store: Opener) -> None:
    writer = open_store()
    reader = open_store(readonly=True)
    writer.write_spans(_records("a", _send("t", trace=new_trace_id())))
    assert [e.source for e in reader.topology(BASE_NS - 10**12).edges] == ["a"]


def test_spans_without_correlation_join_their_traces_flow_in_any_order(store: Store) -> None:
    trace = new_trace_id()
    early = span(name="POST /files", kind="server", trace_id=trace, start_ms=0)
    late = span(name="POST /callbacks/{name}", kind="server", trace_id=trace, start_ms=50)
    store.write_spans(_records("uploads", early))
    assert store.flow(trace, NOW)[0].id == trace  # type: ignore[index]
    store.write_spans(_records("uploads", _send("t", trace=trace, correlation="c-7", start=1)))
    store.write_spans(_records("webhook", late))
    flow = store.flow("c-7", NOW)[0]  # type: ignore[index]
    assert flow.services == ["uploads", "webhook"]
    assert flow.ended_ns > flow.started_ns
    assert [f.id for f in store.flows(BASE_NS - 10**12, NOW)] == ["c-7"]


def test_lag_polls_keep_the_latest_figures_and_the_history(store: Store) -> None:
    ok = PartitionStatus.OK
    first = [LagRow("g", "t", 0, 5, 9, 4, 2.5, ok, 100.0),
             LagRow("g", "t", 1, None, 3, None, None, ok, 100.0)]
    second = [LagRow("g", "t", 0, 9, 9, 0, 0.0, ok, 105.0)]
    store.write_lag(first, [GroupLag("g", GroupStatus.OK, "t.0", 4, 2.5, 1.0, -0.5, 8.0,
                                     100.0)])
    store.write_lag(second, [GroupLag("g", GroupStatus.OK, None, 0, 0.0, 0.8, -0.8, 0.0,
                                      105.0)])
    rows, groups = store.lag()
    assert rows == [second[0], first[1]]
    assert [g.catch_up_s for g in groups] == [0.0]
    assert store.lag("other") == ([], [])
    assert [(r.partition, r.at_s) for r in store.lag_history(0, "g")] == \
        [(0, 100.0), (1, 100.0), (0, 105.0)]
    # per poll: the total lag and the largest lag in seconds
    assert store.lag_trend(0) == [("g", 100.0, 4, 2.5), ("g", 105.0, 0, 0.0)]
    assert store.lag_trend(101 * 10**9) == [("g", 105.0, 0, 0.0)]


def test_busiest_topology_keeps_the_busiest_edges_and_counts_them_all(store: Store) -> None:
    for topic, messages in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(messages):
            trace, producer = new_trace_id(), new_span_id()
            store.write_spans(_records("orders", _send(topic, trace=trace, span_id=producer)))
            store.write_spans(_records("payments", _process(topic, trace=trace,
                                                            parent=producer)))
    topology, total = store.busiest_topology(BASE_NS - 10**12, 2)
    assert total == 6
    assert {(e.source, e.target, e.count) for e in topology.edges} == \
        {("orders", "a", 3), ("a", "payments", 3)}
    nearby, _ = store.busiest_topology(BASE_NS - 10**12, 1, touching="b")
    assert [(e.source, e.target) for e in nearby.edges] in ([("orders", "b")],
                                                            [("b", "payments")])
    assert store.topology_nodes(BASE_NS - 10**12) == {
        "a": "topic", "b": "topic", "c": "topic", "orders": "service",
        "payments": "service"}


def test_a_flow_head_gives_its_first_hops_and_how_many_more(store: Store) -> None:
    trace = new_trace_id()
    for step in range(4):
        producer = new_span_id()
        store.write_spans(_records("orders", _send("t", trace=trace, span_id=producer,
                                                   start=step * 100)))
        store.write_spans(_records("payments", _process("t", trace=trace, parent=producer,
                                                        start=step * 100 + 10)))
    flow, hops, more = store.flow_head("flow-1", NOW, 3)  # type: ignore[misc]
    assert (flow.hops, len(hops), more) == (4, 3, 1)
    assert [h.produce_start_ns for h in hops] == sorted(h.produce_start_ns for h in hops)
    assert store.flow_head(trace, NOW, None)[0].id == "flow-1"  # type: ignore[index]
    assert store.flow_head("no-such-flow", NOW, 3) is None


def test_find_flows_by_correlation_trace_message_id_or_key(store: Store) -> None:
    trace = new_trace_id()
    store.write_spans(_records("orders", _send("t", trace=trace, **{
        "messaging.destination.partition.id": "2", "messaging.kafka.offset": 9,
        "messaging.kafka.message.key": "order-7"})))
    for text in ("flow-1", trace, "t.2.9", "order-7", f"  {trace.upper()}  "):
        assert store.find_flows(text) == ["flow-1"], text
    assert store.find_flows("nothing") == []
    assert store.find_flows("\ud800") == []  # no text the store can hold


def test_health_reports_replace_the_last_and_a_single_store_always_leads(
        store: Store) -> None:
    def report(state: str, at_s: float) -> None:
        store.write_health({"components": {"tap": {"state": state, "reason": None,
                                                   "since_s": at_s, "restarts": 1}}},
                           int(at_s * 1e9))

    report("ok", 1_800_000_000.0)
    report("degraded", 1_800_000_001.0)
    assert [(r.component, r.state, r.at_s) for r in store.collector_health()] == \
        [("tap", "degraded", 1_800_000_001.0)]
    assert store.lead("lag_poller")
    assert store.lead("lag_poller")  # held, not taken twice


def test_a_flow_reaching_its_completion_topic_records_its_latency_once(store: Store) -> None:
    trace = new_trace_id()
    first = _records("api", _send("jobs", trace=trace, start=0))
    store.write_spans(first)
    assert store.flow_latency(BASE_NS - 10**12) == []
    done = _records("worker", _send("jobs.done", trace=trace, start=250))
    store.write_spans(done)
    store.write_spans(_records("worker", _send("jobs.done", trace=trace, start=900)))
    buckets = store.flow_latency(BASE_NS - 10**12)
    assert [(b.flow_type, b.count) for b in buckets] == [("jobs.done", 1)]
    assert 252 <= buckets[0].latency.percentile(50) <= 252 * 1.2  # send end - first start


def test_flow_counts_judge_each_window_and_keep_in_flight_and_stuck_as_gauges(
        store: Store) -> None:  # stuck after 60 s
    minute = 60_000.0
    for flow, start_ms, topic in (("done-now", 9.5 * minute, "jobs.done"),
                                  ("done-before", 4 * minute, "jobs.done"),
                                  ("moving", 9.9 * minute, "jobs"),
                                  ("quiet", 7 * minute, "jobs"),
                                  ("started-before-done-now", 2 * minute, "jobs")):
        store.write_spans(_records("api", _send(topic, trace=new_trace_id(), start=start_ms,
                                                correlation=flow)))
    store.write_spans(_records("api", _send("jobs.done", trace=new_trace_id(),
                                            start=9.8 * minute,
                                            correlation="started-before-done-now")))
    now = BASE_NS + int(10 * minute * 1e6)
    counts = store.flow_counts(int(5 * minute * 1e6), now)
    assert counts.now == {FlowStatus.COMPLETED: 2}
    assert counts.before == {FlowStatus.COMPLETED: 1}
    assert (counts.started_now, counts.started_before) == (3, 2)
    assert (counts.in_flight, counts.stuck) == (1, 1)


def test_dead_letters_include_topics_only_the_tap_has_seen(store: Store) -> None:
    now_ms = NOW // 1_000_000
    store.write_messages([
        MessageRecord("legacy.dlq", 0, 7, now_ms, "k", 3, "flow-x", None, 3,
                      '[["dlq-reason", "bad"]]', False),
        MessageRecord("legacy.events", 0, 1, now_ms, "k", 3, "flow-x", None, None, None, False)])
    (letter,) = store.dead_letters(NOW - 10**9)
    assert (letter.topic, letter.offset, letter.headers) == ("legacy.dlq", 7,
                                                            (("dlq-reason", "bad"),))
    assert store.dead_letters(NOW - 10**9, flow_id="flow-x")[0].offset == 7


def test_whole_numbers_up_to_int64_are_stored_as_they_came(store: Store) -> None:
    """A partition, offset or attempt a span brings may be any int64 (normalize keeps what
    the store can hold): every backend takes it, and the batch it came in."""
    big = {"messaging.destination.partition.id": str(2**40), "messaging.kafka.offset": 2**62,
           "messaging.message.retry_attempt": 2**40, "messaging.batch.message_count": 2**33}
    trace, producer = new_trace_id(), new_span_id()
    result = store.write_spans(_records("orders", _send("t", trace=trace, span_id=producer,
                                                        **big)) +
                               _records("payments", _process("t", trace=trace, parent=producer,
                                                             **big)))
    assert result.written == 2
    _, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert [(h.partition, h.offset) for h in hops] == [(2**40, 2**62)]
    assert store.find_flows(f"t.{2**40}.{2**62}") == []  # past int32: no Kafka partition


def test_retry_attempts_count_tapped_messages_per_topic_and_attempt(store: Store) -> None:
    now_ms = NOW // 1_000_000
    store.write_messages([
        MessageRecord("jobs", 0, offset, now_ms - 100 + offset, None, 2, None, None, attempt,
                      None, False)
        for offset, attempt in ((1, None), (2, None), (3, 2), (4, 2), (5, 3))])
    assert store.retry_attempts(NOW - 10**9) == [("jobs", 1, 2), ("jobs", 2, 2), ("jobs", 3, 1)]
    # the newest two: offsets 5 and 4
    assert store.retry_attempts(NOW - 10**9, sample=2) == [("jobs", 2, 1), ("jobs", 3, 1)]
    assert store.retry_attempts(NOW) == []


def test_propagation_waits_for_a_recent_message_s_send_span_before_calling_it_unknown(
        store: Store) -> None:
    trace = new_trace_id()
    store.write_spans(_records("api", _send("jobs", trace=trace, **{
        "messaging.destination.partition.id": "0", "messaging.kafka.offset": 1})))
    sent_ms = BASE_NS // NS_PER_MS
    store.write_messages([
        MessageRecord("jobs", 0, offset, sent_ms + at_ms, None, 2, None, trace_id, None, None,
                      False)
        for offset, at_ms, trace_id in ((1, 0, trace), (2, 0, None), (3, 20_000, None))])

    def shares(**now: int) -> dict[tuple[str, str], tuple[int, int]]:
        return {(r.topic, r.producer): (r.messages, r.with_context)
                for r in store.propagation(BASE_NS - 10**9, **now)}

    # offset 3 came 20 s after the others: its span may be on its way, so it is left out
    assert shares(now_ns=BASE_NS + 25 * 10**9) == {("jobs", "api"): (1, 1),
                                                ("jobs", "unknown"): (1, 0)}
    assert shares() == {("jobs", "api"): (1, 1), ("jobs", "unknown"): (2, 0)}


def test_failed_steps_of_a_flow_are_its_spans_in_error_oldest_first(store: Store) -> None:
    trace = new_trace_id()
    send = new_span_id()
    store.write_spans(_records("api", _send("jobs", trace=trace, span_id=send)))
    store.write_spans(_records("worker", _process("jobs", trace=trace, parent=send, start=30,
                                                  error=True)))
    store.write_spans(_records("worker", _process("jobs", trace=trace, parent=send, start=20,
                                                  error=True)))
    store.write_spans(_records("worker", _process("jobs", trace=trace, parent=send, start=40)))
    steps = store.failed_steps("flow-1")
    assert [(s.service, s.name, s.kind, s.trace_id) for s in steps] == \
        [("worker", "process jobs", "consumer", trace)] * 2
    assert steps[0].start_ns < steps[1].start_ns
    assert store.failed_steps("no-such-flow") == []


def test_topology_tells_the_first_bucket_of_its_window_that_holds_data(store: Store) -> None:
    trace = new_trace_id()
    send = new_span_id()
    store.write_spans(_records("api", _send("jobs", trace=trace, span_id=send)))
    store.write_spans(_records("worker", _process("jobs", trace=trace, parent=send)))
    bucket = BASE_NS // 10**9 // 10 * 10
    assert store.topology(BASE_NS - 10**12).first_bucket_s == bucket
    assert store.topology(BASE_NS + 10**12).first_bucket_s is None


def test_a_batch_that_fails_midway_leaves_nothing_behind(store: WritableStore) -> None:
    trace, producer = new_trace_id(), new_span_id()
    records = (_records("orders", _send("t", trace=trace, span_id=producer)) +
               _records("payments", _process("t", trace=trace, parent=producer, error=True)))
    real = store.store.write_batch

    class FailingLate:
        """The backend's writes, failing at the last step of the batch."""

        def __init__(self, writes: object) -> None:
            self.writes = writes

        def __getattr__(self, name: str) -> object:
            return getattr(self.writes, name)

        def merge_edges(self, totals: object) -> None:
            raise RuntimeError("the last step failed")

    @contextlib.contextmanager
    def failing_batch() -> Iterator[object]:
        with real() as writes:
            yield FailingLate(writes)

    store.store.write_batch = failing_batch  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="last step"):
        store.write_spans(records)
    store.store.write_batch = real  # type: ignore[method-assign]
    assert store.flow("flow-1", NOW) is None
    assert store.failed_steps("flow-1") == []
    assert _edges(store) == {}
    result = store.write_spans(records)  # nothing of the failed batch is taken as a replay
    assert (result.written, result.duplicates, result.hops) == (2, 0, 1)


def test_a_long_window_counts_every_edge_bucket_once_whatever_its_start(store: Store) -> None:
    # Messages every 7 s over 20 minutes, written in batches, some late: a window of any
    # start sees exactly the per-bucket counts, whatever the store keeps for long windows.
    traces = [new_trace_id() for _ in range(180)]
    for first in range(0, 180, 30):
        batch = []
        for n in range(first, first + 30):
            producer = new_span_id()
            batch += _records("api", _send("jobs", trace=traces[n], span_id=producer,
                                           start=n * 7_000, correlation=f"f-{n}"))
            batch += _records("worker", _process("jobs", trace=traces[n], parent=producer,
                                                 start=n * 7_000 + 50, correlation=f"f-{n}",
                                                 error=n % 9 == 0))
        store.write_spans(batch[::-1] if first % 60 else batch)
    end = BASE_NS + 180 * 7 * 10**9
    for since in (BASE_NS - 10**12, BASE_NS, BASE_NS + 123 * 10**9, BASE_NS + 300 * 10**9,
                  BASE_NS + 601 * 10**9, end - 5 * 10**9, end + 10**12):
        buckets = store.edge_buckets(since)
        expected: dict[tuple[str, str], list[int]] = {}
        for b in buckets:
            counts = expected.setdefault((b.source, b.target), [0, 0, 0])
            counts[0] += b.count
            counts[1] += b.errors
            counts[2] += b.retries
        topology = store.topology(since)
        assert {(e.source, e.target): [e.count, e.errors, e.retries]
                for e in topology.edges} == expected, since
        assert topology.first_bucket_s == min((b.bucket_start for b in buckets), default=None)
        assert set(store.topology_nodes(since)) == {n for pair in expected for n in pair}
    whole = {(e.source, e.target): e for e in store.topology(BASE_NS - 10**12).edges}
    assert whole[("api", "jobs")].count == whole[("jobs", "worker")].count == 180
    assert whole[("jobs", "worker")].errors == 20


# -- RabbitMQ: service -> exchange -> queue -> service -----------------------------------------

def _publish(destination: str, *, trace: str, span_id: str | None = None,
             key: str | None = None, **extra: object) -> object:
    attributes = {"messaging.system": "rabbitmq", "messaging.operation.type": "send",
                  "messaging.destination.name": destination,
                  "messaging.message.conversation_id": "flow-1", **extra}
    if key:
        attributes["messaging.rabbitmq.destination.routing_key"] = key
    return span(name=f"send {destination}", kind="producer", trace_id=trace, span_id=span_id,
                attributes=attributes, start_ms=0, duration_ms=2)


def _deliver(destination: str, *, trace: str, parent: str | None = None,
             key: str | None = None, start: float = 10, **extra: object) -> object:
    attributes = {"messaging.system": "rabbitmq", "messaging.operation.type": "process",
                  "messaging.destination.name": destination,
                  "messaging.message.conversation_id": "flow-1", **extra}
    if key:
        attributes["messaging.rabbitmq.destination.routing_key"] = key
    return span(name=f"process {destination}", kind="consumer", trace_id=trace, parent=parent,
                attributes=attributes, start_ms=start, duration_ms=5)


EXCHANGE, QUEUE = "rabbitmq:exchange:jobs", "rabbitmq:queue:thumb-q"


def test_a_rabbitmq_hop_goes_service_exchange_queue_service(store: Store) -> None:
    trace, producer = new_trace_id(), new_span_id()
    store.write_spans(_records("processor", _publish("jobs:thumb", trace=trace,
                                                     span_id=producer, key="thumb")))
    result = store.write_spans(_records("thumbnailer", _deliver(
        "jobs:thumb:thumb-q", trace=trace, parent=producer, key="thumb")))
    assert result.hops == 1
    topology = store.topology(BASE_NS - 10**12)
    assert topology.nodes == {"processor": "service", "thumbnailer": "service",
                              EXCHANGE: "exchange", QUEUE: "queue"}
    assert _edges(store) == {("processor", EXCHANGE): (1, 0, 0), (EXCHANGE, QUEUE): (1, 0, 0),
                             (QUEUE, "thumbnailer"): (1, 0, 0)}
    waited = next(e for e in topology.edges if e.source == QUEUE)
    assert waited.p50_ms is not None
    assert 7.0 <= waited.p50_ms <= 10.0
    _, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert [(h.system, h.topic, h.queue, h.routing_key, h.producer_service,
             h.consumer_service) for h in hops] == \
        [("rabbitmq", "jobs", "thumb-q", "thumb", "processor", "thumbnailer")]
    assert hops[0].queue_ms == pytest.approx(8.0)


def test_a_kafka_topic_and_an_exchange_of_one_name_are_two_nodes(store: Store) -> None:
    store.write_spans(_records("a", _send("jobs", trace=new_trace_id()),
                               _publish("jobs", trace=new_trace_id())))
    assert store.topology(BASE_NS - 10**12).nodes == {
        "a": "service", "jobs": "topic", EXCHANGE: "exchange"}


def test_rabbitmq_hops_match_by_message_id_across_traces_in_any_order(store: Store) -> None:
    ids = {"messaging.message.id": "5f0c-uuid"}
    store.write_spans(_records("thumbnailer", _deliver(
        "jobs:thumb:thumb-q", trace=new_trace_id(), key="thumb", **ids)))
    store.write_spans(_records("processor", _publish("jobs:thumb", trace=new_trace_id(),
                                                     key="thumb", **ids)))
    _, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert [(h.producer_service, h.consumer_service, h.queue) for h in hops] == \
        [("processor", "thumbnailer", "thumb-q")]
    assert _edges(store)[(QUEUE, "thumbnailer")] == (1, 0, 0)


def test_fan_out_through_an_exchange_shows_every_queue_it_reached(store: Store) -> None:
    trace, producer = new_trace_id(), new_span_id()
    store.write_spans(_records("orders", _publish("events", trace=trace, span_id=producer)))
    for service, queue in (("audit", "audit-q"), ("mailer", "mail-q")):
        store.write_spans(_records(service, _deliver(f"events:{queue}", trace=trace,
                                                     parent=producer)))
    edges = _edges(store)
    assert {k for k in edges if k[0] == "rabbitmq:exchange:events"} == {
        ("rabbitmq:exchange:events", "rabbitmq:queue:audit-q"),
        ("rabbitmq:exchange:events", "rabbitmq:queue:mail-q")}
    assert edges[("rabbitmq:queue:mail-q", "mailer")] == (1, 0, 0)
    assert store.flow("flow-1", NOW)[0].hops == 2  # type: ignore[index]


def test_aio_pika_spans_through_the_default_exchange_name_their_queue(store: Store) -> None:
    # The official aio-pika instrumentation: '{exchange},{routing key}' on the publish, the
    # routing key alone on the consume when the exchange is the default one.
    trace, producer = new_trace_id(), new_span_id()
    store.write_spans(_records("processor", span(
        name=",thumb-q send", kind="producer", trace_id=trace, span_id=producer,
        attributes={"messaging.system": "rabbitmq", "messaging.destination": ",thumb-q",
                    "messaging.temp_destination": True})))
    store.write_spans(_records("thumbnailer", span(
        name="thumb-q receive", kind="consumer", trace_id=trace, parent=producer,
        start_ms=10, attributes={"messaging.system": "rabbitmq",
                                 "messaging.destination": "thumb-q",
                                 "messaging.operation": "receive"})))
    assert set(_edges(store)) == {("processor", "rabbitmq:exchange:amq.default"),
                                  ("rabbitmq:exchange:amq.default", QUEUE),
                                  (QUEUE, "thumbnailer")}


def test_one_service_consuming_two_queues_of_a_fanout_makes_two_hops(store: Store) -> None:
    trace, producer = new_trace_id(), new_span_id()
    store.write_spans(_records("orders", _publish("events", trace=trace, span_id=producer)))
    for queue in ("audit-q", "mail-q"):
        store.write_spans(_records("catalog", _deliver(f"events:{queue}", trace=trace,
                                                       parent=producer)))
    _, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert sorted(h.queue for h in hops) == ["audit-q", "mail-q"]  # type: ignore[type-var]
    assert store.flow("flow-1", NOW)[0].hops == 2  # type: ignore[index]


def test_a_message_back_from_a_delay_queue_is_routed_by_the_exchange_that_delivered_it(
        store: Store) -> None:
    # Sent to the delay exchange; after its TTL the broker dead-letters it through the work
    # exchange into the work queue: that is the route its consumer names.
    trace, producer = new_trace_id(), new_span_id()
    store.write_spans(_records("worker", _publish("jobs.retry:thumb", trace=trace,
                                                  span_id=producer, key="thumb")))
    store.write_spans(_records("worker", _deliver(
        "jobs:thumb:thumb-q", trace=trace, parent=producer, key="thumb",
        **{"messaging.message.retry_attempt": 2})))
    edges = _edges(store)
    assert edges[("worker", "rabbitmq:exchange:jobs.retry")] == (1, 0, 0)
    assert edges[(EXCHANGE, QUEUE)] == (1, 0, 1)
    assert ("rabbitmq:exchange:jobs.retry", QUEUE) not in edges
    assert edges[(QUEUE, "worker")] == (1, 0, 1)


# -- NATS: service -> stream (or subject) -> JetStream consumer -> service ---------------------

def _nats(kind: str, subject: str, *, trace: str, span_id: str | None = None,
          parent: str | None = None, start: float = 0, **extra: object) -> object:
    operation = "send" if kind == "producer" else "process"
    attributes = {"messaging.system": "nats", "messaging.operation.type": operation,
                  "messaging.destination.name": subject,
                  "messaging.message.conversation_id": "flow-1", **extra}
    return span(name=f"{operation} {subject}", kind=kind, trace_id=trace, span_id=span_id,
                parent=parent, attributes=attributes, start_ms=start, duration_ms=2)


STREAM, CONSUMER = "nats:topic:SHIPMENTS", "nats:consumer:SHIPMENTS/tracking"
JETSTREAM = {"messaging.nats.stream": "SHIPMENTS"}


def test_a_jetstream_hop_goes_service_stream_consumer_service_and_groups_subjects(
        store: Store) -> None:
    trace, first, second = new_trace_id(), new_span_id(), new_span_id()
    store.write_spans(_records("shipping", *(
        _nats("producer", f"shipments.{region}.dispatched", trace=trace, span_id=producer,
              **JETSTREAM, **{"messaging.nats.stream.sequence": seq})
        for region, producer, seq in (("eu", first, 1), ("us", second, 2)))))
    store.write_spans(_records("tracking", *(
        _nats("consumer", f"shipments.{region}.dispatched", trace=trace, parent=producer,
              start=10, **JETSTREAM, **{"messaging.nats.stream.sequence": seq,
                                        "messaging.nats.consumer": "tracking",
                                        "messaging.nats.num_delivered": seq})
        for region, producer, seq in (("eu", first, 1), ("us", second, 2)))))
    topology = store.topology(BASE_NS - 10**12)
    assert topology.nodes == {"shipping": "service", "tracking": "service",
                              STREAM: "topic", CONSUMER: "consumer"}
    # The second message was delivered twice: a retry on the stream's route and its consumer.
    assert _edges(store) == {("shipping", STREAM): (2, 0, 0), (STREAM, CONSUMER): (2, 0, 1),
                             (CONSUMER, "tracking"): (2, 0, 1)}
    _, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert sorted((h.system, h.topic, h.queue, h.routing_key, h.offset) for h in hops) == [
        ("nats", "SHIPMENTS", "tracking", "shipments.eu.dispatched", 1),
        ("nats", "SHIPMENTS", "tracking", "shipments.us.dispatched", 2)]


def test_jetstream_hops_match_by_stream_and_sequence_across_traces_in_any_order(
        store: Store) -> None:
    coordinates = {**JETSTREAM, "messaging.nats.stream.sequence": 17}
    store.write_spans(_records("tracking", _nats(
        "consumer", "shipments.eu.dispatched", trace=new_trace_id(), start=10,
        **coordinates, **{"messaging.nats.consumer": "tracking"})))
    store.write_spans(_records("shipping", _nats(
        "producer", "shipments.eu.dispatched", trace=new_trace_id(), **coordinates)))
    _, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert [(h.producer_service, h.consumer_service, h.offset) for h in hops] == \
        [("shipping", "tracking", 17)]
    assert _edges(store)[(CONSUMER, "tracking")] == (1, 0, 0)


def test_each_redelivery_of_one_message_is_a_hop_and_a_retry(store: Store) -> None:
    # JetStream delivers the same message again: one send, three consume spans under it.
    trace, producer = new_trace_id(), new_span_id()
    coordinates = {**JETSTREAM, "messaging.nats.stream.sequence": 5}
    store.write_spans(_records("shipping", _nats("producer", "shipments.eu.dispatched",
                                                 trace=trace, span_id=producer, **coordinates)))
    for attempt in (1, 2, 3, 3):  # the last one twice: a span sent again is not a delivery
        store.write_spans(_records("tracking", _nats(
            "consumer", "shipments.eu.dispatched", trace=trace, parent=producer,
            start=10 * attempt, **coordinates,
            **{"messaging.nats.consumer": "tracking", "messaging.nats.num_delivered": attempt},
            **({"error.type": "TimeoutError"} if attempt < 3 else {}))))
    _, hops = store.flow("flow-1", NOW)  # type: ignore[misc]
    assert sorted(h.retry_attempt for h in hops) == [1, 2, 3]  # type: ignore[type-var]
    assert _edges(store)[(CONSUMER, "tracking")] == (3, 2, 2)
    assert store.flow("flow-1", NOW)[0].retries == 2  # type: ignore[index]


def test_core_nats_goes_straight_from_subject_to_subscriber(store: Store) -> None:
    trace, producer = new_trace_id(), new_span_id()
    template = {"messaging.destination.template": "tracking.status.*"}
    store.write_spans(_records("tracking", _nats("producer", "tracking.status.eu", trace=trace,
                                                 span_id=producer, **template)))
    store.write_spans(_records("portal", _nats("consumer", "tracking.status.eu", trace=trace,
                                               parent=producer, start=5, **template)))
    assert _edges(store) == {("tracking", "nats:topic:tracking.status.*"): (1, 0, 0),
                             ("nats:topic:tracking.status.*", "portal"): (1, 0, 0)}


def test_a_message_terminated_to_a_dead_letter_subject_dead_letters_its_flow(
        store: Store) -> None:
    # The stream's name says nothing; the subject the message was sent to does.
    store.write_spans(_records("tracking", _nats(
        "producer", "shipments.dlq", trace=new_trace_id(),
        **{"messaging.nats.stream": "SHIPMENTS_DLQ", "messaging.nats.stream.sequence": 1})))
    assert store.flow("flow-1", NOW)[0].status == FlowStatus.DEAD_LETTERED  # type: ignore[index]


def test_a_complete_poll_of_a_system_forgets_its_queues_that_are_gone(store: Store) -> None:
    def queue(name: str, at_s: float) -> tuple[LagRow, GroupLag]:
        return (LagRow(name, name, None, None, None, 3, 1.0, PartitionStatus.OK, at_s,
                       "rabbitmq", 3, 0, 1),
                GroupLag(name, GroupStatus.OK, None, 3, 1.0, None, None, None, at_s,
                         "rabbitmq"))

    kafka_row = LagRow("g", "t", 0, 1, 2, 1, 0.5, PartitionStatus.OK, 100.0)
    kafka_group = GroupLag("g", GroupStatus.OK, None, 1, 0.5, None, None, None, 100.0)
    store.write_lag([kafka_row], [kafka_group])
    (a, a_group), (b, b_group) = queue("a", 100.0), queue("b", 100.0)
    store.write_lag([a, b], [a_group, b_group], complete="rabbitmq")
    (a2, a2_group) = queue("a", 101.0)
    store.write_lag([a2], [a2_group], complete="rabbitmq")  # b was deleted
    rows, groups = store.lag()
    assert {(r.system, r.group) for r in rows} == {("kafka", "g"), ("rabbitmq", "a")}
    assert {(g.system, g.group) for g in groups} == {("kafka", "g"), ("rabbitmq", "a")}
    assert {(r.group, r.at_s) for r in store.lag_history(0) if r.system == "rabbitmq"} == \
        {("a", 100.0), ("b", 100.0), ("a", 101.0)}  # the history keeps what was seen
