"""RabbitMQ spans onto the record: the exchange as the destination, the queue where the
message waited, the routing key, from the shapes the current conventions, the official
aio-pika and pika instrumentations and older attribute names give (RECIPES.md, RabbitMQ)."""

from __future__ import annotations

import pytest

from collectors.normalize import NormalizeReport, normalize_request
from store.records import SpanRecord
from store.vocabulary import DEFAULT_EXCHANGE, Operation
from tests.otlp_factory import request, span


def _one(kind: str, name: str, **attributes: object) -> SpanRecord:
    report = NormalizeReport()
    records = list(normalize_request(request({"svc": [span(
        name=name, kind=kind, attributes={"messaging.system": "rabbitmq", **attributes})]}),
        report))
    assert len(records) == 1
    assert report.problems == {}
    return records[0]


def _route(record: SpanRecord) -> tuple[str | None, str | None, str | None]:
    return record.topic, record.queue, record.routing_key


@pytest.mark.parametrize(("destination", "key", "expected"), [
    ("jobs:thumb", "thumb", ("jobs", None, "thumb")),
    ("jobs", None, ("jobs", None, None)),
    ("thumb", "thumb", (DEFAULT_EXCHANGE, None, "thumb")),  # the default exchange
])
def test_current_conventions_send(destination: str, key: str | None,
                                  expected: tuple[str, str | None, str | None]) -> None:
    extra = {"messaging.rabbitmq.destination.routing_key": key} if key else {}
    record = _one("producer", f"send {destination}", **{
        "messaging.operation.type": "send", "messaging.destination.name": destination,
        "messaging.message.id": "m-1", **extra})
    assert _route(record) == expected
    assert record.is_send
    assert (record.system, record.message_id) == ("rabbitmq", "m-1")


@pytest.mark.parametrize(("destination", "key", "expected"), [
    ("jobs:thumb:thumb-q", "thumb", ("jobs", "thumb-q", "thumb")),
    ("jobs:thumb", "thumb", ("jobs", "thumb", "thumb")),  # queue named as the key
    ("thumb:thumb-q", "thumb", (DEFAULT_EXCHANGE, "thumb-q", "thumb")),
    ("thumb", "thumb", (DEFAULT_EXCHANGE, "thumb", "thumb")),
    ("events:audit", None, ("events", "audit", None)),  # fanout: no routing key
])
def test_current_conventions_consume(destination: str, key: str | None,
                                     expected: tuple[str, str, str | None]) -> None:
    extra = {"messaging.rabbitmq.destination.routing_key": key} if key else {}
    record = _one("consumer", f"process {destination}", **{
        "messaging.operation.type": "process", "messaging.destination.name": destination,
        **extra})
    assert _route(record) == expected
    assert record.is_consume


def test_old_routing_key_name_and_subscription_name_for_the_queue() -> None:
    record = _one("consumer", "jobs receive", **{
        "messaging.operation": "receive", "messaging.destination": "jobs",
        "messaging.rabbitmq.routing_key": "thumb",
        "messaging.destination.subscription.name": "thumb-q"})
    assert _route(record) == ("jobs", "thumb-q", "thumb")


def test_official_aio_pika_publish_and_consume() -> None:
    # publish_decorator: destination '{exchange},{routing_key}', no operation, temp_destination
    sent = _one("producer", "jobs,thumb send", **{
        "messaging.destination": "jobs,thumb", "messaging.temp_destination": True,
        "messaging.message.id": "m-7", "messaging.conversation_id": "order-1",
        "net.peer.name": "127.0.0.1", "net.peer.port": 5672})
    assert _route(sent) == ("jobs", None, "thumb")
    assert (sent.operation, sent.message_id, sent.correlation_id) == \
        (Operation.SEND, "m-7", "order-1")
    default = _one("producer", ",thumb-q send", **{"messaging.destination": ",thumb-q"})
    assert _route(default) == (DEFAULT_EXCHANGE, None, "thumb-q")
    # callback_decorator: destination = the exchange, or the routing key through the default
    received = _one("consumer", "jobs receive", **{
        "messaging.destination": "jobs", "messaging.operation": "receive"})
    assert _route(received) == ("jobs", None, None)
    assert received.is_consume


def test_official_pika_consume_names_the_queue() -> None:
    # pika's consume span is a CLIENT span whose destination is the queue it consumes
    record = _one("client", "thumb-q receive", **{
        "messaging.destination": "thumb-q", "messaging.operation": "receive",
        "messaging.message_id": "m-9"})
    assert _route(record) == (None, "thumb-q", None)
    assert record.is_consume
    assert record.message_id == "m-9"
    sent = _one("server", "(temporary) send", **{
        "messaging.destination": "(temporary)", "messaging.temp_destination": True})
    assert sent.is_send


def test_a_rabbitmq_message_id_is_never_read_as_kafka_coordinates() -> None:
    record = _one("producer", "send jobs", **{
        "messaging.destination.name": "jobs", "messaging.message.id": "jobs.1.2"})
    assert (record.partition, record.offset, record.message_id) == (None, None, "jobs.1.2")
