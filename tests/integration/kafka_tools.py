"""Run Kafka's own command-line tools and read their output, as a reference for our figures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from base.settings import Settings
from collectors.lag.offsets import compute_lag
from flowscope.infra import kafka

CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


@dataclass(frozen=True)
class DescribedPartition:
    """One row of `ConsumerGroupCommand --describe`; None where it prints '-'."""

    topic: str
    partition: int
    current_offset: int | None
    log_end_offset: int | None
    lag: int | None


def _number(cell: str) -> int | None:
    return None if cell == "-" else int(cell)


def parse_group_describe(output: str) -> list[DescribedPartition]:
    """Rows of the table ConsumerGroupCommand prints, whatever the column widths."""
    rows: list[DescribedPartition] = []
    header: list[str] | None = None
    for line in output.splitlines():
        cells = line.split()
        if cells[:2] == ["GROUP", "TOPIC"]:
            header = cells
            continue
        if header is None or len(cells) < len(header):
            continue
        row = dict(zip(header, cells, strict=False))
        rows.append(DescribedPartition(
            row["TOPIC"], int(row["PARTITION"]), _number(row["CURRENT-OFFSET"]),
            _number(row["LOG-END-OFFSET"]), _number(row["LAG"])))
    return sorted(rows, key=lambda r: (r.topic, r.partition))


def describe_group(settings: Settings, bootstrap: str, group: str) -> list[DescribedPartition]:
    """What Kafka's ConsumerGroupCommand reports for group, per partition."""
    done = kafka.run_tool(settings, CONSUMER_GROUP_COMMAND, "--bootstrap-server", bootstrap,
                          "--describe", "--group", group)
    assert done.returncode == 0, f"ConsumerGroupCommand failed: {done.stderr}"
    return parse_group_describe(done.stdout)


async def produce_to_partitions(bootstrap: str, topic: str, per_partition: dict[int, int]
                                ) -> None:
    """Write count small messages to each given partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition, count in per_partition.items():
            for i in range(count):
                await producer.send(topic, f"m{i}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def commit_offsets(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit offsets for group, as a consumer of that group would, without consuming."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


@dataclass(frozen=True, order=True)
class PartitionLag:
    """One partition of one group as the broker has it now (tests wait on these)."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int | None

    @property
    def lag(self) -> int | None:
        """Messages not yet consumed, as ConsumerGroupCommand's LAG column computes it."""
        return compute_lag(self.committed, self.end)


async def read_group_lag(bootstrap: str, group: str, *, timeout_s: float = 10.0
                         ) -> list[PartitionLag]:
    """Committed offsets of group and the log-end offsets of those partitions, per partition:
    a light read for tests that wait on a group (the collector's LagPoller keeps history)."""
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
