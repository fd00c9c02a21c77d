"""An OTLP span exported over HTTP is returned by the real Jaeger's query API."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from flowscope.infra.jaeger import JaegerStatus
from tests.integration.jaeger_api import fetch_trace

pytestmark = pytest.mark.jaeger


def test_otlp_http_spans_are_returned_by_jaeger_query_api(
        jaeger_endpoints: JaegerStatus) -> None:
    service = f"flowscope-test-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=f"{jaeger_endpoints.otlp_http}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("flowscope.tests")
    with (tracer.start_as_current_span("send orders", kind=trace.SpanKind.PRODUCER,
                                       attributes={"messaging.system": "kafka"}) as producer,
          tracer.start_as_current_span("process orders", kind=trace.SpanKind.CONSUMER)):
        pass
    provider.shutdown()
    trace_id = format(producer.get_span_context().trace_id, "032x")
    producer_id = format(producer.get_span_context().span_id, "016x")

    found = fetch_trace(jaeger_endpoints.query, trace_id, lambda t: len(t["spans"]) == 2)

    spans = {span["operationName"]: span for span in found["spans"]}
    assert set(spans) == {"send orders", "process orders"}
    assert spans["send orders"]["spanID"] == producer_id
    assert {"key": "messaging.system", "type": "string", "value": "kafka"} in \
        spans["send orders"]["tags"]
    references = spans["process orders"]["references"]
    assert references == [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": producer_id}]
    services = {p["serviceName"] for p in found["processes"].values()}
    assert services == {service}
