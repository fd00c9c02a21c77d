import pytest

from collectors.lag.poller import LagPoller, _PartitionState
from collectors.lag.status import Observation, PartitionWindow, evaluate, group_status, trend
from collectors.lag.timelag import EndOffsetTable, lag_seconds
from store.records import LagRow
from store.vocabulary import PartitionStatus


def _window(*points: tuple[float, int, int]) -> list[Observation]:
    return [Observation(t, c, e) for t, c, e in points]


def test_caught_up_partition_is_ok() -> None:
    assert evaluate(_window((0, 5, 9), (5, 9, 9)), 5, 5) == "OK"


def test_partition_whose_commits_stopped_longer_than_the_window_is_stop() -> None:
    window = _window((0, 10, 12), (5, 10, 15), (10, 10, 18))
    assert evaluate(window, last_move_s=0, now_s=10.5) == "STOP"


def test_recent_zero_lag_keeps_a_slow_partition_ok() -> None:
    window = _window((0, 10, 10), (5, 11, 14), (10, 14, 16))
    assert evaluate(window, last_move_s=10, now_s=10) == "OK"


def test_committed_offset_going_down_is_rewind() -> None:
    window = _window((0, 50, 60), (5, 20, 62), (10, 25, 64))
    assert evaluate(window, last_move_s=10, now_s=10) == "REWIND"


def test_same_committed_offset_in_a_fresh_window_is_stall() -> None:
    window = _window((0, 10, 12), (5, 10, 13), (10, 10, 14))
    assert evaluate(window, last_move_s=0, now_s=9) == "STALL"


def test_lag_that_never_decreases_is_warn() -> None:
    window = _window((0, 10, 12), (5, 12, 15), (10, 14, 19))
    assert evaluate(window, last_move_s=10, now_s=10) == "WARN"


def test_lag_that_shrinks_somewhere_is_ok() -> None:
    window = _window((0, 10, 20), (5, 18, 22), (10, 20, 30))
    assert evaluate(window, last_move_s=10, now_s=10) == "OK"


def test_window_tracks_when_the_committed_offset_last_moved() -> None:
    window = PartitionWindow(size=3)
    for t, committed, end in ((0, 1, 5), (5, 3, 8), (10, 3, 12), (15, 3, 16), (20, 3, 20)):
        window.add(Observation(t, committed, end))
    assert window.last_move_s == 5
    assert len(window.entries) == 3
    assert window.status(now_s=20) == "STOP"  # unmoved for 15 s, window spans 10 s


def test_window_needs_two_entries() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        PartitionWindow(size=1)


def test_group_status_is_its_worst_partition() -> None:
    assert group_status(["OK", "WARN", "OK"]) == ("WARN", "WARN")
    assert group_status(["OK", "STOP", "WARN"]) == ("ERR", "STOP")
    assert group_status(["REWIND"]) == ("ERR", "REWIND")
    assert group_status([]) == ("OK", None)


def test_trend_measures_consumption_and_the_change_of_lag() -> None:
    draining = trend(_window((0, 0, 100), (10, 60, 120)))
    assert draining is not None
    assert (draining.consume_rate, draining.lag_rate) == (6.0, -4.0)
    growing = trend(_window((0, 0, 10), (10, 5, 40)))
    assert growing is not None
    assert (growing.consume_rate, growing.lag_rate) == (0.5, 2.5)
    assert trend(_window((0, 0, 10))) is None


def test_group_estimates_time_to_catch_up_from_its_trend() -> None:
    poller = LagPoller("127.0.0.1:9", window=10)
    rows = []
    for group, points in (("draining", ((0, 0, 100), (10, 60, 120))),
                          ("growing", ((0, 0, 10), (10, 5, 40))),
                          ("caught-up", ((0, 0, 10), (10, 10, 10)))):
        window = PartitionWindow(10)
        for observation in _window(*points):
            window.add(observation)
        poller.state[(group, "t", 0)] = _PartitionState(window)
        last = window.entries[-1]
        rows.append(LagRow(group, "t", 0, last.committed, last.end, last.lag, None,
                           PartitionStatus.OK, 10.0))
    groups = {g.group: g for g in poller._groups(rows, 10.0)}
    draining = groups["draining"]
    assert (draining.consume_rate, draining.lag_rate) == (6.0, -4.0)
    assert draining.catch_up_s == pytest.approx(60 / 4)
    assert groups["growing"].catch_up_s is None
    assert groups["caught-up"].catch_up_s == 0.0


def test_time_lag_interpolates_between_log_end_points() -> None:
    table = EndOffsetTable()
    for end, at in ((100, 1000.0), (200, 1010.0), (300, 1020.0)):
        table.add(end, at)
    # Offset 150 was written halfway between t=1000 (end 100) and t=1010 (end 200).
    assert lag_seconds(table, 150, 300, now_s=1030.0) == pytest.approx(25.0)
    assert lag_seconds(table, 300, 300, now_s=1030.0) == 0.0
    assert lag_seconds(table, None, 300, now_s=1030.0) is None


def test_time_lag_keeps_growing_when_the_producer_goes_quiet() -> None:
    table = EndOffsetTable()
    table.add(100, 1000.0)
    table.add(200, 1010.0)
    for t in (1020.0, 1100.0, 1500.0):
        table.add(200, t)  # no new messages: the first sighting of 200 counts
        assert lag_seconds(table, 150, 200, now_s=t) == pytest.approx(t - 1005.0)


def test_time_lag_uses_the_message_time_when_the_table_cannot_tell() -> None:
    table = EndOffsetTable()
    table.add(500, 2000.0)
    assert lag_seconds(table, 120, 500, now_s=2010.0) is None
    assert lag_seconds(table, 120, 500, now_s=2010.0, message_time_s=1900.0) == 110.0


def test_table_is_bounded_and_resets_on_truncation() -> None:
    table = EndOffsetTable(max_points=3)
    for i in range(10):
        table.add(i * 10, float(i))
    assert [o for o, _ in table.points] == [70, 80, 90]
    table.add(5, 20.0)
    assert list(table.points) == [(5, 20.0)]
