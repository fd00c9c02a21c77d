"""OpenTelemetry for every demo service: set-up from OTEL_*, Kafka header propagation, spans.

Spans follow the OpenTelemetry messaging semantic conventions: a PRODUCER `send {topic}` span
per message sent, whose context travels in the W3C `traceparent`/`tracestate`/`baggage`
headers, and a CONSUMER `process {topic}` span per message handled, the child of that context
and linked to it. Instrumentation never breaks a service: a failure inside it is logged and the
message goes on without it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, MutableSequence, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import error_attributes, http_attributes, url_attributes
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

CORRELATION_HEADER = "correlation-id"
RETRY_ATTEMPT_HEADER = "retry-attempt"
RETRY_NOT_BEFORE_HEADER = "retry-not-before"
RETRY_REASON_HEADER = "retry-reason"
DLQ_REASON_HEADER = "dlq-reason"
RETRY_ATTEMPT_ATTRIBUTE = "messaging.message.retry_attempt"
MAX_HEADER_TEXT = 1024
# Control characters: a line break would end a NATS header block, and none belongs in a log line.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]+")

Headers = Sequence[tuple[str, bytes]]


def setup_tracing(default_service_name: str) -> TracerProvider | None:
    """Install a TracerProvider configured by the standard OTEL_* variables (OTLP/HTTP export).

    OTEL_SERVICE_NAME wins over default_service_name; OTEL_SDK_DISABLED=true turns tracing off;
    OTEL_TRACES_EXPORTER=none keeps spans in-process (no export).
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none":
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def header_text(headers: Headers | None, name: str) -> str | None:
    """A header's value as text, or None when it is missing, empty or not UTF-8."""
    for key, value in headers or ():
        if key.lower() == name and value:
            try:
                return value.decode("utf-8")[:MAX_HEADER_TEXT]
            except UnicodeDecodeError:
                log.warning("header %r is not UTF-8; ignored", name)
                return None
    return None


class KafkaHeaderGetter(Getter[Headers]):
    """Reads propagation fields from Kafka headers; undecodable values count as missing."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        value = header_text(carrier, key)
        return [value] if value is not None else None

    def keys(self, carrier: Headers) -> list[str]:
        return [key for key, _ in carrier]


class KafkaHeaderSetter(Setter[MutableSequence[tuple[str, bytes]]]):
    """Writes propagation fields into Kafka headers, replacing any earlier value."""

    def set(self, carrier: MutableSequence[tuple[str, bytes]], key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode("utf-8")))


GETTER = KafkaHeaderGetter()
SETTER = KafkaHeaderSetter()
PROPAGATION_FIELDS = ("traceparent", "tracestate", "baggage")


def inject_headers(headers: MutableSequence[tuple[str, bytes]],
                   context: otel_context.Context | None = None) -> None:
    """Write the trace context and baggage (of context, else the current one) into headers.

    Never raises.
    """
    try:
        propagate.inject(headers, context=context, setter=SETTER)
    except Exception:
        log.exception("could not inject trace context; the message goes without it")


def extract_context(headers: Headers | None) -> otel_context.Context:
    """The trace context carried by headers; an empty context when missing or garbage."""
    try:
        return propagate.extract(list(headers or ()), getter=GETTER)
    except Exception:
        log.exception("could not extract trace context; processing under a new trace")
        return otel_context.Context()


def send_attributes(topic: str, *, key: str | None, correlation_id: str, client_id: str,
                    size: int) -> dict[str, Any]:
    """Attributes of a PRODUCER span, before the broker has answered."""
    attributes: dict[str, Any] = {
        msg.MESSAGING_SYSTEM: "kafka",
        msg.MESSAGING_OPERATION_NAME: "send",
        msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.SEND.value,
        msg.MESSAGING_DESTINATION_NAME: topic,
        msg.MESSAGING_MESSAGE_CONVERSATION_ID: correlation_id,
        msg.MESSAGING_CLIENT_ID: client_id,
        msg.MESSAGING_MESSAGE_BODY_SIZE: size,
    }
    if key is not None:
        attributes[msg.MESSAGING_KAFKA_MESSAGE_KEY] = key
    return attributes


def sent_attributes(topic: str, partition: int, offset: int) -> dict[str, Any]:
    """Attributes a PRODUCER span gains once the broker has acknowledged the message."""
    return {msg.MESSAGING_DESTINATION_PARTITION_ID: str(partition),
            msg.MESSAGING_KAFKA_OFFSET: offset,
            msg.MESSAGING_MESSAGE_ID: f"{topic}.{partition}.{offset}"}


def process_attributes(*, topic: str, partition: int, offset: int, key: bytes | None,
                       group: str, client_id: str, correlation_id: str, attempt: int,
                       size: int) -> dict[str, Any]:
    """Attributes of a CONSUMER `process` span."""
    attributes: dict[str, Any] = {
        msg.MESSAGING_SYSTEM: "kafka",
        msg.MESSAGING_OPERATION_NAME: "process",
        msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.PROCESS.value,
        msg.MESSAGING_DESTINATION_NAME: topic,
        msg.MESSAGING_CONSUMER_GROUP_NAME: group,
        msg.MESSAGING_CLIENT_ID: client_id,
        msg.MESSAGING_MESSAGE_CONVERSATION_ID: correlation_id,
        msg.MESSAGING_MESSAGE_BODY_SIZE: size,
        RETRY_ATTEMPT_ATTRIBUTE: attempt,
        **sent_attributes(topic, partition, offset),
    }
    if key is not None:
        attributes[msg.MESSAGING_KAFKA_MESSAGE_KEY] = key.decode("utf-8", errors="replace")
    return attributes


def clean_text(value: object, limit: int = MAX_HEADER_TEXT) -> str:
    """value as text that stays on its line (control characters made spaces), cut to limit."""
    return CONTROL_CHARACTERS.sub(" ", str(value)).strip()[:limit]


def fail_span(span: Span, exc: BaseException, error_type: str | None = None) -> None:
    """Record a failure on a span: the exception, error.type and an ERROR status (never
    raises)."""
    try:
        if span.is_recording():
            span.record_exception(exc)
    except Exception:
        log.exception("could not record an exception on a span")
    mark_error(span, error_type or type(exc).__qualname__, str(exc) or type(exc).__name__)


def mark_error(span: Span, error_type: str, description: str) -> None:
    """Record a handled failure on a span: error.type and an ERROR status."""
    try:
        if span.is_recording():
            span.set_attribute(error_attributes.ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, description[:200]))
    except Exception:
        log.exception("could not mark span as failed")


def set_attributes(span: Span, attributes: dict[str, Any]) -> None:
    """Set attributes on a recording span (never raises)."""
    try:
        if span.is_recording():
            span.set_attributes(attributes)
    except Exception:
        log.exception("could not set span attributes")


@contextmanager
def consumer_span(tracer: trace.Tracer, topic: str, headers: Headers | None,
                  attributes: dict[str, Any]) -> Iterator[Span]:
    """A CONSUMER `process {topic}` span: child of the producer's context, and linked to it."""
    with process_span(tracer, f"process {topic}", extract_context(headers),
                      attributes) as span:
        yield span


@contextmanager
def process_span(tracer: trace.Tracer, name: str, parent: otel_context.Context,
                 attributes: dict[str, Any]) -> Iterator[Span]:
    """A current CONSUMER span: child of the producer's context parent, and linked to it (any
    messaging system; parent is empty when the message carried no trace context)."""
    producer = trace.get_current_span(parent).get_span_context()
    links = [Link(producer)] if producer.is_valid else []
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER,
                                      links=links, attributes=attributes) as span:
        try:
            yield span
        except Exception as exc:
            mark_error(span, type(exc).__qualname__, str(exc))
            raise


@contextmanager
def http_server_span(tracer: trace.Tracer, method: str, route: str, path: str,
                     headers: Any) -> Iterator[Span]:
    """A SERVER span for an incoming HTTP request, continuing the caller's trace."""
    try:
        parent = propagate.extract(headers)
    except Exception:
        parent = otel_context.Context()
    with tracer.start_as_current_span(
            f"{method} {route}", context=parent, kind=SpanKind.SERVER,
            attributes={http_attributes.HTTP_REQUEST_METHOD: method,
                        http_attributes.HTTP_ROUTE: route, url_attributes.URL_PATH: path,
                        url_attributes.URL_SCHEME: "http"}) as span:
        yield span


def set_http_status(span: Span, status: int, *, server: bool) -> None:
    """Record the response status; 5xx (and 4xx on a client span) mark the span as failed."""
    set_attributes(span, {http_attributes.HTTP_RESPONSE_STATUS_CODE: status})
    if status >= 500 or (not server and status >= 400):
        mark_error(span, str(status), f"HTTP {status}")


@contextmanager
def http_client_span(tracer: trace.Tracer, method: str, url: str,
                     headers: dict[str, str]) -> Iterator[Span]:
    """A CLIENT span for an outgoing HTTP request; its context is injected into headers."""
    with tracer.start_as_current_span(
            method, kind=SpanKind.CLIENT,
            attributes={http_attributes.HTTP_REQUEST_METHOD: method,
                        url_attributes.URL_FULL: url}) as span:
        try:
            propagate.inject(headers)
        except Exception:
            log.exception("could not inject trace context into an HTTP request")
        yield span
