"""OpenTelemetry for the NATS leg: header propagation, span attributes, header clean-up.

NATS has no semantic conventions of its own yet; spans follow the generic messaging ones: a
PRODUCER `send {subject}` span per message published, whose context travels in the W3C
`traceparent`/`tracestate` headers, and a CONSUMER `process {subject}` span per message handled,
the child of that context. The subject is the destination and its wildcard form the template;
JetStream's coordinates go in `messaging.nats.*` (stream, stream sequence, consumer, deliveries).
The correlation ID travels as on Kafka (the `correlation-id` header), the message ID in
`Nats-Msg-Id` (which JetStream also deduplicates by). Instrumentation never breaks a service: a
failure inside it is logged and skipped.
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

NatsHeaders = Mapping[str, str]
SYSTEM = "nats"
MSG_ID_HEADER = "Nats-Msg-Id"
NATS_STREAM = "messaging.nats.stream"
NATS_SEQUENCE = "messaging.nats.stream.sequence"
NATS_CONSUMER = "messaging.nats.consumer"
NATS_DELIVERIES = "messaging.nats.num_delivered"
MAX_HEADER_TEXT = inst.MAX_HEADER_TEXT
# The client decodes header values that are not UTF-8 with U+FFFD in place of the bad bytes.
REPLACEMENT = "\ufffd"


def header_text(headers: NatsHeaders | None, name: str) -> str | None:
    """A header's value (its name matched in any case): None when missing, empty, not text or
    not UTF-8 on the wire; cut to MAX_HEADER_TEXT."""
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        value = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == lower),
                     None)
    if not isinstance(value, str) or not value or REPLACEMENT in value:
        return None
    return value[:MAX_HEADER_TEXT]


def clean_header(value: object, limit: int = MAX_HEADER_TEXT) -> str:
    """Text that can go in a NATS header: control characters (a line break would end the
    header block) made spaces, cut to limit."""
    return inst.clean_text(value, limit)


class NatsHeaderGetter(Getter[NatsHeaders]):
    """Reads propagation fields from NATS headers; undecodable values count as missing."""

    def get(self, carrier: NatsHeaders, key: str) -> list[str] | None:
        value = header_text(carrier, key)
        return [value] if value is not None else None

    def keys(self, carrier: NatsHeaders) -> list[str]:
        return [str(key) for key in carrier]


class NatsHeaderSetter(Setter[MutableMapping[str, str]]):
    """Writes propagation fields into NATS headers, replacing any earlier value in any case."""

    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        for old in [k for k in carrier if k.lower() == key.lower()]:
            del carrier[old]
        carrier[key] = clean_header(value)


GETTER = NatsHeaderGetter()
SETTER = NatsHeaderSetter()


def inject_headers(headers: MutableMapping[str, str], context: otel_context.Context) -> None:
    """Write the trace context of context into headers. Never raises."""
    try:
        propagate.inject(headers, context=context, setter=SETTER)
    except Exception:
        log.exception("could not inject trace context; the message goes without it")


def extract_context(headers: NatsHeaders | None) -> otel_context.Context:
    """The trace context headers carry; an empty one (a new trace) when missing or garbage."""
    try:
        return propagate.extract(dict(headers or {}), getter=GETTER)
    except Exception:
        log.exception("could not extract trace context; processing under a new trace")
        return otel_context.Context()


def server_of(url: str) -> tuple[str, int]:
    """(host, port) of a NATS URL, 4222 when it names none."""
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 4222


def send_attributes(*, subject: str, template: str | None, message_id: str,
                    correlation_id: str, size: int, server: tuple[str, int]) -> dict[str, Any]:
    """Attributes of a PRODUCER span publishing one message (core NATS or JetStream)."""
    attributes: dict[str, Any] = {
        msg.MESSAGING_SYSTEM: SYSTEM,
        msg.MESSAGING_OPERATION_NAME: "send",
        msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.SEND.value,
        msg.MESSAGING_DESTINATION_NAME: subject,
        msg.MESSAGING_MESSAGE_ID: message_id,
        msg.MESSAGING_MESSAGE_CONVERSATION_ID: correlation_id,
        msg.MESSAGING_MESSAGE_BODY_SIZE: size,
        server_attributes.SERVER_ADDRESS: server[0],
        server_attributes.SERVER_PORT: server[1],
    }
    if template:
        attributes[msg.MESSAGING_DESTINATION_TEMPLATE] = template
    return attributes


def stored_attributes(stream: str, sequence: int) -> dict[str, Any]:
    """Attributes a JetStream PRODUCER span gains from the PubAck: where the message is."""
    return {NATS_STREAM: stream, NATS_SEQUENCE: sequence}


def process_attributes(*, subject: str, template: str | None, message_id: str | None,
                       correlation_id: str, size: int, server: tuple[str, int],
                       group: str | None = None) -> dict[str, Any]:
    """Attributes of a CONSUMER `process` span of a core NATS message (group: the queue
    group the subscriber is in)."""
    attributes: dict[str, Any] = {
        msg.MESSAGING_SYSTEM: SYSTEM,
        msg.MESSAGING_OPERATION_NAME: "process",
        msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.PROCESS.value,
        msg.MESSAGING_DESTINATION_NAME: subject,
        msg.MESSAGING_MESSAGE_CONVERSATION_ID: correlation_id,
        msg.MESSAGING_MESSAGE_BODY_SIZE: size,
        server_attributes.SERVER_ADDRESS: server[0],
        server_attributes.SERVER_PORT: server[1],
    }
    if template:
        attributes[msg.MESSAGING_DESTINATION_TEMPLATE] = template
    if message_id:
        attributes[msg.MESSAGING_MESSAGE_ID] = message_id
    if group:
        attributes[msg.MESSAGING_CONSUMER_GROUP_NAME] = group
    return attributes


def jetstream_process_attributes(*, subject: str, template: str | None, stream: str,
                                 sequence: int, consumer: str, deliveries: int,
                                 message_id: str | None, correlation_id: str, size: int,
                                 server: tuple[str, int]) -> dict[str, Any]:
    """Attributes of a CONSUMER `process` span of a JetStream delivery to a durable consumer;
    its attempt is the delivery count (1: the first delivery)."""
    attributes = process_attributes(subject=subject, template=template, message_id=message_id,
                                    correlation_id=correlation_id, size=size, server=server,
                                    group=consumer)
    attributes.update({**stored_attributes(stream, sequence), NATS_CONSUMER: consumer,
                       NATS_DELIVERIES: deliveries, inst.RETRY_ATTEMPT_ATTRIBUTE: deliveries})
    return attributes
