"""Build OTLP export requests by hand, the way different instrumentations shape them."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {"producer": Span.SPAN_KIND_PRODUCER, "consumer": Span.SPAN_KIND_CONSUMER,
         "client": Span.SPAN_KIND_CLIENT, "server": Span.SPAN_KIND_SERVER,
         "internal": Span.SPAN_KIND_INTERNAL}
_ids = itertools.count(1)
BASE_NS = 1_800_000_000_000_000_000


def new_trace_id() -> str:
    """A fresh 32-hex-digit trace id."""
    return f"{next(_ids):032x}"


def new_span_id() -> str:
    """A fresh 16-hex-digit span id."""
    return f"{next(_ids):016x}"


def any_value(value: Any) -> AnyValue:
    """An OTLP AnyValue for a Python value."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def span(*, name: str, kind: str = "internal", trace_id: str | None = None,
         span_id: str | None = None, parent: str | None = None,
         links: Sequence[tuple[str, str]] = (), attributes: Mapping[str, Any] | None = None,
         start_ms: float = 0, duration_ms: float = 1, error: bool = False) -> Span:
    """One OTLP span; times are milliseconds after a fixed base."""
    result = Span(trace_id=bytes.fromhex(trace_id or new_trace_id()),
                  span_id=bytes.fromhex(span_id or new_span_id()), name=name, kind=KINDS[kind],
                  start_time_unix_nano=BASE_NS + int(start_ms * 1e6),
                  end_time_unix_nano=BASE_NS + int((start_ms + duration_ms) * 1e6))
    if parent:
        result.parent_span_id = bytes.fromhex(parent)
    for link_trace, link_span in links:
        result.links.add(trace_id=bytes.fromhex(link_trace), span_id=bytes.fromhex(link_span))
    for key, value in (attributes or {}).items():
        result.attributes.append(KeyValue(key=key, value=any_value(value)))
    if error:
        result.status.code = Status.STATUS_CODE_ERROR
    return result


def request(spans_by_service: Mapping[str, Sequence[Span]]) -> ExportTraceServiceRequest:
    """An export request with one resource per service."""
    export = ExportTraceServiceRequest()
    for service, spans in spans_by_service.items():
        resource_spans = export.resource_spans.add()
        resource_spans.resource.attributes.append(
            KeyValue(key="service.name", value=AnyValue(string_value=service)))
        resource_spans.scope_spans.add().spans.extend(spans)
    return export
