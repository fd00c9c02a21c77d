"""Map spans from any OpenTelemetry messaging instrumentation onto SpanRecord.

Understands the current messaging semantic conventions and the older attribute names that
instrumentations still emit (RECIPES.md lists both), and the span names of the official
aiokafka (`{topic} send`, `{topic} receive`), kafka-python and confluent-kafka
(`{topic} process`) instrumentations. A span that lacks something is kept as far as it goes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from collectors.record import SpanRecord

KINDS = {Span.SPAN_KIND_PRODUCER: "producer", Span.SPAN_KIND_CONSUMER: "consumer",
         Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_SERVER: "server",
         Span.SPAN_KIND_INTERNAL: "internal"}
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
# Operation words, old and new, onto the current operation types.
OPERATIONS = {"send": "send", "publish": "send", "create": "create", "receive": "receive",
              "poll": "receive", "process": "process", "deliver": "process",
              "settle": "settle", "commit": "settle", "ack": "settle"}
NAME_PATTERNS = (re.compile(r"^(?P<op>[a-z]+) (?P<topic>\S+)$"),
                 re.compile(r"^(?P<topic>\S+) (?P<op>[a-z]+)$"))
MESSAGE_ID_PATTERN = re.compile(r"^(?P<topic>.+)\.(?P<partition>\d+)\.(?P<offset>\d+)$")
MAX_TEXT = 512
# attribute name -> (role, rank): one pass over a span's attributes finds, for each role, the
# value under its newest name, and never decodes attributes that play no role.
ROLES: dict[str, tuple[str, int]] = {
    name: (role, rank)
    for role, names in (("topic", TOPIC), ("partition", PARTITION), ("offset", OFFSET),
                        ("message_id", MESSAGE_ID), ("group", GROUP),
                        ("conversation", CONVERSATION), ("key", KEY), ("operation", OPERATION),
                        ("retry", RETRY), ("batch", BATCH), ("system", ("messaging.system",)),
                        ("error_type", ("error.type",)))
    for rank, name in enumerate(names)}


@dataclass
class NormalizeReport:
    """What normalisation could not place, counted by reason."""

    spans: int = 0
    problems: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        """Count one problem."""
        self.problems[reason] = self.problems.get(reason, 0) + 1


def any_value(value: AnyValue) -> Any:  # noqa: PLR0911
    """The Python value of an OTLP AnyValue (strings and ints first: most attributes are)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def attribute_map(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP attributes as a dict."""
    return {kv.key: any_value(kv.value) for kv in attributes}


def role_values(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    """For each role, the value of the newest attribute name present (empty values skipped)."""
    found: dict[str, tuple[int, Any]] = {}
    for kv in attributes:
        hit = ROLES.get(kv.key)
        if hit is None:
            continue
        role, rank = hit
        value = any_value(kv.value)
        if value is None or value == "":
            continue
        current = found.get(role)
        if current is None or rank < current[0]:
            found[role] = (rank, value)
    return {role: value for role, (_, value) in found.items()}


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)[:MAX_TEXT]


def _operation(roles: Mapping[str, Any], kind: str, name: str) -> str | None:
    word = roles.get("operation")
    if isinstance(word, str) and word.lower() in OPERATIONS:
        return OPERATIONS[word.lower()]
    for pattern in NAME_PATTERNS:
        match = pattern.match(name)
        if match and match["op"] in OPERATIONS:
            return OPERATIONS[match["op"]]
    return {"producer": "send", "consumer": "process"}.get(kind)


def _topic_from_name(name: str) -> str | None:
    for pattern in NAME_PATTERNS:
        match = pattern.match(name)
        if match and match["op"] in OPERATIONS:
            return match["topic"]
    return None


def normalize_span(span: Span, service: str, report: NormalizeReport) -> SpanRecord | None:
    """One OTLP span as a SpanRecord; None (and counted) when it has no valid identity."""
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        report.count("invalid trace or span id")
        return None
    roles = role_values(span.attributes)
    kind = KINDS.get(span.kind, "internal")
    error_type = roles.get("error_type")
    base = {
        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() if len(span.parent_span_id) == 8 else None,
        "links": tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links
                       if len(link.trace_id) == 16 and len(link.span_id) == 8),
        "service": service, "name": span.name[:MAX_TEXT], "kind": kind,
        "start_ns": span.start_time_unix_nano,
        "end_ns": max(span.end_time_unix_nano, span.start_time_unix_nano),
        "error": span.status.code == Status.STATUS_CODE_ERROR or error_type is not None,
        "error_type": _as_text(error_type),
    }
    if "system" not in roles and kind not in ("producer", "consumer"):
        return SpanRecord(**base)
    return SpanRecord(**base, **_messaging_fields(roles, kind, span.name, report))


def _messaging_fields(roles: Mapping[str, Any], kind: str, name: str,
                      report: NormalizeReport) -> dict[str, Any]:
    topic = _as_text(roles.get("topic")) or _topic_from_name(name)
    partition = _as_int(roles.get("partition"))
    offset = _as_int(roles.get("offset"))
    message_id = _as_text(roles.get("message_id"))
    parsed = MESSAGE_ID_PATTERN.match(message_id) if message_id else None
    if parsed:
        topic = topic or parsed["topic"]
        partition = partition if partition is not None else int(parsed["partition"])
        offset = offset if offset is not None else int(parsed["offset"])
    if topic and partition is not None and offset is not None:
        message_id = f"{topic}.{partition}.{offset}"
    if topic is None:
        report.count("messaging span without a destination")
    return {
        "operation": _operation(roles, kind, name),
        "system": _as_text(roles.get("system")),
        "topic": topic, "partition": partition, "offset": offset, "message_id": message_id,
        "consumer_group": _as_text(roles.get("group")),
        "correlation_id": _as_text(roles.get("conversation")),
        "message_key": _as_text(roles.get("key")),
        "retry_attempt": _as_int(roles.get("retry")),
        "batch_count": _as_int(roles.get("batch")),
    }


def normalize_request(request: ExportTraceServiceRequest, report: NormalizeReport
                      ) -> Iterator[SpanRecord]:
    """Every span of an OTLP export request, normalised."""
    for resource_spans in request.resource_spans:
        resource = attribute_map(resource_spans.resource.attributes)
        service = _as_text(resource.get("service.name")) or "unknown_service"
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                report.spans += 1
                record = normalize_span(span, service, report)
                if record is not None:
                    yield record
