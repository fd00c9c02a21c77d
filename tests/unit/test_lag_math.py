import pytest

from collectors.lag.offsets import compute_lag


@pytest.mark.parametrize(("committed", "end", "lag"), [
    (3, 15, 12), (7, 7, 0), (0, 4, 4), (None, 4, None), (-1, 4, None), (5, None, None),
    (9, 7, -2),
])
def test_compute_lag_follows_consumer_group_command(committed: int | None, end: int | None,
                                                    lag: int | None) -> None:
    assert compute_lag(committed, end) == lag
