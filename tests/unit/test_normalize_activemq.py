"""ActiveMQ spans onto the record: the address (record.topic) and, on a consume, the queue the
message waited in (record.queue), from the demo's attributes, from a fully qualified
destination 'address::queue', and from JMS instrumentations that say 'jms' and name only the
destination; the message id is kept so that a send and its consume match by it."""

from __future__ import annotations

import pytest

from collectors.normalize import NormalizeReport, normalize_request
from store.records import SpanRecord
from tests.otlp_factory import request, span


def _one(kind: str, name: str, problems: dict[str, int] | None = None, *,
         system: str = "activemq", **attributes: object) -> SpanRecord:
    report = NormalizeReport()
    records = list(normalize_request(request({"svc": [span(
        name=name, kind=kind, attributes={"messaging.system": system, **attributes})]}),
        report))
    assert len(records) == 1
    assert report.problems == (problems or {})
    return records[0]


def test_a_send_names_its_address_and_no_queue() -> None:
    record = _one("producer", "send invoices", **{
        "messaging.operation.type": "send", "messaging.destination.name": "invoices",
        "messaging.message.id": "6d65e7d8", "messaging.message.conversation_id": "order-7"})
    assert (record.system, record.topic, record.queue) == ("activemq", "invoices", None)
    assert record.is_send
    assert (record.message_id, record.correlation_id) == ("6d65e7d8", "order-7")


def test_a_consume_waits_in_its_subscription_queue_and_keeps_its_attempt() -> None:
    record = _one("consumer", "process billing.events", **{
        "messaging.operation.type": "process", "messaging.destination.name": "billing.events",
        "messaging.destination.subscription.name": "billing.events.ledger",
        "messaging.message.retry_attempt": 3, "messaging.message.id": "m-1"})
    assert (record.topic, record.queue, record.retry_attempt) == \
        ("billing.events", "billing.events.ledger", 3)
    assert not record.is_send
    assert record.message_id == "m-1"


def test_an_anycast_consume_that_names_only_the_destination_waits_in_the_queue_of_that_name(
        ) -> None:
    record = _one("consumer", "invoices process", system="jms",
                  **{"messaging.destination.name": "invoices",
                     "messaging.message.id": "ID:1f2e"})
    assert (record.system, record.topic, record.queue, record.message_id) == \
        ("activemq", "invoices", "invoices", "ID:1f2e")


@pytest.mark.parametrize(("destination", "expected"), [
    ("billing.events::billing.events.mailer", ("billing.events", "billing.events.mailer")),
    ("::orphan", (None, "orphan")),
    ("billing.events::", ("billing.events", "billing.events"))])
def test_a_fully_qualified_destination_is_split_into_address_and_queue(
        destination: str, expected: tuple[str | None, str]) -> None:
    problems = {"messaging span without a destination": 1} if expected[0] is None else None
    record = _one("consumer", "process", problems,
                  **{"messaging.destination.name": destination})
    assert (record.topic, record.queue) == expected


@pytest.mark.parametrize("system", ["activemq", "ActiveMQ", "jms", "artemis"])
def test_every_name_of_the_system_is_activemq(system: str) -> None:
    assert _one("producer", "send q", system=system,
                **{"messaging.destination.name": "q"}).system == "activemq"


def test_a_span_without_a_destination_is_kept_and_counted() -> None:
    record = _one("producer", "send", {"messaging span without a destination": 1})
    assert (record.system, record.topic) == ("activemq", None)
