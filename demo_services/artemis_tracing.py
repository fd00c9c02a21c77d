"""OpenTelemetry for the ActiveMQ Artemis leg: propagation in AMQP 1.0 application properties,
span attributes, property clean-up.

Spans follow the current messaging semantic conventions (`messaging.system` = `activemq`): a
PRODUCER `send {address}` span per message sent, whose context travels in the W3C
`traceparent`/`tracestate` application properties, and a CONSUMER `process {address}` span per
delivery handled, the child of that context, naming the queue it came from as the subscription.
The correlation ID travels as on Kafka (the `correlation-id` property) and in the AMQP
`correlation-id` field; the attempt is the broker's delivery count plus one, written where the
other legs write it. Property values from outside are cleaned and bounded before they are sent
or logged. Instrumentation never breaks a service: a failure inside it is logged and skipped.
"""

from __future__ import annotations

import logging
import math
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

Properties = Mapping[str, Any]
SYSTEM = msg.MessagingSystemValues.ACTIVEMQ.value
# Artemis drops a message whose _AMQ_DUPL_ID it has seen on that address (and says accepted).
DUPLICATE_ID_PROPERTY = "_AMQ_DUPL_ID"
MAX_PROPERTY_TEXT = inst.MAX_HEADER_TEXT
MAX_PROPERTY_NAME = 200
MAX_PROPERTIES = 64
INT64 = (-(2**63), 2**63 - 1)


def property_text(properties: Properties | None, name: str) -> str | None:
    """A property's value as text: None when missing, empty or not a string; cut to
    MAX_PROPERTY_TEXT."""
    value = (properties or {}).get(name)
    return value[:MAX_PROPERTY_TEXT] if isinstance(value, str) and value else None


def clean_value(value: object) -> bool | int | float | str:
    """A value an application property can hold and a log can show: booleans, integers that
    fit 64 bits and finite floats as they are; anything else as clean, bounded text."""
    if isinstance(value, bool) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, int) and INT64[0] <= value <= INT64[1]:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", "replace")
    return inst.clean_text(value, MAX_PROPERTY_TEXT)


def clean_properties(properties: Properties | None) -> dict[str, bool | int | float | str]:
    """Application properties safe to send: at most MAX_PROPERTIES, names as clean text (empty
    ones left out), values through clean_value."""
    cleaned: dict[str, bool | int | float | str] = {}
    for name, value in (properties or {}).items():
        key = inst.clean_text(name, MAX_PROPERTY_NAME)
        if key and len(cleaned) < MAX_PROPERTIES:
            cleaned[key] = clean_value(value)
    return cleaned


class PropertyGetter(Getter[Properties]):
    """Reads propagation fields from application properties; values that are not text count
    as missing."""

    def get(self, carrier: Properties, key: str) -> list[str] | None:
        value = property_text(carrier, key)
        return [value] if value is not None else None

    def keys(self, carrier: Properties) -> list[str]:
        return [str(key) for key in carrier]


class PropertySetter(Setter[MutableMapping[str, Any]]):
    """Writes propagation fields into application properties as clean text."""

    def set(self, carrier: MutableMapping[str, Any], key: str, value: str) -> None:
        carrier[key] = inst.clean_text(value, MAX_PROPERTY_TEXT)


GETTER = PropertyGetter()
SETTER = PropertySetter()


def inject_properties(properties: MutableMapping[str, Any],
                      context: otel_context.Context) -> None:
    """Write the trace context of context into properties. Never raises."""
    try:
        propagate.inject(properties, context=context, setter=SETTER)
    except Exception:
        log.exception("could not inject trace context; the message goes without it")


def extract_context(properties: Properties | None) -> otel_context.Context:
    """The trace context properties carry; an empty one (a new trace) when missing or
    garbage."""
    try:
        return propagate.extract(dict(properties or {}), getter=GETTER)
    except Exception:
        log.exception("could not extract trace context; processing under a new trace")
        return otel_context.Context()


def server_of(url: str) -> tuple[str, int]:
    """(host, port) of an AMQP URL, the scheme's port when it names none."""
    parts = urlsplit(url)
    default = 5671 if parts.scheme.lower() == "amqps" else 5672
    return parts.hostname or "localhost", parts.port or default


def _common(operation: str, *, address: str, correlation_id: str, size: int,
            server: tuple[str, int]) -> dict[str, Any]:
    kind = msg.MessagingOperationTypeValues.SEND if operation == "send" else \
        msg.MessagingOperationTypeValues.PROCESS
    return {msg.MESSAGING_SYSTEM: SYSTEM, msg.MESSAGING_OPERATION_NAME: operation,
            msg.MESSAGING_OPERATION_TYPE: kind.value, msg.MESSAGING_DESTINATION_NAME: address,
            msg.MESSAGING_MESSAGE_CONVERSATION_ID: correlation_id,
            msg.MESSAGING_MESSAGE_BODY_SIZE: size, server_attributes.SERVER_ADDRESS: server[0],
            server_attributes.SERVER_PORT: server[1]}


def send_attributes(*, address: str, message_id: str, correlation_id: str, size: int,
                    server: tuple[str, int]) -> dict[str, Any]:
    """Attributes of a PRODUCER span sending one message to an address."""
    return {**_common("send", address=address, correlation_id=correlation_id, size=size,
                      server=server), msg.MESSAGING_MESSAGE_ID: message_id}


def process_attributes(*, address: str, queue: str, message_id: str | None,
                       correlation_id: str, delivery_count: int, size: int,
                       server: tuple[str, int]) -> dict[str, Any]:
    """Attributes of a CONSUMER `process` span handling one delivery from queue (on address);
    its attempt is the broker's count of failed deliveries before it, plus one."""
    attributes = _common("process", address=address, correlation_id=correlation_id, size=size,
                         server=server)
    attributes[msg.MESSAGING_DESTINATION_SUBSCRIPTION_NAME] = queue
    attributes[inst.RETRY_ATTEMPT_ATTRIBUTE] = attempt_of(delivery_count)
    if message_id:
        attributes[msg.MESSAGING_MESSAGE_ID] = message_id
    return attributes


def attempt_of(delivery_count: int) -> int:
    """The attempt a delivery is (1: the first), from the broker's count of failed deliveries
    before it (AMQP's header delivery-count)."""
    return max(0, delivery_count) + 1
