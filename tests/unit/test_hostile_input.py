"""Values from other people's systems that once broke ingest: each is read as far as it goes,
counted where something was cut or dropped, and never raises."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from base.errors import SettingsError
from base.settings import IngestLimits, Settings, redact_url
from collectors.ingest.decode import BadPayload, decode_request, decompress, is_json
from collectors.ingest.otlp_http import ByteBudget, Rejection
from collectors.ingest.tap import tap_record
from collectors.normalize import MAX_TEXT, NormalizeReport, as_int64, normalize_request
from store.contract import StoreError, StoreUnavailable
from store.records import INT64_MAX
from store.vocabulary import FlowRules
from tests.otlp_factory import BASE_NS, new_span_id, new_trace_id, request, span
from tests.store_writer import open_writable

RULES = FlowRules(completed=("*done",), dead_letter=("*.dlq",), compensated=("*cancelled",),
                  stuck_after_s=60)


def _normalize(*spans: object, limits: IngestLimits | None = None):  # type: ignore[no-untyped-def]
    report = NormalizeReport()
    records = list(normalize_request(request({"svc": spans}), report,  # type: ignore[dict-item]
                                     limits or IngestLimits()))
    return records, report


def test_as_int64_takes_ascii_digits_in_range_only() -> None:
    assert as_int64("42") == 42
    assert as_int64(" -7 ") == -7
    assert as_int64(3.0) == 3
    for bad in ("²", "٣", "1e3", "9" * 5000, "", "12a", 2**63, -(2**63) - 1, float("inf"),
                float("nan"), 1.5, True, None, [1], {"a": 1}):
        assert as_int64(bad) is None, bad
    assert as_int64(INT64_MAX) == INT64_MAX


def test_superscript_digits_and_huge_numbers_do_not_raise_in_normalisation() -> None:
    records, _ = _normalize(span(name="process t", kind="consumer", attributes={
        "messaging.system": "kafka", "messaging.message.id": "t.².3",
        "messaging.message.retry_attempt": "²", "messaging.destination.partition.id": "9" * 5000,
        "messaging.kafka.offset": "99999999999999999999"}))
    record = records[0]
    assert (record.partition, record.offset, record.retry_attempt) == (None, None, None)
    assert record.topic == "t"


def test_times_beyond_int64_are_clamped_and_counted() -> None:
    hostile = span(name="x")
    hostile.start_time_unix_nano = 2**64 - 1
    hostile.end_time_unix_nano = 2**64 - 1
    records, report = _normalize(hostile)
    assert records[0].start_ns == records[0].end_ns == INT64_MAX
    assert report.problems == {"time beyond int64 (clamped)": 2}


def test_a_topic_taken_from_a_long_span_name_is_cut() -> None:
    records, _ = _normalize(span(name="send " + "x" * 10_000_000, kind="producer",
                                 attributes={"messaging.system": "kafka"}))
    assert records[0].topic is not None
    assert len(records[0].topic) <= MAX_TEXT
    assert len(records[0].name) <= MAX_TEXT


def test_links_and_attributes_beyond_the_limits_are_not_read_and_counted() -> None:
    many_links = [(new_trace_id(), new_span_id()) for _ in range(50)]
    attributes = {f"a{i}": i for i in range(40)} | {"messaging.destination.name": "late"}
    records, report = _normalize(
        span(name="process t", kind="consumer", links=many_links, attributes=attributes),
        limits=IngestLimits(max_links_per_span=10, max_attributes_per_span=20))
    assert len(records[0].links) == 10
    assert records[0].topic == "t"  # the attribute past the limit was not read
    assert report.problems["links beyond 10 per span (dropped)"] == 1
    assert report.problems["attributes beyond 20 per span (not read)"] == 1


def test_deeply_nested_attribute_values_are_read_to_a_bounded_depth() -> None:
    value = AnyValue()
    inner = value
    for _ in range(30):  # protobuf itself refuses to decode more than 100 levels
        inner = inner.array_value.values.add()
    inner.string_value = "leaf"
    hostile = span(name="send t", kind="producer")
    hostile.attributes.append(KeyValue(key="messaging.destination.name", value=value))
    records, _ = _normalize(hostile)
    assert len(records[0].topic or "") <= MAX_TEXT


def test_a_retry_attempt_header_of_superscript_two_is_dropped_not_raised() -> None:
    for text in (b"\xc2\xb2", b"-1", b"9" * 100, b"\xff"):
        record = tap_record(ConsumerRecord("t", 0, 5, 1, 0, b"k", b"{}", None, 1, 2,
                                           [("retry-attempt", text)]), keep_headers=False)
        assert record.retry_attempt is None
    record = tap_record(ConsumerRecord("t", 0, 5, 2**62, 0, None, None, None, 0, 0, []),
                        keep_headers=False)
    assert record.timestamp_ms * 1_000_000 <= INT64_MAX


def test_truncated_gzip_is_refused() -> None:
    whole = gzip.compress(b"x" * 1000)
    assert decompress(whole, "gzip", 10_000) == b"x" * 1000
    with pytest.raises(BadPayload, match="truncated"):
        decompress(whole[:-6], "gzip", 10_000)


@pytest.mark.parametrize("body", [
    b"[]", b"5", b'"s"', b'{"resourceSpans": 5}', b'{"resourceSpans": [5]}',
    b'{"resourceSpans": [{"scopeSpans": {"spans": "x"}}]}', b"[" * 100_000,
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
    b"\xff\xfe", b'{"resourceSpans": [{"resource": {"attributes": [{"key": "a", "value": ' +
    b'{"arrayValue": {"values": [' * 200 + b"]}}" * 200 + b"}]}}]}"])
def test_json_bodies_of_the_wrong_shape_are_a_bad_payload(body: bytes) -> None:
    with pytest.raises(BadPayload):
        decode_request(body, "application/json")


def test_the_json_content_type_is_read_in_any_letter_case() -> None:
    assert is_json("Application/JSON; charset=utf-8")
    assert not is_json("application/x-protobuf")
    document = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
        "name": "n"}]}]}]}
    decoded = decode_request(json.dumps(document).encode(), "APPLICATION/JSON")
    assert decoded.resource_spans[0].scope_spans[0].spans[0].name == "n"


def test_settings_refuse_infinite_and_nan_values() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"FLOWSCOPE_MAX_BODY_BYTES": "inf", "FLOWSCOPE_LAG_INTERVAL": "nan",
                           "FLOWSCOPE_FLOW_STUCK_AFTER": "inf", "FLOWSCOPE_KAFKA_PORT": "²",
                           "FLOWSCOPE_MAX_SPANS_PER_REQUEST": "9" * 5000})
    for name in ("FLOWSCOPE_MAX_BODY_BYTES", "FLOWSCOPE_LAG_INTERVAL",
                 "FLOWSCOPE_FLOW_STUCK_AFTER", "FLOWSCOPE_KAFKA_PORT",
                 "FLOWSCOPE_MAX_SPANS_PER_REQUEST"):
        assert name in str(caught.value)


def test_a_failed_write_adopts_no_flow(tmp_path: Path) -> None:
    store = open_writable(tmp_path / "s.db", RULES)
    trace = new_trace_id()
    store.write_spans(list(normalize_request(request({"web": [
        span(name="POST /x", kind="server", trace_id=trace, error=True)]}), NormalizeReport())))
    correlated = list(normalize_request(request({"web": [span(
        name="send t", kind="producer", trace_id=trace, attributes={
            "messaging.system": "kafka", "messaging.destination.name": "t",
            "messaging.message.conversation_id": "c-1"})]}), NormalizeReport()))
    poison = replace(correlated[0], span_id=new_span_id(), start_ns=2**70)
    with pytest.raises(OverflowError):
        store.write_spans([*correlated, poison])
    store.write_spans(correlated)
    flow = store.flow("c-1", BASE_NS)
    assert flow is not None
    assert flow[0].errors == 1  # adopted once: a second adoption doubled it
    store.close()


def test_a_store_path_with_uri_characters_opens_that_file_read_only(tmp_path: Path) -> None:
    path = tmp_path / "a#b?mode=rw.db"
    open_writable(path, RULES).close()
    reader = open_writable(path, RULES, readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.db.execute("INSERT INTO counters VALUES ('x', 1)")
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == [path.name]


def test_the_collector_refuses_a_corrupt_or_foreign_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="Flowscope store: file is not a database"):
        open_writable(corrupt, RULES)
    with pytest.raises(StoreError, match="Flowscope store: file is not a database"):
        open_writable(corrupt, RULES, readonly=True)
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.executescript("CREATE TABLE orders (id INTEGER); CREATE INDEX flows_by_last ON orders(id)")
    db.close()
    with pytest.raises(StoreError, match="another database"):
        open_writable(foreign, RULES)
    db = sqlite3.connect(foreign)
    assert db.execute("SELECT name FROM sqlite_master WHERE type='index'").fetchall() == [
        ("flows_by_last",)]
    assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 2
    db.close()


def test_a_read_only_store_file_is_unavailable_not_a_bad_record(tmp_path: Path) -> None:
    store = open_writable(tmp_path / "s.db", RULES)
    store.add_counters({"x": 1})
    store.close()
    # A second connection that may not write: what a full or read-only disk looks like.
    store = open_writable(tmp_path / "s.db", RULES)
    store.db.execute("PRAGMA query_only = 1")
    with pytest.raises(StoreUnavailable, match=r"s\.db"):
        store.add_counters({"x": 1})
    records = list(normalize_request(request({"a": [span(name="n")]}), NormalizeReport()))
    with pytest.raises(StoreUnavailable):
        store.write_spans(records)
    store.db.execute("PRAGMA query_only = 0")
    assert store.write_spans(records).written == 1
    store.close()
    assert stat.S_ISREG((tmp_path / "s.db").stat().st_mode)


def test_credentials_in_a_jaeger_url_stay_out_of_log_lines() -> None:
    assert redact_url("https://user:secret@jaeger.example:4318/v1/traces") == \
        "https://***@jaeger.example:4318/v1/traces"
    assert redact_url("http://token@[::1]:4318") == "http://***@[::1]:4318"
    assert redact_url("http://127.0.0.1:14318") == "http://127.0.0.1:14318"


async def test_bodies_beyond_the_in_flight_budget_wait_and_are_refused_in_time() -> None:
    budget = ByteBudget(100)
    async with budget.hold(80, 1):
        with pytest.raises(Rejection) as refused:
            async with budget.hold(30, 0.05):
                pass
        assert refused.value.status == 503
        waiting = asyncio.create_task(_hold(budget, 30))
        await asyncio.sleep(0)
        assert not waiting.done()  # it waits for the first body's bytes
    await asyncio.wait_for(waiting, 1)
    assert budget.used == 0


async def _hold(budget: object, size: int) -> None:
    async with budget.hold(size, 1):  # type: ignore[attr-defined]
        pass


def test_text_size_and_value_depth_follow_their_settings() -> None:
    records, _ = _normalize(span(name="send " + "t" * 100, kind="producer", attributes={
        "messaging.message.conversation_id": "c" * 100, "messaging.kafka.message.key": "k" * 100,
        "messaging.system": "kafka"}), limits=IngestLimits(max_value_chars=20))
    record = records[0]
    assert (len(record.name), len(record.topic or ""), len(record.correlation_id or ""),
            len(record.message_key or "")) == (20, 15, 20, 20)
    assert Settings.from_env({"FLOWSCOPE_MAX_VALUE_CHARS": "64",
                              "FLOWSCOPE_MAX_VALUE_DEPTH": "2"}).collect.limits == \
        IngestLimits(max_value_chars=64, max_value_depth=2)
