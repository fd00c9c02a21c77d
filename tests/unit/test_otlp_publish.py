"""Splitting an OTLP request for the spans topic (the receiver's Kafka mode): one trace's spans
go to the partition Kafka's partitioner gives its trace ID, nothing is lost or doubled,
resources and scopes stay with their spans, and no part grows past the size limit."""

from __future__ import annotations

from collections import Counter

from aiokafka.partitioner import murmur2

from collectors.ingest.otlp_publish import split_by_partition
from tests.otlp_factory import new_trace_id, request, span

PARTITIONS = [0, 1, 2]


def _request(traces: int, spans_per_trace: int, *, name_size: int = 10):
    ids = [new_trace_id() for _ in range(traces)]
    by_service = {f"service-{s}": [span(name="x" * name_size, trace_id=trace)
                                   for trace in ids for _ in range(spans_per_trace)]
                  for s in range(2)}
    return ids, request(by_service)


def _expected_partition(trace_id: str) -> int:
    return (murmur2(trace_id.encode()) & 0x7FFFFFFF) % len(PARTITIONS)


def test_each_trace_goes_whole_to_its_partition_and_no_span_is_lost_or_doubled() -> None:
    ids, export = _request(traces=40, spans_per_trace=3)
    parts = split_by_partition(export, PARTITIONS)
    seen: Counter[tuple[str, str, bytes]] = Counter()
    for partition, part in parts:
        for resource_spans in part.resource_spans:
            service = resource_spans.resource.attributes[0].value.string_value
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    assert partition == _expected_partition(s.trace_id.hex())
                    seen[(service, s.trace_id.hex(), s.span_id)] += 1
    assert sum(seen.values()) == 40 * 3 * 2
    assert set(seen.values()) == {1}
    assert {trace for _, trace, _ in seen} == set(ids)
    assert len({partition for partition, _ in parts}) == 3  # 40 traces reach every partition


def test_parts_stay_under_the_size_limit_and_an_oversized_span_is_a_part_of_its_own() -> None:
    _, export = _request(traces=1, spans_per_trace=50, name_size=1000)
    parts = split_by_partition(export, PARTITIONS, max_bytes=5000)
    assert len(parts) > 10
    assert all(part.ByteSize() <= 5000 + 200 for _, part in parts)  # a resource's header over
    assert sum(len(s.spans) for _, p in parts for r in p.resource_spans
               for s in r.scope_spans) == 100
    _, huge = _request(traces=1, spans_per_trace=2, name_size=20_000)
    alone = split_by_partition(huge, PARTITIONS, max_bytes=5000)
    assert [sum(len(s.spans) for r in p.resource_spans for s in r.scope_spans)
            for _, p in alone] == [1, 1, 1, 1]


def test_spans_without_a_trace_id_are_kept_for_the_collector_to_count() -> None:
    export = request({"svc": [span(name="a")]})
    export.resource_spans[0].scope_spans[0].spans[0].trace_id = b""
    parts = split_by_partition(export, PARTITIONS)
    assert sum(len(s.spans) for _, p in parts for r in p.resource_spans
               for s in r.scope_spans) == 1
