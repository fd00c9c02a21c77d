"""JetStream's dead-letter advisories onto message records: the reason, the consumer, the
subject and the message's own headers (text only, bounded), the flow's correlation ID and
trace ID; a malformed advisory is refused with a reason, a message the stream no longer holds
still leaves its dead letter."""

from __future__ import annotations

import base64
import json

import pytest

from base.settings import CollectorSettings
from collectors.ingest.jetstream_advisories import advisory_record, parse_headers
from store.factory import flow_rules
from store.vocabulary import FlowFlag

MAX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.SHIPMENTS.tracking"
TERM = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.SHIPMENTS.tracking"
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _message(headers: bytes) -> dict[str, object]:
    return {"subject": "shipments.eu.dispatched", "seq": 7, "time": "2026-12-02T10:00:00.5Z",
            "hdrs": base64.b64encode(headers).decode(), "data": base64.b64encode(b"{}").decode()}


def test_parse_headers_reads_a_nats_header_block_and_skips_junk_lines() -> None:
    block = b"NATS/1.0\r\ncorrelation-id: order-1\r\nno colon here\r\n: empty\r\nX: a:b\r\n\r\n"
    assert parse_headers(block) == [("correlation-id", b"order-1"), ("X", b"a:b")]
    assert parse_headers(b"HTTP/1.1 200\r\nA: b\r\n") == []
    assert parse_headers(b"") == []


def test_a_max_deliveries_advisory_is_a_dead_letter_of_its_flow() -> None:
    advisory = {"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream": "SHIPMENTS",
                "consumer": "tracking", "stream_seq": 7, "deliveries": 4,
                "timestamp": "2026-12-02T10:00:01Z"}
    record = advisory_record(MAX, advisory, _message(
        b"NATS/1.0\r\ncorrelation-id: order-1\r\ntraceparent: " + TRACEPARENT + b"\r\n\r\n"))
    assert (record.topic, record.partition, record.offset, record.retry_attempt) == \
        (MAX, 0, 7, 4)
    assert (record.correlation_id, record.trace_id) == \
        ("order-1", "4bf92f3577b34da6a3ce929d0e0e4736")
    assert record.timestamp_ms == 1796205600500  # the message's time, not the advisory's
    headers = dict(json.loads(record.headers or "[]"))
    assert headers["dlq-reason"] == "max deliveries reached (4)"
    assert (headers["nats-consumer"], headers["nats-subject"]) == \
        ("tracking", "shipments.eu.dispatched")
    assert flow_rules(CollectorSettings(store="x")).flag_of(record.topic) == \
        FlowFlag.DEAD_LETTERED  # type: ignore[arg-type]


def test_a_terminated_message_the_stream_no_longer_holds_keeps_its_dead_letter() -> None:
    record = advisory_record(TERM, {"stream": "SHIPMENTS", "consumer": "tracking",
                                    "stream_seq": 9, "deliveries": 1, "reason": "bad JSON",
                                    "timestamp": "2026-12-02T10:00:02Z"}, None)
    assert (record.offset, record.correlation_id, record.size) == (9, None, 0)
    assert dict(json.loads(record.headers or "[]"))["dlq-reason"] == "bad JSON"
    assert flow_rules(CollectorSettings(store="x")).flag_of(TERM) == \
        FlowFlag.DEAD_LETTERED  # type: ignore[arg-type]


def test_hostile_headers_are_kept_as_bounded_text() -> None:
    block = b"NATS/1.0\r\n" + b"".join(b"h%d: \xff\xfe<script>\r\n" % i for i in range(50))
    record = advisory_record(TERM, {"stream": "S", "stream_seq": 1,
                                    "timestamp": "2026-12-02T10:00:02Z"}, _message(block))
    shown = json.loads(record.headers or "[]")
    assert record.truncated
    assert len(shown) == 32
    assert shown[3][1].startswith("hex:")


@pytest.mark.parametrize("advisory", [
    "text", [], {"stream": "S"}, {"stream_seq": 3}, {"stream": 5, "stream_seq": 3},
    {"stream": "S", "stream_seq": -1, "timestamp": "2026-12-02T10:00:02Z"},
    {"stream": "S", "stream_seq": 3},  # no time anywhere
])
def test_a_malformed_advisory_is_refused_with_a_reason(advisory: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own reason
        advisory_record(TERM, advisory, None)
