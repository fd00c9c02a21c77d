"""An OTLP span exported over HTTP is returned by the real Jaeger's query API."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from flowscope.infra.jaeger import JaegerStatus

pytestmark = pytest.mark.jaeger


def _get_trace(query: str, trace_id: str, timeout_s: float = 30.0) -> dict[str, object]:
    """Poll Jaeger's v1 API until the trace is there with both spans (bounded)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{query}/api/traces/{trace_id}", timeout=5) as answer:
                data = json.load(answer)["data"]
            if data and len(data[0]["spans"]) == 2:
                return data[0]
            last = f"{len(data[0]['spans']) if data else 0} spans"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id} not complete in Jaeger after {timeout_s}s: {last}")


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

    found = _get_trace(jaeger_endpoints.query, trace_id)

    spans = {span["operationName"]: span for span in found["spans"]}
    assert set(spans) == {"send orders", "process orders"}
    assert spans["send orders"]["spanID"] == producer_id
    assert {"key": "messaging.system", "type": "string", "value": "kafka"} in \
        spans["send orders"]["tags"]
    references = spans["process orders"]["references"]
    assert references == [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": producer_id}]
    services = {p["serviceName"] for p in found["processes"].values()}
    assert services == {service}
