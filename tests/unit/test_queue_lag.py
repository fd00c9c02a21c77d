"""Queue backlog from the management API's answers: the figures, the status rules and what a
malformed answer costs (one queue, never the poll)."""

from __future__ import annotations

import pytest

from collectors.lag.queues import ManagementError, QueueLag, QueueSample, queue_samples
from store.vocabulary import RABBITMQ, GroupStatus, PartitionStatus


def _queue(name: str = "jobs", *, ready: int = 0, unacked: int = 0, consumers: int = 1,
           ack: int = 0, head: float | None = None, vhost: str = "/") -> dict[str, object]:
    queue: dict[str, object] = {"name": name, "vhost": vhost, "messages_ready": ready,
                                "messages_unacknowledged": unacked, "consumers": consumers,
                                "message_stats": {"ack": ack}}
    if head is not None:
        queue["head_message_timestamp"] = head
    return queue


def _sample(**kwargs: object) -> QueueSample:
    samples, problems = queue_samples([_queue(**kwargs)], [])  # type: ignore[arg-type]
    assert problems == []
    return samples[0]


def test_a_queue_is_fed_by_its_first_bound_exchange_not_the_default_one() -> None:
    bindings = [{"source": "", "vhost": "/", "destination": "jobs", "destination_type": "queue"},
                {"source": "work", "vhost": "/", "destination": "jobs",
                 "destination_type": "queue"},
                {"source": "alpha", "vhost": "/", "destination": "jobs",
                 "destination_type": "queue"},
                {"source": "work", "vhost": "/", "destination": "x",
                 "destination_type": "exchange"}]
    samples, _ = queue_samples([_queue("jobs"), _queue("alone")], bindings)
    assert [(s.name, s.exchange) for s in samples] == [("jobs", "alpha"), ("alone", "alone")]


def test_a_malformed_queue_is_skipped_with_its_reason_and_the_others_kept() -> None:
    bad = [_queue("neg", ready=-1), {"vhost": "/"}, "text", _queue("odd", ack="many"),  # type: ignore[arg-type]
           _queue("fine", ready=3)]
    samples, problems = queue_samples(bad, [{"source": None}, 7])
    assert [s.name for s in samples] == ["fine"]
    assert len(problems) == 4
    assert any("neg" in p and "-1" in p for p in problems)
    with pytest.raises(ManagementError):
        queue_samples({"error": "not_authorised"}, [])


def test_a_queue_without_statistics_yet_waits_for_the_next_poll() -> None:
    fresh = {"name": "new", "vhost": "/", "consumers": 2}  # just declared: no figures yet
    samples, problems = queue_samples([fresh, _queue("jobs", ready=1)], [])
    assert [s.name for s in samples] == ["jobs"]
    assert problems == []


def test_lag_is_ready_plus_unacknowledged_and_seconds_the_age_of_the_head() -> None:
    lag = QueueLag()
    rows, groups = lag.rows([_sample(ready=4, unacked=2, head=1000.0)], now_s=1012.5)
    row = rows[0]
    assert (row.system, row.group, row.topic, row.partition, row.committed, row.end) == \
        (RABBITMQ, "jobs", "jobs", None, None, None)
    assert (row.lag, row.lag_seconds) == (6, 12.5)
    assert (row.ready, row.unacknowledged, row.consumers) == (4, 2, 1)
    assert groups[0].lag == 6
    assert groups[0].system == RABBITMQ
    # Nothing ready: nothing waits (what is unacknowledged is being processed).
    rows, _ = lag.rows([_sample(ready=0, unacked=2, ack=5)], now_s=1013)
    assert rows[0].lag_seconds == 0.0
    # A producer without the timestamp property: the age is not known.
    rows, _ = QueueLag().rows([_sample(ready=3)], now_s=1013)
    assert rows[0].lag_seconds is None


def test_a_backlog_without_consumers_is_stop_and_the_queue_err() -> None:
    rows, groups = QueueLag().rows([_sample(ready=5, consumers=0)], now_s=10)
    assert rows[0].status == PartitionStatus.STOP
    assert groups[0].status == GroupStatus.ERR


def test_consumers_that_acknowledge_nothing_stall_then_stop_and_a_drain_is_ok() -> None:
    lag = QueueLag(window=3)
    statuses = [lag.rows([_sample(ready=5 + i, ack=100)], now_s=float(i))[0][0].status
                for i in range(5)]
    assert statuses[0] == PartitionStatus.OK  # one poll says nothing yet
    assert statuses[1] == PartitionStatus.STALL
    assert statuses[-1] == PartitionStatus.STOP
    rows, groups = lag.rows([_sample(ready=0, ack=110)], now_s=5.0)
    assert (rows[0].status, groups[0].status, groups[0].catch_up_s) == \
        (PartitionStatus.OK, GroupStatus.OK, 0.0)


def test_a_growing_backlog_while_consumers_ack_is_warn_and_a_shrinking_one_drains() -> None:
    lag = QueueLag(window=4)
    for i in range(4):
        rows, groups = lag.rows([_sample(ready=10 * (i + 1), ack=5 * i)], now_s=float(i))
    assert rows[0].status == PartitionStatus.WARN
    assert groups[0].status == GroupStatus.WARN
    for i in range(4, 7):  # lag 30, 20, 10 while 30 a second are acknowledged
        rows, groups = lag.rows([_sample(ready=40 - 10 * (i - 3), ack=30 * i)], now_s=float(i))
    assert rows[0].status == PartitionStatus.OK
    # The window holds the polls at 3..6 s: acknowledged 15 -> 180, lag 40 -> 10.
    assert groups[0].consume_rate == pytest.approx((180 - 15) / 3)
    assert groups[0].lag_rate == pytest.approx((10 - 40) / 3)
    assert groups[0].catch_up_s == pytest.approx(10 / 10)


def test_a_counter_that_goes_down_starts_the_window_again() -> None:
    lag = QueueLag(window=3)
    lag.rows([_sample(ready=5, ack=500)], now_s=0)
    rows, _ = lag.rows([_sample(ready=5, ack=3)], now_s=1)  # the broker restarted
    assert rows[0].status == PartitionStatus.OK  # not REWIND: one poll of a new window
    assert len(lag.windows[("/", "jobs")].entries) == 1


def test_queues_of_other_virtual_hosts_are_named_with_it_and_gone_ones_forgotten() -> None:
    lag = QueueLag()
    rows, _ = lag.rows([_sample(vhost="shop"), _sample()], now_s=0)
    assert [r.group for r in rows] == ["shop/jobs", "jobs"]
    lag.rows([_sample()], now_s=1)
    assert set(lag.windows) == {("/", "jobs")}
