"""Map spans from any OpenTelemetry messaging instrumentation onto SpanRecord.

Understands the current messaging semantic conventions and the older attribute names that
instrumentations still emit (RECIPES.md lists both), and the span names of the official
aiokafka (`{topic} send`, `{topic} receive`), kafka-python and confluent-kafka
(`{topic} process`) instrumentations. A span that lacks something is kept as far as it goes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from base.settings import IngestLimits
from store.records import INT64_MAX, INT64_MIN, SpanRecord
from store.vocabulary import (
    ACTIVEMQ,
    CONSUMES,
    DEFAULT_EXCHANGE,
    NATS,
    RABBITMQ,
    Operation,
    SpanKind,
)

KINDS = {Span.SPAN_KIND_PRODUCER: SpanKind.PRODUCER, Span.SPAN_KIND_CONSUMER: SpanKind.CONSUMER,
         Span.SPAN_KIND_CLIENT: SpanKind.CLIENT, Span.SPAN_KIND_SERVER: SpanKind.SERVER,
         Span.SPAN_KIND_INTERNAL: SpanKind.INTERNAL}
# Every name an attribute has had, newest first.
TOPIC = ("messaging.destination.name", "messaging.destination")
PARTITION = ("messaging.destination.partition.id", "messaging.kafka.destination.partition",
             "messaging.kafka.partition", "messaging.kafka.source.partition")
OFFSET = ("messaging.kafka.offset", "messaging.kafka.message.offset")
MESSAGE_ID = ("messaging.message.id", "messaging.message_id")
GROUP = ("messaging.consumer.group.name", "messaging.kafka.consumer.group",
         "messaging.kafka.consumer_group")
CONVERSATION = ("messaging.message.conversation_id", "messaging.conversation_id")
KEY = ("messaging.kafka.message.key", "messaging.kafka.message_key")
OPERATION = ("messaging.operation.type", "messaging.operation.name", "messaging.operation")
RETRY = ("messaging.message.retry_attempt", "messaging.retry_attempt", "retry.attempt")
BATCH = ("messaging.batch.message_count",)
ROUTING_KEY = ("messaging.rabbitmq.destination.routing_key", "messaging.rabbitmq.routing_key")
# Where a consumer took the message from, where a system names it apart from the destination.
SUBSCRIPTION = ("messaging.destination.subscription.name",)
# A destination's low-cardinality form ('shipments.*.dispatched' for 'shipments.eu.dispatched').
TEMPLATE = ("messaging.destination.template",)
# NATS: no semantic conventions yet; the names community instrumentations write.
NATS_SUBJECT = ("messaging.nats.message.subject", "messaging.nats.subject")
NATS_STREAM = ("messaging.nats.stream", "messaging.nats.jetstream.stream",
               "messaging.nats.stream.name")
NATS_SEQUENCE = ("messaging.nats.stream.sequence", "messaging.nats.sequence",
                 "messaging.nats.jetstream.stream_sequence",
                 "messaging.nats.message.stream_sequence")
NATS_CONSUMER = ("messaging.nats.consumer", "messaging.nats.jetstream.consumer",
                 "messaging.nats.consumer.name")
NATS_DELIVERIES = ("messaging.nats.num_delivered", "messaging.nats.delivery_count",
                   "messaging.nats.message.delivery_count")
NATS_QUEUE_GROUP = ("messaging.nats.queue_group",)
# ActiveMQ: Artemis instrumentations say 'activemq'; the JMS ones (OpenTelemetry Java's among
# them) say 'jms'. A fully qualified queue name is 'address::queue'.
ACTIVEMQ_SYSTEMS = (ACTIVEMQ, "jms", "artemis", "activemq_artemis")
FQQN_SEPARATOR = "::"
# A span of one of these kinds is a messaging span even when it does not say its system.
MESSAGING_KINDS = (SpanKind.PRODUCER, SpanKind.CONSUMER)
DEFAULT_OPERATION = {SpanKind.PRODUCER: Operation.SEND, SpanKind.CONSUMER: Operation.PROCESS}
# Operation words, old and new, onto the current operation types.
OPERATIONS = {"send": Operation.SEND, "publish": Operation.SEND, "create": Operation.CREATE,
              "receive": Operation.RECEIVE, "poll": Operation.RECEIVE,
              "process": Operation.PROCESS, "deliver": Operation.PROCESS,
              "settle": Operation.SETTLE, "commit": Operation.SETTLE, "ack": Operation.SETTLE}
NAME_PATTERNS = (re.compile(r"^(?P<op>[a-z]+) (?P<topic>\S+)$"),
                 re.compile(r"^(?P<topic>\S+) (?P<op>[a-z]+)$"))
# ASCII digits only: str.isdigit() and \d accept '²' and other digits int() refuses.
MESSAGE_ID_PATTERN = re.compile(
    r"^(?P<topic>.+)\.(?P<partition>[0-9]{1,19})\.(?P<offset>[0-9]{1,19})$")
INTEGER = re.compile(r"^\s*-?[0-9]{1,19}\s*$")
DEFAULT_LIMITS = IngestLimits()
MAX_TEXT = DEFAULT_LIMITS.max_value_chars  # also how many items of an array or map are read
# Arrays and maps inside an attribute value are read this deep, no deeper.
MAX_VALUE_DEPTH = DEFAULT_LIMITS.max_value_depth
# attribute name -> (role, rank): one pass over a span's attributes finds, for each role, the
# value under its newest name, and never decodes attributes that play no role.
MAX_RANK = 1 << 30  # above any rank: a role not found yet
ROLES: dict[str, tuple[str, int]] = {
    name: (role, rank)
    for role, names in (("topic", TOPIC), ("partition", PARTITION), ("offset", OFFSET),
                        ("message_id", MESSAGE_ID), ("group", GROUP),
                        ("conversation", CONVERSATION), ("key", KEY), ("operation", OPERATION),
                        ("retry", RETRY), ("batch", BATCH), ("system", ("messaging.system",)),
                        ("routing_key", ROUTING_KEY), ("subscription", SUBSCRIPTION),
                        ("template", TEMPLATE), ("subject", NATS_SUBJECT),
                        ("stream", NATS_STREAM), ("sequence", NATS_SEQUENCE),
                        ("nats_consumer", NATS_CONSUMER), ("deliveries", NATS_DELIVERIES),
                        ("queue_group", NATS_QUEUE_GROUP), ("error_type", ("error.type",)))
    for rank, name in enumerate(names)}


@dataclass
class NormalizeReport:
    """What normalisation could not place, counted by reason."""

    spans: int = 0
    problems: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        """Count one problem."""
        self.problems[reason] = self.problems.get(reason, 0) + 1


def any_value(value: AnyValue, depth: int = 0, max_depth: int = MAX_VALUE_DEPTH) -> Any:  # noqa: PLR0911
    """The Python value of an OTLP AnyValue (strings and ints first: most attributes are);
    arrays and maps are read max_depth deep and MAX_TEXT items wide."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value") and depth >= max_depth:
        return None
    if kind == "array_value":
        return [any_value(v, depth + 1, max_depth)
                for v in islice(value.array_value.values, MAX_TEXT)]
    if kind == "kvlist_value":
        return {kv.key[:MAX_TEXT]: any_value(kv.value, depth + 1, max_depth)
                for kv in islice(value.kvlist_value.values, MAX_TEXT)}
    if kind == "bytes_value":
        return value.bytes_value[:MAX_TEXT].hex()
    return getattr(value, kind)


def service_name(attributes: Iterable[KeyValue], limits: IngestLimits) -> str:
    """A resource's service.name (among its first attributes), else unknown_service."""
    for kv in islice(attributes, limits.max_attributes_per_span):
        if kv.key == "service.name":
            return _as_text(_cut(any_value(kv.value, 0, limits.max_value_depth),
                                 limits.max_value_chars)) or "unknown_service"
    return "unknown_service"


def role_values(attributes: Iterable[KeyValue], limits: IngestLimits = DEFAULT_LIMITS
                ) -> dict[str, Any]:
    """For each role, the value of the newest attribute name present (empty values skipped),
    among the first attributes; texts cut to the limit. Strings and integers, which most
    attributes are, are read inline: this loop runs for every attribute of every span."""
    found: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    chars = limits.max_value_chars
    roles = ROLES
    for kv in islice(attributes, limits.max_attributes_per_span):
        hit = roles.get(kv.key)
        if hit is None:
            continue
        role, rank = hit
        if rank >= ranks.get(role, MAX_RANK):
            continue
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            read: Any = value.string_value[:chars]
            if not read:
                continue
        elif kind == "int_value":
            read = value.int_value
        else:
            read = any_value(value, 0, limits.max_value_depth)
            if read is None or read == "":
                continue
            read = _cut(read, chars)
        ranks[role] = rank
        found[role] = read
    return found


def _cut(value: Any, chars: int) -> Any:
    """A string cut to chars; an array or map as its text, cut; numbers as they are."""
    if isinstance(value, str):
        return value[:chars]
    if isinstance(value, list | dict):
        return str(value)[:chars]
    return value


def as_int64(value: Any) -> int | None:
    """An integer the store can hold (int64), from an int, a whole float or a decimal string
    of ASCII digits; None for anything else (never raises)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = int(value) if INTEGER.match(value) else None
    elif isinstance(value, float):
        value = int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        return value
    return None


def as_count(value: Any) -> int | None:
    """A whole number of at least 0 the store can hold (an attempt, a batch size), else None."""
    number = as_int64(value)
    return number if number is not None and number >= 0 else None


def _time_ns(value: int, report: NormalizeReport) -> int:
    """A span time (uint64 on the wire) the store can hold: beyond int64 it is clamped."""
    if value > INT64_MAX:
        report.count("time beyond int64 (clamped)")
        return INT64_MAX
    return value


def _as_text(value: Any) -> str | None:
    """A value as text (role values are cut already, see role_values)."""
    return None if value is None else str(value)


def _operation(roles: Mapping[str, Any], kind: SpanKind, name: str) -> Operation | None:
    word = roles.get("operation")
    if isinstance(word, str) and word.lower() in OPERATIONS:
        return OPERATIONS[word.lower()]
    for pattern in NAME_PATTERNS:
        match = pattern.match(name)
        if match and match["op"] in OPERATIONS:
            return OPERATIONS[match["op"]]
    return DEFAULT_OPERATION.get(kind)


def _topic_from_name(name: str) -> str | None:
    for pattern in NAME_PATTERNS:
        match = pattern.match(name)
        if match and match["op"] in OPERATIONS:
            return match["topic"]
    return None


def _links(span: Span, limit: int, report: NormalizeReport) -> tuple[tuple[str, str], ...]:
    if len(span.links) > limit:
        report.count(f"links beyond {limit} per span (dropped)")
    return tuple((link.trace_id.hex(), link.span_id.hex()) for link in islice(span.links, limit)
                 if len(link.trace_id) == 16 and len(link.span_id) == 8)


def normalize_span(span: Span, service: str, report: NormalizeReport,
                   limits: IngestLimits = DEFAULT_LIMITS) -> SpanRecord | None:
    """One OTLP span as a SpanRecord; None (and counted) when it has no valid identity.

    Every text is cut at limits.max_value_chars characters, every number outside int64
    dropped (times clamped), links and attributes read up to the limits; what was cut is
    counted."""
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        report.count("invalid trace or span id")
        return None
    if len(span.attributes) > limits.max_attributes_per_span:
        report.count(f"attributes beyond {limits.max_attributes_per_span} per span (not read)")
    roles = role_values(span.attributes, limits)
    kind = KINDS.get(span.kind, SpanKind.INTERNAL)
    error_type = roles.get("error_type")
    # A name is cut before it is parsed, so a topic taken from it is never longer either.
    name = span.name[:limits.max_value_chars]
    start_ns = _time_ns(span.start_time_unix_nano, report)
    end_ns = _time_ns(span.end_time_unix_nano, report)
    record = SpanRecord(
        span.trace_id.hex(), span.span_id.hex(),
        span.parent_span_id.hex() if len(span.parent_span_id) == 8 else None,
        _links(span, limits.max_links_per_span, report) if span.links else (),
        service, name, kind, start_ns, end_ns if end_ns > start_ns else start_ns,
        span.status.code == Status.STATUS_CODE_ERROR or error_type is not None,
        None if error_type is None else str(error_type))
    if "system" in roles or kind in MESSAGING_KINDS:
        _add_messaging_fields(record, roles, kind, name, report=report,
                              chars=limits.max_value_chars)
    return record


def _add_messaging_fields(record: SpanRecord, roles: Mapping[str, Any], kind: SpanKind,
                          name: str, *, report: NormalizeReport, chars: int) -> None:
    """Fill in the message a messaging span handled (the record is new: nobody holds it)."""
    system = _as_text(roles.get("system"))
    topic = _as_text(roles.get("topic")) or _topic_from_name(name)
    partition = as_int64(roles.get("partition"))
    offset = as_int64(roles.get("offset"))
    message_id = _as_text(roles.get("message_id"))
    record.operation = _operation(roles, kind, name)
    if system == RABBITMQ:
        _add_rabbitmq_fields(record, topic, roles, kind, message_id)
        if topic is None:
            report.count("messaging span without a destination")
        return
    if system == NATS:
        if not _add_nats_fields(record, topic, roles, message_id, chars):
            report.count("messaging span without a destination")
        return
    if system is not None and system.lower() in ACTIVEMQ_SYSTEMS:
        if not _add_activemq_fields(record, topic, roles, message_id):
            report.count("messaging span without a destination")
        return
    # Kafka's coordinates: a message id of topic.partition.offset gives what is missing.
    parsed = MESSAGE_ID_PATTERN.match(message_id) if message_id else None
    if parsed:
        topic = topic or parsed["topic"]
        partition = partition if partition is not None else as_int64(parsed["partition"])
        offset = offset if offset is not None else as_int64(parsed["offset"])
    if topic and partition is not None and offset is not None:
        message_id = f"{topic}.{partition}.{offset}"[:chars]
    if topic is None:
        report.count("messaging span without a destination")
    record.system = system
    record.topic, record.partition, record.offset = topic, partition, offset
    record.message_id = message_id
    record.consumer_group = _as_text(roles.get("group"))
    record.queue = _as_text(roles.get("subscription"))
    _add_common_fields(record, roles)


def _add_common_fields(record: SpanRecord, roles: Mapping[str, Any]) -> None:
    record.correlation_id = _as_text(roles.get("conversation"))
    record.message_key = _as_text(roles.get("key"))
    record.retry_attempt = as_count(roles.get("retry"))
    record.batch_count = as_count(roles.get("batch"))


def _add_rabbitmq_fields(record: SpanRecord, destination: str | None,
                         roles: Mapping[str, Any], kind: SpanKind,
                         message_id: str | None) -> None:
    """A RabbitMQ span's exchange (record.topic), routing key and queue, from any of the
    shapes instrumentations write (RECIPES.md, RabbitMQ):

    - current conventions: messaging.destination.name '{exchange}:{routing key}' on a send,
      '{exchange}:{routing key}:{queue}' on a consume, each part left out when empty (the
      default exchange) or equal to the one before; the routing key in its own attribute;
    - aio-pika's instrumentation: messaging.destination '{exchange},{routing key}' on a send,
      the exchange (or, through the default exchange, the routing key) on a consume;
    - pika's: the queue on a consume (a CLIENT span), the message type or '(temporary)' on
      a send (a SERVER span).

    A consume whose destination could be an exchange or a queue keeps it as the exchange; the
    hop settles it when the send is known (collectors/flows/hops.py)."""
    routing_key = _as_text(roles.get("routing_key"))
    queue = _as_text(roles.get("subscription"))
    exchange = destination
    consume = record.operation in CONSUMES
    if destination is not None and "," in destination and not consume:
        exchange, _, key = destination.partition(",")
        routing_key = routing_key or key
        exchange = exchange or DEFAULT_EXCHANGE
    elif destination is not None and routing_key:
        exchange, queue = _split_on_key(destination, routing_key, consume, queue)
    elif destination is not None and ":" in destination:
        exchange, _, rest = destination.partition(":")
        if consume:
            queue = queue or rest.rpartition(":")[2] or None
    elif consume and kind == SpanKind.CLIENT and queue is None:
        exchange, queue = None, destination
    record.system = RABBITMQ
    record.topic, record.queue, record.routing_key = exchange, queue, routing_key
    record.message_id = message_id
    _add_common_fields(record, roles)


def _add_nats_fields(record: SpanRecord, destination: str | None, roles: Mapping[str, Any],
                     message_id: str | None, chars: int) -> bool:
    """A NATS span's subject (record.routing_key), and where it is drawn (record.topic): the
    JetStream stream that captured it, else the subject's template, else the subject; on a
    JetStream consume, the consumer it waited in (record.queue). A message with a stream and
    a stream sequence is named 'stream:sequence' on both sides, so a send and its consume
    match by it. False when the span names no subject and no stream."""
    subject = destination or _as_text(roles.get("subject"))
    stream = _as_text(roles.get("stream"))
    sequence = as_int64(roles.get("sequence"))
    group = _as_text(roles.get("group")) or _as_text(roles.get("queue_group"))
    consumer = _as_text(roles.get("nats_consumer"))
    record.system = NATS
    record.topic = stream or _as_text(roles.get("template")) or subject
    record.routing_key = subject
    if record.operation in CONSUMES and stream:
        record.queue = consumer or group
    record.consumer_group = group or consumer
    record.offset = sequence
    record.message_id = f"{stream}:{sequence}"[:chars] if stream and sequence is not None \
        else message_id
    _add_common_fields(record, roles)
    if record.retry_attempt is None:
        record.retry_attempt = as_count(roles.get("deliveries"))
    return record.topic is not None


def _add_activemq_fields(record: SpanRecord, destination: str | None,
                         roles: Mapping[str, Any], message_id: str | None) -> bool:
    """An ActiveMQ span's address (record.topic) and, on a consume, the queue the message
    waited in (record.queue): the subscription name, else the queue of a fully qualified
    destination 'address::queue', else the destination itself (an anycast queue has its
    address's name, as JMS queues do). The message id is kept as it is: Artemis gives the
    consumer the id the producer set, so a send and its consume match by it. False when the
    span names no destination."""
    address, queue = destination, _as_text(roles.get("subscription"))
    if destination is not None and FQQN_SEPARATOR in destination:
        address, _, named = destination.partition(FQQN_SEPARATOR)
        queue = queue or named or None
        address = address or None
    if record.operation in CONSUMES:
        record.queue = queue or address
    record.system = ACTIVEMQ
    record.topic = address
    record.message_id = message_id
    record.consumer_group = _as_text(roles.get("group"))
    _add_common_fields(record, roles)
    return address is not None


def _split_on_key(destination: str, key: str, consume: bool, queue: str | None
                  ) -> tuple[str | None, str | None]:
    """(exchange, queue) of a current-conventions destination name, knowing the routing key."""
    if destination == key:  # the default exchange; on a consume, the queue is the key
        return DEFAULT_EXCHANGE, queue or (key if consume else None)
    if f":{key}:" in destination:
        exchange, _, rest = destination.partition(f":{key}:")
        return exchange or DEFAULT_EXCHANGE, queue or rest
    if destination.startswith(f"{key}:"):  # default exchange, then the queue
        return DEFAULT_EXCHANGE, queue or destination[len(key) + 1:]
    if destination.endswith(f":{key}"):  # the queue named as the key
        return destination[:-len(key) - 1], queue or (key if consume else None)
    return destination, queue


def count_spans(request: ExportTraceServiceRequest) -> int:
    """How many spans an export request holds."""
    return sum(len(scope.spans) for resource in request.resource_spans
               for scope in resource.scope_spans)


def normalize_request(request: ExportTraceServiceRequest, report: NormalizeReport,
                      limits: IngestLimits = DEFAULT_LIMITS) -> Iterator[SpanRecord]:
    """Every span of an OTLP export request, normalised."""
    for resource_spans in request.resource_spans:
        service = service_name(resource_spans.resource.attributes, limits)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                report.spans += 1
                record = normalize_span(span, service, report, limits)
                if record is not None:
                    yield record
