import pytest

from collectors.flows.assembler import (
    COMPENSATED,
    COMPLETED,
    DEAD_LETTERED,
    FlowRules,
    bucket_start,
    flow_status,
)

RULES = FlowRules(completed=("*files.notified", "*orders.completed"),
                  dead_letter=("*.dlq", "*.DLT"), compensated=("*orders.cancelled",),
                  stuck_after_s=300)


@pytest.mark.parametrize(("topic", "flag"), [
    ("files.notified", COMPLETED), ("t1.orders.completed", COMPLETED),
    ("files.dlq", DEAD_LETTERED), ("payments.DLT", DEAD_LETTERED),
    ("orders.cancelled", COMPENSATED), ("orders.placed", 0), (None, 0),
])
def test_flag_of_topic_follows_patterns(topic: str | None, flag: int) -> None:
    assert RULES.flag_of(topic) == flag


def test_dead_letter_wins_over_completion_and_stuck_needs_silence() -> None:
    second = 1_000_000_000
    assert flow_status(DEAD_LETTERED | COMPLETED, 0, 0, 0, 300) == "dead-lettered"
    assert flow_status(COMPENSATED | COMPLETED, 0, 0, 0, 300) == "compensated"
    assert flow_status(0, 2, 0, 10 * second, 300) == "failed"
    assert flow_status(0, 0, 0, 299 * second, 300) == "in flight"
    assert flow_status(0, 0, 0, 301 * second, 300) == "stuck"


def test_bucket_start_floors_to_the_bucket() -> None:
    assert bucket_start(1_700_000_007_900_000_000, 10) == 1_700_000_000
