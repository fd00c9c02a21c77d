"""JetStream consumer backlog from /jsz: the figures, the row's shape (group = consumer, topic
= stream, committed = ack floor, end = last sequence), the status rules and what a malformed
answer costs (one consumer, never the poll)."""

from __future__ import annotations

import pytest

from collectors.lag.jetstream import ConsumerLag, MonitoringError, consumer_samples, parse_time
from store.vocabulary import NATS, GroupStatus, PartitionStatus


def _consumer(name: str = "tracking", *, pending: int = 0, ack_pending: int = 0,
              floor: int = 0, floor_consumer: int | None = None,
              subject: str | None = None) -> dict[str, object]:
    consumer: dict[str, object] = {
        "name": name, "num_pending": pending, "num_ack_pending": ack_pending,
        "num_redelivered": 0, "delivered": {"stream_seq": floor + ack_pending},
        "ack_floor": {"stream_seq": floor,
                      "consumer_seq": floor if floor_consumer is None else floor_consumer}}
    if subject:
        consumer["config"] = {"durable_name": name, "filter_subject": subject}
    return consumer


def _jsz(*consumers: object, stream: str = "SHIPMENTS", last: int = 100) -> dict[str, object]:
    return {"account_details": [{"name": "$G", "stream_detail": [
        {"name": stream, "state": {"messages": last, "last_seq": last},
         "consumer_detail": list(consumers)}]}]}


def test_a_consumer_row_has_the_stream_ack_floor_last_sequence_and_pending_plus_ack_pending(
        ) -> None:
    samples, problems = consumer_samples(_jsz(_consumer(pending=5, ack_pending=2, floor=93,
                                                        subject="shipments.*.dispatched")))
    assert problems == []
    assert samples[0].filter_subject == "shipments.*.dispatched"
    rows, groups = ConsumerLag().rows(samples, {("$G", "SHIPMENTS", "tracking"): 4.5}, 1000.0)
    row = rows[0]
    assert (row.system, row.group, row.topic, row.partition) == \
        (NATS, "tracking", "SHIPMENTS", None)
    assert (row.committed, row.end, row.lag, row.ready, row.unacknowledged) == \
        (93, 100, 7, 5, 2)
    assert row.lag_seconds == 4.5
    assert (groups[0].group, groups[0].system, groups[0].lag) == ("tracking", NATS, 7)


def test_a_consumer_with_nothing_pending_is_ok_with_no_age() -> None:
    samples, _ = consumer_samples(_jsz(_consumer(floor=100)))
    rows, groups = ConsumerLag().rows(samples, {}, 1000.0)
    assert (rows[0].lag, rows[0].lag_seconds, rows[0].status) == (0, 0.0, PartitionStatus.OK)
    assert groups[0].status == GroupStatus.OK


def test_a_stopped_consumer_goes_stall_then_ok_once_it_drains() -> None:
    lag = ConsumerLag(window=3)
    statuses = []
    for step in range(4):  # nothing acknowledged while the backlog grows
        samples, _ = consumer_samples(_jsz(_consumer(pending=10 + step, floor=50)))
        statuses.append(lag.rows(samples, {}, 1000.0 + step)[1][0].status)
    assert statuses[0] == GroupStatus.OK
    assert statuses[-1] == GroupStatus.ERR
    for step, floor in enumerate((55, 60, 66)):  # it resumes and drains
        pending = 66 - floor
        samples, _ = consumer_samples(_jsz(_consumer(pending=pending, floor=floor)))
        status = lag.rows(samples, {}, 1010.0 + step)[1][0]
    assert status.status == GroupStatus.OK
    assert status.lag == 0


def test_a_consumer_made_again_starts_a_new_window_and_a_deleted_one_is_forgotten() -> None:
    lag = ConsumerLag(window=3)
    for at, floor in ((1.0, 40), (2.0, 41)):
        lag.rows(consumer_samples(_jsz(_consumer(pending=3, floor=floor)))[0], {}, at)
    lag.rows(consumer_samples(_jsz(_consumer(pending=3, floor=1)))[0], {}, 3.0)
    assert len(lag.windows[("$G", "SHIPMENTS", "tracking")].entries) == 1
    rows, _ = lag.rows(consumer_samples(_jsz())[0], {}, 4.0)
    assert rows == []
    assert lag.windows == {}


def test_a_malformed_consumer_or_stream_is_skipped_with_its_reason_and_the_others_kept(
        ) -> None:
    jsz = {"account_details": [
        {"name": "$G", "stream_detail": [
            {"name": "GOOD", "state": {"last_seq": 5}, "consumer_detail": [
                _consumer("neg", pending=-1), {"name": "nofloor", "num_pending": 1,
                                               "num_ack_pending": 0},
                "text", _consumer("fine", pending=2, floor=3)]},
            {"name": "BAD", "state": "gone"}, 7]},
        "not an account"]}
    samples, problems = consumer_samples(jsz)
    assert [s.name for s in samples] == ["fine"]
    assert len(problems) == 6
    assert any("neg" in p and "-1" in p for p in problems)
    with pytest.raises(MonitoringError):
        consumer_samples(["not", "an", "object"])


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-02T22:47:15.446481242Z", 1796251635.446481242),
    ("2026-12-02T22:47:15Z", 1796251635.0),
    ("2026-12-02T23:47:15.5+01:00", 1796251635.5),
    ("yesterday", None), ("", None), (None, None), (7, None),
])
def test_parse_time_reads_nats_times_to_the_nanosecond(text: object, expected: float | None
                                                       ) -> None:
    parsed = parse_time(text)
    if expected is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(expected, abs=1e-6)
