import json

from aiokafka import ConsumerRecord

from collectors.ingest.headers import bounded_headers, header_text, trace_id_of
from collectors.ingest.tap import tap_record, topic_pattern

VALID = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _record(headers: list[tuple[str, bytes]], key: bytes | None = b"k") -> ConsumerRecord:
    return ConsumerRecord("orders", 2, 41, 1_700_000_000_000, 0, key, b"{}", None, 2, 2,
                          headers)


def test_trace_id_only_from_a_valid_traceparent() -> None:
    assert trace_id_of(VALID) == "0af7651916cd43dd8448eb211c80319c"
    for bad in (None, b"", b"garbage", b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01",
                b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", b"\xff\xfe",
                VALID.upper(), b"x" * 500):
        assert trace_id_of(bad) is None


def test_header_text_keeps_non_utf8_as_hex_and_bounds_length() -> None:
    assert header_text(b"\xff\x00") == ("hex:ff00", False)
    assert header_text(b"a" * 600) == ("a" * 512, True)
    assert header_text(None) == (None, False)


def test_bounded_headers_cut_count_and_length() -> None:
    many = [(f"h{i}", b"v") for i in range(40)]
    shown, truncated = bounded_headers(many)
    assert len(shown) == 32
    assert truncated


def test_tap_record_reads_correlation_trace_and_attempt() -> None:
    record = tap_record(_record([("correlation-id", b"c-9"), ("traceparent", VALID),
                                 ("retry-attempt", b"3")]), keep_headers=False)
    assert (record.correlation_id, record.trace_id, record.retry_attempt) == \
        ("c-9", "0af7651916cd43dd8448eb211c80319c", 3)
    assert record.message_id == "orders.2.41"
    assert record.headers is None
    assert not record.truncated


def test_tap_record_survives_hostile_headers() -> None:
    hostile = [("correlation-id", b"\xff" * 300), ("traceparent", b"<script>"),
               ("retry-attempt", b"-1"), ("x-html", b"<img src=x onerror=alert(1)>")]
    record = tap_record(_record(hostile, key=b"\x00\xff" * 200), keep_headers=True)
    assert record.trace_id is None
    assert record.retry_attempt is None
    assert record.truncated
    assert len(record.correlation_id or "") <= 128
    shown = dict(json.loads(record.headers or "[]"))
    assert shown["x-html"] == "<img src=x onerror=alert(1)>"


def test_topic_pattern_skips_internal_and_excluded_topics() -> None:
    pattern = topic_pattern(None, ("otlp_spans",))
    assert pattern.match("orders.placed")
    assert not pattern.match("__consumer_offsets")
    assert not pattern.match("otlp_spans")
    assert pattern.match("otlp_spans.extra")
    assert topic_pattern(r"^files\.", ()).match("files.dlq")
