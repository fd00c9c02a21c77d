"""Read a consumer group's committed offsets and the log-end offsets, and compute lag."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


@dataclass(frozen=True, order=True)
class PartitionLag:
    """One partition of one group: committed offset, log-end offset and the lag between them."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int | None

    @property
    def lag(self) -> int | None:
        """Messages not yet consumed, as ConsumerGroupCommand's LAG column computes it."""
        return compute_lag(self.committed, self.end)


def compute_lag(committed: int | None, end: int | None) -> int | None:
    """Log-end offset minus committed offset; None ('-') when either is unknown."""
    if committed is None or committed < 0 or end is None:
        return None
    return end - committed


async def read_group_lag(bootstrap: str, group: str, *, timeout_s: float = 10.0
                         ) -> list[PartitionLag]:
    """Committed offsets of group and the log-end offsets of those partitions, per partition."""
    timeout_ms = int(timeout_s * 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        committed = await asyncio.wait_for(admin.list_consumer_group_offsets(group), timeout_s)
    finally:
        await admin.close()
    partitions = sorted(committed, key=lambda tp: (tp.topic, tp.partition))
    if not partitions:
        return []
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await asyncio.wait_for(
            consumer.end_offsets(partitions), timeout_s)
    finally:
        await consumer.stop()
    return [PartitionLag(group, tp.topic, tp.partition,
                         committed[tp].offset if committed[tp].offset >= 0 else None,
                         ends.get(tp))
            for tp in partitions]
