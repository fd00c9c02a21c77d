"""Artemis queue backlog from Jolokia's answers: the figures, the status rules, the broker's
own queues left out, and what a malformed answer costs (one queue, never the poll)."""

from __future__ import annotations

from typing import Any

import pytest

from collectors.lag.artemis import ArtemisLag, JolokiaError, queue_samples
from store.vocabulary import ACTIVEMQ, GroupStatus, PartitionStatus

MBEAN = ('org.apache.activemq.artemis:address="{address}",broker="flowscope",'
         'component=addresses,queue="{name}",routing-type="anycast",subcomponent=queues')


def _queue(name: str = "invoices", *, address: str | None = None, count: int = 0,
           delivering: int = 0, consumers: int = 1, acked: int = 0, killed: int = 0,
           expired: int = 0, stamp: int | None = 0, age: int | None = None,
           **extra: object) -> tuple[str, dict[str, object]]:
    address = address or name
    return MBEAN.format(address=address, name=name), {
        "Name": name, "Address": address, "RoutingType": "ANYCAST", "Temporary": False,
        "MessageCount": count, "DeliveringCount": delivering, "ConsumerCount": consumers,
        "MessagesAdded": count + acked + killed + expired, "MessagesAcknowledged": acked,
        "MessagesKilled": killed, "MessagesExpired": expired, "FirstMessageTimestamp": stamp,
        "FirstMessageAge": age, **extra}


def _answer(*queues: tuple[str, dict[str, object]]) -> dict[str, Any]:
    return {"status": 200, "value": dict(queues)}


def test_lag_is_the_message_count_with_what_is_being_delivered_given_apart() -> None:
    samples, problems = queue_samples(_answer(_queue(count=7, delivering=2, acked=30, killed=2,
                                                     expired=1, stamp=1_700_000_000_000,
                                                     age=4_500)))
    assert problems == []
    rows, groups = ArtemisLag().rows(samples, now_s=100.0)
    (row,) = rows
    assert (row.system, row.group, row.topic, row.partition) == (ACTIVEMQ, "invoices",
                                                                  "invoices", None)
    assert (row.lag, row.ready, row.unacknowledged, row.consumers) == (7, 5, 2, 1)
    assert (row.committed, row.end) == (33, 40)
    assert row.lag_seconds == pytest.approx(4.5)
    assert groups[0].lag == 7


def test_the_age_is_unknown_when_the_message_has_no_time_and_zero_when_the_queue_is_empty(
        ) -> None:
    samples, _ = queue_samples(_answer(_queue("a", count=3, stamp=0, age=1_796_278_902_657),
                                       _queue("b", count=0, stamp=None, age=None)))
    rows, _ = ArtemisLag().rows(samples, now_s=1.0)
    assert [(r.group, r.lag_seconds) for r in rows] == [("a", None), ("b", 0.0)]


def test_a_backlog_without_consumers_stops_and_one_drained_is_ok() -> None:
    lag = ArtemisLag(window=3)
    for second in range(3):
        samples, _ = queue_samples(_answer(_queue(count=5 + second, consumers=0)))
        rows, groups = lag.rows(samples, now_s=float(second))
    assert rows[0].status == PartitionStatus.STOP
    assert groups[0].status == GroupStatus.ERR
    samples, _ = queue_samples(_answer(_queue(count=0, acked=7)))
    rows, groups = lag.rows(samples, now_s=3.0)
    assert (rows[0].status, groups[0].status) == (PartitionStatus.OK, GroupStatus.OK)


def test_a_consumer_that_takes_nothing_stalls_and_one_falling_behind_warns() -> None:
    stalled, behind = ArtemisLag(window=3), ArtemisLag(window=3)
    for second in range(3):
        rows_a, _ = stalled.rows(queue_samples(_answer(_queue(count=4, acked=10)))[0],
                                 now_s=float(second))
        rows_b, groups_b = behind.rows(queue_samples(_answer(_queue(
            count=4 + second, acked=10 + second)))[0], now_s=float(second))
    assert rows_a[0].status == PartitionStatus.STALL
    assert rows_b[0].status == PartitionStatus.WARN
    assert groups_b[0].consume_rate == pytest.approx(1.0)
    assert groups_b[0].lag_rate == pytest.approx(1.0)


def test_the_brokers_own_and_temporary_queues_are_left_out() -> None:
    samples, problems = queue_samples(_answer(
        _queue("$sys.mqtt.sessions"), _queue("activemq.management.3f2a"),
        _queue("reply", Temporary=True), _queue("invoices")))
    assert [s.name for s in samples] == ["invoices"]
    assert problems == []


def test_a_malformed_queue_is_skipped_with_its_reason_and_the_others_kept() -> None:
    bad_count = _queue("neg", count=-1)
    no_name = ("mbean-2", {"Address": "x"})
    text = ("mbean-3", "text")
    errored = _queue("odd", DeliveringCount="javax.management.AttributeNotFoundException")
    samples, problems = queue_samples(_answer(bad_count, no_name, text, errored,  # type: ignore[arg-type]
                                              _queue("fine", count=3)))
    assert [s.name for s in samples] == ["fine"]
    assert len(problems) == 4
    assert any("neg" in p and "-1" in p for p in problems)


@pytest.mark.parametrize("answer", [[], "text", {"status": 403, "error": "forbidden"},
                                    {"status": 200, "value": ["not", "an", "object"]}])
def test_an_answer_that_is_not_a_read_of_queues_is_an_error(answer: object) -> None:
    with pytest.raises(JolokiaError):
        queue_samples(answer)


def test_a_queue_made_again_starts_a_new_window() -> None:
    lag = ArtemisLag(window=3)
    lag.rows(queue_samples(_answer(_queue(count=2, acked=50)))[0], now_s=0.0)
    rows, _ = lag.rows(queue_samples(_answer(_queue(count=2, acked=0)))[0], now_s=1.0)
    assert rows[0].status != PartitionStatus.REWIND
    assert len(lag.windows[("invoices", "invoices")].entries) == 1


def test_nothing_waits_when_every_message_is_being_delivered() -> None:
    # The broker's FirstMessageAge leaves out what consumers hold: null when all are held.
    samples, _ = queue_samples(_answer(_queue(count=4, delivering=4, stamp=None, age=None)))
    rows, _ = ArtemisLag().rows(samples, now_s=1.0)
    assert (rows[0].lag, rows[0].ready, rows[0].lag_seconds) == (4, 0, 0.0)


@pytest.mark.parametrize("name", ["DLQ.invoices", "ExpiryQueue", "orders.dlq"])
def test_a_dead_letter_or_expiry_queue_without_consumers_is_not_stopped(name: str) -> None:
    lag = ArtemisLag(window=3)
    for second in range(3):
        rows, groups = lag.rows(queue_samples(_answer(_queue(name, count=3, consumers=0)))[0],
                                now_s=float(second))
    assert (rows[0].lag, rows[0].status, groups[0].status) == (3, PartitionStatus.OK,
                                                               GroupStatus.OK)


def test_a_count_beyond_int64_is_a_malformed_queue() -> None:
    samples, problems = queue_samples(_answer(_queue("huge", count=2**63), _queue("fine")))
    assert [s.name for s in samples] == ["fine"]
    assert len(problems) == 1


def test_messages_waiting_out_a_redelivery_delay_are_lag_but_not_ready() -> None:
    samples, _ = queue_samples(_answer(_queue(count=5, delivering=1, ScheduledCount=3,
                                              stamp=1_700_000_000_000, age=2_000)))
    rows, _ = ArtemisLag().rows(samples, now_s=1.0)
    assert (rows[0].lag, rows[0].ready, rows[0].unacknowledged) == (5, 1, 1)
    assert rows[0].lag_seconds == pytest.approx(2.0)
