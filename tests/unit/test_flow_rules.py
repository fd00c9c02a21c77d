import pytest

from store.vocabulary import FlowFlag, FlowRules, FlowStatus, bucket_start

COMPLETED, COMPENSATED, DEAD_LETTERED = (FlowFlag.COMPLETED, FlowFlag.COMPENSATED,
                                         FlowFlag.DEAD_LETTERED)

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
    assert RULES.status(DEAD_LETTERED | COMPLETED, 0, 0, 0) == FlowStatus.DEAD_LETTERED
    assert RULES.status(COMPENSATED | COMPLETED, 0, 0, 0) == FlowStatus.COMPENSATED
    assert RULES.status(0, 2, 0, 10 * second) == FlowStatus.FAILED
    assert RULES.status(0, 0, 0, 299 * second) == FlowStatus.IN_FLIGHT
    assert RULES.status(0, 0, 0, 301 * second) == FlowStatus.STUCK
    assert FlowStatus.DEAD_LETTERED == "dead-lettered"  # the text the store and JSON carry


def test_bucket_start_floors_to_the_bucket() -> None:
    assert bucket_start(1_700_000_007_900_000_000, 10) == 1_700_000_000
