"""OpenTelemetry for the RabbitMQ leg: AMQP header propagation, span attributes, header checks.

Spans follow the current messaging semantic conventions for RabbitMQ: a PRODUCER
`send {destination}` span per message published, whose context travels in the W3C
`traceparent`/`tracestate` headers, and a CONSUMER `process {destination}` span per delivery
handled, the child of that context. The destination is `{exchange}:{routing key}` on a send
and `{exchange}:{routing key}:{queue}` on a consume, empty parts left out and a queue named as
its routing key written once. The correlation ID travels as on Kafka (the `correlation-id`
header) and in the AMQP `correlation_id` property; the attempt in the same `retry-attempt`
header. Instrumentation never breaks a service: a failure inside it is logged and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import server_attributes

from demo_services import instrumentation as inst

log = logging.getLogger(__name__)

AmqpHeaders = Mapping[str, Any]
DEFAULT_EXCHANGE = "amq.default"
DEAD_LETTER_REASON_HEADER = "x-dead-letter-reason"
# The headers a consumer reads: one that is not UTF-8 text or longer than MAX_HEADER_TEXT
# makes the message invalid (dead-lettered), never a crash or a silently cut value.
READ_HEADERS = (inst.CORRELATION_HEADER, inst.RETRY_ATTEMPT_HEADER, *inst.PROPAGATION_FIELDS)
MAX_HEADER_TEXT = inst.MAX_HEADER_TEXT
MAX_HEADERS_BYTES = 64 * 1024  # all text headers together
MAX_ATTEMPT = 1000


def header_text(headers: AmqpHeaders | None, name: str) -> str | None:
    """A header's value as text (a byte array holding UTF-8 too): None when missing, empty,
    not UTF-8 or of another type."""
    value = (headers or {}).get(name)
    if isinstance(value, bytes | bytearray):  # a long string that is not UTF-8, a byte array
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value[:MAX_HEADER_TEXT] if isinstance(value, str) and value else None


def header_problems(headers: AmqpHeaders | None) -> list[str]:
    """Why a message's headers cannot be trusted (empty when they can): a header the consumer
    reads that is not UTF-8 text or is huge, or text headers that are huge together."""
    problems = []
    total = 0
    for name, value in (headers or {}).items():
        size = len(value.encode("utf-8", "replace")) if isinstance(value, str) else \
            len(value) if isinstance(value, bytes | bytearray) else 0
        total += size
        if name not in READ_HEADERS:
            continue
        if isinstance(value, bytes | bytearray):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"header {name!r} is not UTF-8")
                continue
        elif not isinstance(value, str):
            problems.append(f"header {name!r} is a {type(value).__name__}, not text")
            continue
        if size > MAX_HEADER_TEXT:
            problems.append(f"header {name!r} is {size} bytes (at most {MAX_HEADER_TEXT})")
    if total > MAX_HEADERS_BYTES:
        problems.append(f"headers hold {total} bytes of text (at most {MAX_HEADERS_BYTES})")
    return problems


def read_attempt(headers: AmqpHeaders | None) -> int:
    """The attempt number in the retry header, text or integer (1 when absent or not one)."""
    value = (headers or {}).get(inst.RETRY_ATTEMPT_HEADER)
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return value if 0 < value < MAX_ATTEMPT else 1
    text = header_text(headers, inst.RETRY_ATTEMPT_HEADER)
    if text is None or not text.isascii() or not text.isdigit():
        return 1
    return int(text) if 0 < int(text) < MAX_ATTEMPT else 1


class AmqpHeaderGetter(Getter[AmqpHeaders]):
    """Reads propagation fields from AMQP headers; values that are not text count as missing."""

    def get(self, carrier: AmqpHeaders, key: str) -> list[str] | None:
        value = header_text(carrier, key)
        return [value] if value is not None else None

    def keys(self, carrier: AmqpHeaders) -> list[str]:
        return list(carrier)


class AmqpHeaderSetter(Setter[MutableMapping[str, Any]]):
    """Writes propagation fields into AMQP headers as text."""

    def set(self, carrier: MutableMapping[str, Any], key: str, value: str) -> None:
        carrier[key] = value


GETTER = AmqpHeaderGetter()
SETTER = AmqpHeaderSetter()


def inject_headers(headers: MutableMapping[str, Any], context: otel_context.Context) -> None:
    """Write the trace context of context into headers. Never raises."""
    try:
        propagate.inject(headers, context=context, setter=SETTER)
    except Exception:
        log.exception("could not inject trace context; the message goes without it")


def extract_context(headers: AmqpHeaders | None) -> otel_context.Context:
    """The trace context headers carry; an empty one (a new trace) when missing or garbage."""
    try:
        return propagate.extract(dict(headers or {}), getter=GETTER)
    except Exception:
        log.exception("could not extract trace context; processing under a new trace")
        return otel_context.Context()


def destination_name(exchange: str, routing_key: str, queue: str | None = None) -> str:
    """`{exchange}:{routing key}` (a send) or `{exchange}:{routing key}:{queue}` (a consume):
    empty parts left out, a queue named as its routing key written once; `amq.default` for
    the default exchange with no routing key."""
    parts = [exchange, routing_key]
    if queue and queue != routing_key:
        parts.append(queue)
    return ":".join(part for part in parts if part) or DEFAULT_EXCHANGE


def server_of(url: str) -> tuple[str, int]:
    """(host, port) of an AMQP URL, the scheme's port when it names none."""
    parts = urlsplit(url)
    default = 5671 if parts.scheme.lower() == "amqps" else 5672
    return parts.hostname or "localhost", parts.port or default


def send_attributes(*, exchange: str, routing_key: str, message_id: str, correlation_id: str,
                    size: int, server: tuple[str, int]) -> dict[str, Any]:
    """Attributes of a PRODUCER span publishing one message."""
    attributes: dict[str, Any] = {
        msg.MESSAGING_SYSTEM: msg.MessagingSystemValues.RABBITMQ.value,
        msg.MESSAGING_OPERATION_NAME: "send",
        msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.SEND.value,
        msg.MESSAGING_DESTINATION_NAME: destination_name(exchange, routing_key),
        msg.MESSAGING_MESSAGE_ID: message_id,
        msg.MESSAGING_MESSAGE_CONVERSATION_ID: correlation_id,
        msg.MESSAGING_MESSAGE_BODY_SIZE: size,
        server_attributes.SERVER_ADDRESS: server[0],
        server_attributes.SERVER_PORT: server[1],
    }
    if routing_key:
        attributes[msg.MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY] = routing_key
    return attributes


def process_attributes(*, exchange: str, routing_key: str, queue: str,
                       message_id: str | None, correlation_id: str, delivery_tag: int | None,
                       attempt: int, size: int, server: tuple[str, int]) -> dict[str, Any]:
    """Attributes of a CONSUMER `process` span handling one delivery from queue."""
    attributes: dict[str, Any] = {
        msg.MESSAGING_SYSTEM: msg.MessagingSystemValues.RABBITMQ.value,
        msg.MESSAGING_OPERATION_NAME: "process",
        msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.PROCESS.value,
        msg.MESSAGING_DESTINATION_NAME: destination_name(exchange, routing_key, queue),
        msg.MESSAGING_DESTINATION_SUBSCRIPTION_NAME: queue,
        msg.MESSAGING_MESSAGE_CONVERSATION_ID: correlation_id,
        msg.MESSAGING_MESSAGE_BODY_SIZE: size,
        server_attributes.SERVER_ADDRESS: server[0],
        server_attributes.SERVER_PORT: server[1],
    }
    if routing_key:
        attributes[msg.MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY] = routing_key
    if message_id:
        attributes[msg.MESSAGING_MESSAGE_ID] = message_id
    if delivery_tag is not None:
        attributes[msg.MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG] = delivery_tag
    if attempt > 1:
        attributes[inst.RETRY_ATTEMPT_ATTRIBUTE] = attempt
    return attributes


fail_span = inst.fail_span  # the RabbitMQ leg's modules call it from here
