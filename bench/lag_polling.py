"""CPU cost of lag polling: every 1 s over 1,000 partitions.

Creates 10 topics of 100 partitions, a few messages in each partition, and consumer groups
(--groups, 1 by default) that commit on all of them, then runs the collector's LagPoller in
this process once a second and reports the CPU time it used per second of wall time (the share
of one core).

    .venv/bin/python bench/lag_polling.py [--seconds 30] [--topics 10] [--partitions 100]
                                          [--groups 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from base.settings import Settings
from bench.infra import running_infra
from collectors.lag.poller import LagPoller


async def prepare(bootstrap: str, topics: list[str], partitions: int, group_count: int
                  ) -> list[str]:
    """Topics with messages in every partition, and groups committed on all of them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=120_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for topic in topics:
            for p in range(partitions):
                for i in range(3):
                    await producer.send(topic, f"m{i}".encode(), partition=p)
        await producer.flush()
    finally:
        await producer.stop()
    groups = [f"bench-lag-{uuid.uuid4().hex[:6]}-{g}" for g in range(group_count)]
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    for n, group in enumerate(groups):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.commit(dict.fromkeys(tps, 1 + n))
        finally:
            await consumer.stop()
    return groups


async def measure(bootstrap: str, seconds: float) -> tuple[list[float], int]:
    poller = LagPoller(bootstrap, timeout_s=30)
    await poller.start()
    shares, rows = [], 0
    try:
        await poller.poll()  # warm-up: metadata, tables
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            wall, cpu = time.monotonic(), time.process_time()
            found, _ = await poller.poll()
            rows = len(found)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - wall)))
            shares.append((time.process_time() - cpu) / (time.monotonic() - wall))
    finally:
        await poller.stop()
    return shares, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--groups", type=int, default=1)
    args = parser.parse_args()
    prefix = f"bench-lag-{uuid.uuid4().hex[:6]}"
    topics = [f"{prefix}-{i}" for i in range(args.topics)]
    with running_infra(Settings.from_env(), with_jaeger=False) as (bootstrap, _):
        started = time.monotonic()
        asyncio.run(prepare(bootstrap, topics, args.partitions, args.groups))
        print(f"prepared {args.topics * args.partitions} partitions and {args.groups} groups in "
              f"{time.monotonic() - started:.0f}s", flush=True)
        shares, rows = asyncio.run(measure(bootstrap, args.seconds))
    print(f"lag polling every 1 s, {rows} group-partitions per poll (all groups of the "
          f"cluster): median {statistics.median(shares) * 100:.1f} % of one core, max "
          f"{max(shares) * 100:.1f} % over {len(shares)} polls (target < 5 %)")


if __name__ == "__main__":
    main()
