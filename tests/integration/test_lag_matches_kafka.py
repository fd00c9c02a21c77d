"""The offsets the tests wait on, read with aiokafka, equal what Kafka's ConsumerGroupCommand
reports (the collector's own lag is checked against it in test_lag.py)."""

from __future__ import annotations

from aiokafka import TopicPartition

from base.settings import Settings
from tests.integration.conftest import create_topic
from tests.integration.kafka_tools import (
    commit_offsets,
    describe_group,
    produce_to_partitions,
    read_group_lag,
)


async def test_group_lag_equals_consumer_group_command_for_every_partition(
        kafka_bootstrap: str, unique_name: str, settings: Settings) -> None:
    topic = await create_topic(kafka_bootstrap, unique_name, partitions=4)
    group = f"g-{unique_name}"
    await produce_to_partitions(kafka_bootstrap, topic, {0: 10, 1: 7, 2: 4, 3: 1})
    tps = [TopicPartition(topic, p) for p in range(4)]
    await commit_offsets(kafka_bootstrap, group, dict(zip(tps, [3, 7, 0, 1], strict=True)))
    await produce_to_partitions(kafka_bootstrap, topic, {0: 5, 3: 2})

    ours = await read_group_lag(kafka_bootstrap, group)
    reference = describe_group(settings, kafka_bootstrap, group)

    assert [(r.topic, r.partition, r.current_offset, r.log_end_offset, r.lag) for r in reference] \
        == [(p.topic, p.partition, p.committed, p.end, p.lag) for p in ours]
    # and both match what this test produced and committed
    assert [p.lag for p in ours] == [12, 0, 4, 2]
    assert [p.end for p in ours] == [15, 7, 4, 3]


async def test_group_lag_of_unknown_group_is_empty(kafka_bootstrap: str, unique_name: str) -> None:
    assert await read_group_lag(kafka_bootstrap, f"absent-{unique_name}") == []
