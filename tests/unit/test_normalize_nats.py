"""NATS spans onto the record: the subject (record.routing_key), the stream that captured it
or the subject's template as what the map draws (record.topic), the JetStream consumer where
it waited (record.queue), 'stream:sequence' as the message id, deliveries as attempts; from
the demo's attributes and from spans that carry only a subject, as community
instrumentations write them."""

from __future__ import annotations

from collectors.normalize import NormalizeReport, normalize_request
from store.records import SpanRecord
from store.vocabulary import Operation
from tests.otlp_factory import request, span


def _one(kind: str, name: str, problems: dict[str, int] | None = None,
         **attributes: object) -> SpanRecord:
    report = NormalizeReport()
    records = list(normalize_request(request({"svc": [span(
        name=name, kind=kind, attributes={"messaging.system": "nats", **attributes})]}),
        report))
    assert len(records) == 1
    assert report.problems == (problems or {})
    return records[0]


def test_a_jetstream_publish_is_drawn_as_its_stream_and_named_by_stream_and_sequence() -> None:
    record = _one("producer", "send shipments.eu.dispatched", **{
        "messaging.operation.type": "send",
        "messaging.destination.name": "shipments.eu.dispatched",
        "messaging.destination.template": "shipments.*.dispatched",
        "messaging.nats.stream": "SHIPMENTS", "messaging.nats.stream.sequence": 42,
        "messaging.message.id": "b7c1", "messaging.message.conversation_id": "order-9"})
    assert (record.system, record.topic, record.routing_key, record.queue) == \
        ("nats", "SHIPMENTS", "shipments.eu.dispatched", None)
    assert (record.message_id, record.offset, record.partition) == ("SHIPMENTS:42", 42, None)
    assert record.is_send
    assert record.correlation_id == "order-9"


def test_a_jetstream_consume_waits_in_its_consumer_and_counts_deliveries_as_attempts() -> None:
    record = _one("consumer", "process shipments.us.dispatched", **{
        "messaging.operation.type": "process",
        "messaging.destination.name": "shipments.us.dispatched",
        "messaging.nats.stream": "SHIPMENTS", "messaging.nats.stream.sequence": "42",
        "messaging.nats.consumer": "tracking", "messaging.nats.num_delivered": 3})
    assert (record.topic, record.queue, record.consumer_group) == \
        ("SHIPMENTS", "tracking", "tracking")
    assert (record.message_id, record.retry_attempt) == ("SHIPMENTS:42", 3)
    assert record.is_consume
    assert record.operation == Operation.PROCESS


def test_an_explicit_retry_attempt_wins_over_the_delivery_count() -> None:
    record = _one("consumer", "process a.b", **{
        "messaging.destination.name": "a.b", "messaging.nats.stream": "S",
        "messaging.consumer.group.name": "durable", "messaging.message.retry_attempt": 2,
        "messaging.nats.delivery_count": 5})
    assert (record.queue, record.retry_attempt) == ("durable", 2)


def test_community_names_for_stream_sequence_and_consumer() -> None:
    record = _one("consumer", "orders.created receive", **{
        "messaging.destination": "orders.created", "messaging.operation": "receive",
        "messaging.nats.jetstream.stream": "ORDERS", "messaging.nats.sequence": 7,
        "messaging.nats.jetstream.consumer": "billing"})
    assert (record.topic, record.queue, record.message_id, record.operation) == \
        ("ORDERS", "billing", "ORDERS:7", Operation.RECEIVE)


def test_core_nats_pub_sub_is_drawn_as_the_subject_template_with_no_consumer() -> None:
    sent = _one("producer", "send tracking.status.eu", **{
        "messaging.destination.name": "tracking.status.eu",
        "messaging.destination.template": "tracking.status.*"})
    got = _one("consumer", "process tracking.status.eu", **{
        "messaging.destination.name": "tracking.status.eu",
        "messaging.destination.template": "tracking.status.*",
        "messaging.nats.queue_group": "portal"})
    assert (sent.topic, sent.routing_key, sent.queue) == \
        ("tracking.status.*", "tracking.status.eu", None)
    assert (got.topic, got.queue, got.consumer_group) == ("tracking.status.*", None, "portal")
    assert got.is_consume


def test_a_span_with_only_a_subject_keeps_the_subject_and_its_message_id() -> None:
    # As community instrumentations write them: the subject and the headers, nothing more.
    record = _one("producer", "publish events.user", **{
        "messaging.nats.message.subject": "events.user", "messaging.message.id": "m-1"})
    assert (record.topic, record.routing_key, record.message_id, record.operation) == \
        ("events.user", "events.user", "m-1", Operation.SEND)


def test_a_nats_span_without_subject_or_stream_is_counted() -> None:
    record = _one("producer", "publish", {"messaging span without a destination": 1})
    assert record.topic is None
    assert not record.is_send


def test_hostile_stream_and_sequence_values_are_kept_as_text_or_dropped() -> None:
    record = _one("consumer", "process x", **{
        "messaging.destination.name": "x", "messaging.nats.stream": "<script>S</script>",
        "messaging.nats.stream.sequence": "²", "messaging.nats.num_delivered": -4})
    assert (record.topic, record.offset, record.retry_attempt) == \
        ("<script>S</script>", None, None)
    assert record.message_id is None
