import random

import pytest

from store.histogram import Histogram, bucket_of, bucket_upper_ms


def test_percentiles_are_within_one_bucket_of_the_exact_value() -> None:
    rng = random.Random(3)
    values = sorted(rng.lognormvariate(2, 1.2) for _ in range(5000))
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    for q in (50, 95, 99):
        exact = values[int(q / 100 * len(values)) - 1]
        estimate = histogram.percentile(q)
        assert estimate is not None
        assert exact <= estimate <= exact * 2 ** 0.25 * 1.001


def test_merged_histograms_equal_one_histogram_of_all_values() -> None:
    left, right, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 200):
        (left if i % 3 else right).add(i * 0.7)
        both.add(i * 0.7)
    assert Histogram.merged([left, right]).counts == both.counts
    assert Histogram.from_json(both.to_json()).counts == both.counts


def test_empty_histogram_has_no_percentile() -> None:
    assert Histogram().percentile(95) is None
    assert Histogram.from_json(None).total == 0


@pytest.mark.parametrize("value", [0.0, 0.0004, 0.5, 1.0, 250.0, 3_600_000.0])
def test_value_lies_in_its_bucket(value: float) -> None:
    index = bucket_of(value)
    assert value <= bucket_upper_ms(index) * 1.000001
    if index > 1:
        assert value > bucket_upper_ms(index - 1)
