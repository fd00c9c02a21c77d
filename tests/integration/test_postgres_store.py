"""The PostgreSQL backend's own behaviour, beyond the contract suite (test_store.py), on the real
server: time partitions made as rows arrive and dropped by retention, rows outside them kept
in the default partition and moved when theirs is made, two collectors writing the two sides
of hops at once, text PostgreSQL cannot hold, a connection the server drops, and a schema
that is not a Flowscope store."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import psycopg
import pytest

from collectors.collect import lead_then_run
from collectors.normalize import NormalizeReport, normalize_request
from collectors.supervise import Health
from store.contract import StoreError, StoreUnavailable
from store.factory import open_store_at
from store.postgres.backend import PostgresStore
from store.records import SpanRecord
from store.vocabulary import ComponentState, FlowRules
from tests.otlp_factory import BASE_NS, new_span_id, new_trace_id, request, span
from tests.store_writer import WritableStore, open_writable

RULES = FlowRules(completed=("*done",), dead_letter=("*.dlq",), compensated=("*cancelled",),
                  stuck_after_s=60)
HOUR_NS = 3600 * 10**9


def _pair(at_ns: int, flow: str, *, service: str = "orders") -> tuple[list[SpanRecord],
                                                                       list[SpanRecord]]:
    """A send and its consume (of one flow), sent at at_ns: two batches."""
    trace, producer = new_trace_id(), new_span_id()
    start_ms = (at_ns - BASE_NS) / 1e6
    common = {"messaging.system": "kafka", "messaging.destination.name": "t",
              "messaging.message.conversation_id": flow}
    send = span(name="send t", kind="producer", trace_id=trace, span_id=producer,
                attributes={**common, "messaging.operation.type": "send"}, start_ms=start_ms,
                duration_ms=2)
    consume = span(name="process t", kind="consumer", trace_id=trace, parent=producer,
                   attributes={**common, "messaging.operation.type": "process"},
                   start_ms=start_ms + 10, duration_ms=5)
    report = NormalizeReport()
    return (list(normalize_request(request({service: [send]}), report)),  # type: ignore[list-item]
            list(normalize_request(request({"payments": [consume]}), report)))  # type: ignore[list-item]


def _partitions(url: str, table: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as db:
        return sorted(name for (name,) in db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass", (table,)))


def _count(url: str, table: str) -> int:
    with psycopg.connect(url, autocommit=True) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def test_rows_go_to_time_partitions_and_retention_drops_whole_ones(postgres_schema: str
                                                                    ) -> None:
    store = open_writable(postgres_schema, RULES, raw_retention_s=4 * 3600)  # 1-hour parts
    now = time.time_ns()
    for hours_ago in (3, 2, 0):
        send, consume = _pair(now - hours_ago * HOUR_NS, f"flow-{hours_ago}")
        store.write_spans(send + consume)
    spans = [p for p in _partitions(postgres_schema, "spans") if p != "spans_default"]
    assert len(spans) == 3
    oldest = min(spans, key=lambda name: int(name.rpartition("_p")[2]))
    assert _count(postgres_schema, "spans_default") == 0
    assert len(_partitions(postgres_schema, "hops")) == 4  # three and the default

    # An hour later, retention of 4 hours has everything; 2.5 hours later, the oldest hour's
    # partitions are past the cut and dropped whole, rows and all.
    assert store.apply_retention(now + HOUR_NS) == 0
    deleted = store.apply_retention(now + int(2.5 * HOUR_NS))
    assert deleted >= 3  # two spans and a hop at least; the flow too
    assert oldest not in _partitions(postgres_schema, "spans")
    assert _count(postgres_schema, "spans") == 2  # flow-0's; flow-2's were deleted or dropped
    assert store.flow("flow-3", now) is None
    assert store.flow("flow-0", now) is not None
    store.close()


def test_rows_outside_the_window_wait_in_the_default_partition_and_move_to_theirs(
        postgres_schema: str) -> None:
    store = open_writable(postgres_schema, RULES, raw_retention_s=4 * 3600)
    now = time.time_ns()
    ahead = now + 3 * 86400 * 10**9  # past the day ahead partitions are made for
    send, consume = _pair(ahead, "early")
    store.write_spans(send + consume)
    assert _count(postgres_schema, "spans_default") == 2
    # Its time has come (another store, as a collector started later): the partition is made
    # and the waiting rows move into it.
    later = open_writable(postgres_schema, RULES, raw_retention_s=4 * 3600)
    with later.store.write_batch() as writes:
        writes.now_s = ahead / 1e9
        writes.insert_spans(*_batch_of(_pair(ahead, "on-time")[0], "on-time"))
    assert _count(postgres_schema, "spans_default") == 0
    assert _count(postgres_schema, "spans") == 3
    _, hops = store.flow("early", now)  # type: ignore[misc]
    assert [(h.producer_service, h.consumer_service) for h in hops] == [("orders", "payments")]
    store.close()
    later.close()


def _batch_of(records: list[SpanRecord], flow: str) -> tuple[list[SpanRecord], list[str]]:
    return records, [flow] * len(records)


def test_two_collectors_writing_both_sides_of_hops_at_once_match_every_one(
        postgres_schema: str) -> None:
    """Each pair's send reaches one store and its consume the other, at the same moment:
    the derivation lock lets the second transaction see the first's side."""
    stores = [open_writable(postgres_schema, RULES) for _ in range(2)]
    pairs = [_pair(BASE_NS + i * 10**6, f"flow-{i}") for i in range(40)]
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def write(store: WritableStore, side: int) -> None:
        try:
            for pair in pairs:
                barrier.wait(timeout=30)
                store.write_spans(pair[side])
        except BaseException as exc:  # reported by the test
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=write, args=(stores[side], side)) for side in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    assert not any(t.is_alive() for t in threads)
    reader = open_store_at(postgres_schema, RULES, readonly=True)
    for i in range(40):
        flow, hops = reader.flow(f"flow-{i}", BASE_NS)  # type: ignore[misc]
        assert [(h.producer_service, h.consumer_service) for h in hops] == \
            [("orders", "payments")], f"flow-{i}"
        assert flow.hops == 1
    edges = {(e.source, e.target): e.count for e in reader.topology(BASE_NS - 10**12).edges}
    assert edges == {("orders", "t"): 40, ("t", "payments"): 40}
    for store in (*stores, reader):
        store.close()


def test_aggregates_from_two_stores_add_up_in_the_database(postgres_schema: str) -> None:
    first, second = (open_writable(postgres_schema, RULES) for _ in range(2))
    for i, store in enumerate((first, second, first, second)):
        send, consume = _pair(BASE_NS + i * 10**6, "shared")
        store.write_spans(send + consume)
    flow, hops = first.flow("shared", BASE_NS)  # type: ignore[misc]
    assert (flow.hops, len(hops)) == (4, 4)
    edge = next(e for e in second.topology(BASE_NS - 10**12).edges if e.source == "t")
    assert edge.count == 4
    assert edge.p50_ms is not None
    first.close()
    second.close()


def test_text_postgresql_cannot_hold_is_kept_readable(postgres_schema: str) -> None:
    store = open_writable(postgres_schema, RULES)
    send, consume = _pair(BASE_NS, "nul\x00flow", service="or\x00ders")
    result = store.write_spans(send + consume)
    assert (result.written, result.hops) == (2, 1)
    assert store.find_flows("nul\x00flow") == ["nul\x00flow"]  # it names a flow
    flow, hops = store.flow("nul\x00flow", BASE_NS)  # type: ignore[misc]
    assert flow.id == "nul\ufffdflow"
    assert hops[0].producer_service == "or\ufffdders"
    store.close()


def test_a_connection_the_server_drops_is_unavailable_once_then_opened_again(
        postgres_schema: str) -> None:
    store = open_writable(postgres_schema, RULES)
    pid = store.store.db.info.backend_pid
    with psycopg.connect(postgres_schema, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    send, consume = _pair(BASE_NS, "after")
    with pytest.raises(StoreUnavailable, match=r"\*\*\*@127\.0\.0\.1"):
        store.write_spans(send)
    assert store.write_spans(send + consume).hops == 1  # nothing was written the first time
    assert store.store.db.info.backend_pid != pid
    store.close()


def test_a_schema_of_another_program_or_none_yet_is_a_clear_error(postgres_schema: str
                                                                  ) -> None:
    with pytest.raises(StoreError, match=r"no store at .*flowscope collect"):
        PostgresStore(postgres_schema, RULES, readonly=True)
    with psycopg.connect(postgres_schema, autocommit=True) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreError, match=r"not a Flowscope store.*invoices"):
        PostgresStore(postgres_schema, RULES)
    with pytest.raises(StoreError, match="cannot be opened"):
        PostgresStore("postgresql://flowscope:wrong@127.0.0.1:1/flowscope", RULES)


def test_one_store_leads_a_role_until_it_closes_and_another_takes_it(postgres_schema: str
                                                                     ) -> None:
    first, second = (PostgresStore(postgres_schema, RULES) for _ in range(2))
    assert first.lead("lag_poller")
    assert not second.lead("lag_poller")
    assert second.lead("retention")  # roles are apart
    assert first.lead("lag_poller")  # still held
    first.close()  # as a collector that dies: its session ends
    assert second.lead("lag_poller")
    second.close()


def test_a_leader_whose_session_the_server_ends_loses_the_role(postgres_schema: str) -> None:
    first, second = (PostgresStore(postgres_schema, RULES) for _ in range(2))
    assert first.lead("tap")
    assert first._leader is not None
    with psycopg.connect(postgres_schema, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first._leader.info.backend_pid,))
    assert second.lead("tap")
    assert not first.lead("tap")
    first.close()
    second.close()


async def test_a_standby_component_takes_over_within_seconds_of_the_leaders_end(
        postgres_schema: str) -> None:
    stores = [PostgresStore(postgres_schema, RULES) for _ in range(2)]
    healths = [Health(), Health()]
    runs: list[int] = []
    stopping = asyncio.Event()

    def component(index: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            runs.append(index)
            await stopping.wait()
        return run

    tasks = [asyncio.ensure_future(lead_then_run(
        "lag_poller", component(i), SimpleNamespace(store=stores[i]),  # type: ignore[arg-type]
        healths[i], stopping, check_s=0.2)) for i in range(2)]
    async with asyncio.timeout(20):
        while len(runs) < 1 or not any(h.components.get("lag_poller") for h in healths):
            await asyncio.sleep(0.05)
        leader = runs[0]
        standby = 1 - leader
        while "lag_poller" not in healths[standby].components:
            await asyncio.sleep(0.05)
        assert healths[standby].components["lag_poller"].state == ComponentState.STANDBY
        tasks[leader].cancel()
        await asyncio.to_thread(stores[leader].close)  # the leader's process is gone
        while runs[-1] != standby:
            await asyncio.sleep(0.05)
    assert runs == [leader, standby]
    stopping.set()
    await asyncio.wait_for(tasks[standby], 10)
    stores[standby].close()


def test_each_collector_keeps_its_own_health_rows(postgres_schema: str) -> None:
    first, second = (PostgresStore(postgres_schema, RULES) for _ in range(2))
    second.identity = "other-host:1"  # as another collector's process
    now = time.time_ns()
    for store, state in ((first, "ok"), (second, "standby")):
        store.write_health({"components": {"lag_poller": {
            "state": state, "reason": None, "since_s": now / 1e9, "restarts": 0}}}, now)
    first.write_health({"components": {"lag_poller": {
        "state": "degraded", "reason": "broker away", "since_s": now / 1e9, "restarts": 0}}},
        now + 10**9)
    rows = {(r.collector, r.state) for r in first.collector_health()}
    assert rows == {(first.identity, "degraded"), ("other-host:1", "standby")}
    first.close()
    second.close()
