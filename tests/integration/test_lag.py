"""Consumer lag from the collector against the real broker: equal to ConsumerGroupCommand,
WARN or ERR while a group is paused and back to OK once it drained, REWIND on a reset."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from base.settings import Settings
from flowscope.infra.jaeger import JaegerStatus
from tests.integration.collector_process import Collector
from tests.integration.conftest import create_topic
from tests.integration.kafka_tools import commit_offsets, describe_group, produce_to_partitions


@pytest.fixture(scope="module")
def lag_collector(kafka_bootstrap: str, jaeger_endpoints: JaegerStatus,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    collector = Collector.create(tmp_path_factory.mktemp("lag"), kafka_bootstrap,
                                 jaeger_endpoints.otlp_http, jaeger_endpoints.query,
                                 f"spans-lag-{uuid.uuid4().hex[:8]}")
    collector.env["FLOWSCOPE_LAG_INTERVAL"] = "1"
    collector.start()
    yield collector
    assert collector.stop() == 0




def _partitions(result: dict, group: str) -> list[tuple]:  # type: ignore[type-arg]
    return [(p["topic"], p["partition"], p["committed"], p["end"], p["lag"])
            for p in result["partitions"] if p["group"] == group]


async def test_inspect_lag_equals_consumer_group_command_for_every_partition(
        lag_collector: Collector, kafka_bootstrap: str, unique_name: str,
        settings: Settings) -> None:
    topic = await create_topic(kafka_bootstrap, unique_name, partitions=3)
    await produce_to_partitions(kafka_bootstrap, topic, {0: 10, 1: 20, 2: 30})
    commits = {"a": {0: 3, 1: 20, 2: 0}, "b": {0: 10, 1: 5}, "c": {2: 29}}
    for suffix, offsets in commits.items():
        await commit_offsets(kafka_bootstrap, f"{unique_name}-{suffix}",
                      {TopicPartition(topic, p): o for p, o in offsets.items()})
    for suffix in commits:
        group = f"{unique_name}-{suffix}"
        reference = [(r.topic, r.partition, r.current_offset, r.log_end_offset, r.lag)
                     for r in describe_group(settings, kafka_bootstrap, group)]
        assert reference
        result = await asyncio.to_thread(
            lag_collector.wait_for, lambda r, g=group, ref=reference: _partitions(r, g) == ref,
            "lag", "--group", group)
        assert _partitions(result, group) == reference
    assert {r[4] for r in reference} == {1}  # group c: 30 - 29


class SteadyTraffic:
    """A producer writing 5 messages a second and a consumer group that can be paused."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.consuming = asyncio.Event()
        self.consuming.set()
        self.producing_done = asyncio.Event()
        self.consuming_done = asyncio.Event()
        self.tasks: list[asyncio.Future[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self._produce()),
                      asyncio.ensure_future(self._consume())]

    async def stop(self) -> None:
        self.producing_done.set()
        self.consuming_done.set()
        self.consuming.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30)

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            while not self.producing_done.is_set():
                await producer.send_and_wait(self.topic, b"tick")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.producing_done.wait(), 0.2)
        finally:
            await producer.stop()

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap,
                                    group_id=self.group, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            while not self.consuming_done.is_set():
                await self.consuming.wait()
                if await consumer.getmany(timeout_ms=200):
                    await consumer.commit()
        finally:
            await consumer.stop()


async def test_paused_group_goes_warn_or_err_then_ok_once_drained(
        lag_collector: Collector, kafka_bootstrap: str, unique_name: str) -> None:
    topic = await create_topic(kafka_bootstrap, unique_name, partitions=1)
    group = f"{unique_name}-g"
    traffic = SteadyTraffic(kafka_bootstrap, topic, group)

    def group_of(result: dict) -> dict:  # type: ignore[type-arg]
        return next((g for g in result["groups"] if g["group"] == group), {})

    async def wait(predicate) -> dict:  # type: ignore[no-untyped-def,type-arg]
        return await asyncio.to_thread(lag_collector.wait_for,
                                       lambda r: bool(group_of(r)) and predicate(group_of(r)),
                                       "lag", "--group", group)

    traffic.start()
    try:
        await wait(lambda g: g["status"] == "OK" and g["lag"] <= 5)
        traffic.consuming.clear()
        behind = await wait(lambda g: g["status"] in ("WARN", "ERR") and g["lag"] > 10)
        first = group_of(behind)["lag_seconds"]
        later = await wait(lambda g: g["lag_seconds"] is not None and g["lag_seconds"] > first + 1)
        assert group_of(later)["lag"] > group_of(behind)["lag"]
        assert group_of(later)["catch_up_s"] is None
        traffic.producing_done.set()  # so that the group can drain completely
        traffic.consuming.set()
        drained = await wait(lambda g: g["status"] == "OK" and g["lag"] == 0)
        assert group_of(drained)["lag_seconds"] == 0
        assert [p["lag_seconds"] for p in drained["partitions"]] == [0]
    finally:
        await traffic.stop()


async def test_offsets_reset_backwards_show_rewind(
        lag_collector: Collector, kafka_bootstrap: str, unique_name: str) -> None:
    topic = await create_topic(kafka_bootstrap, unique_name, partitions=1)
    group = f"{unique_name}-g"
    tp = TopicPartition(topic, 0)
    await produce_to_partitions(kafka_bootstrap, topic, {0: 40})
    await commit_offsets(kafka_bootstrap, group, {tp: 30})
    await asyncio.to_thread(lag_collector.wait_for,
                            lambda r: _partitions(r, group) == [(topic, 0, 30, 40, 10)],
                            "lag", "--group", group)
    await commit_offsets(kafka_bootstrap, group, {tp: 5})
    result = await asyncio.to_thread(
        lag_collector.wait_for,
        lambda r: [p["status"] for p in r["partitions"] if p["group"] == group] == ["REWIND"],
        "lag", "--group", group)
    assert [(g["status"], g["worst_partition"]) for g in result["groups"]] == [("ERR", "REWIND")]
    assert _partitions(result, group) == [(topic, 0, 5, 40, 35)]


def test_inspect_lag_prints_a_table_for_people(lag_collector: Collector, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "flowscope", "inspect", "lag"],
                          env=lag_collector.env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == ["GROUP", "TOPIC", "PARTITION", "COMMITTED",
                                                   "END", "LAG", "LAG_S", "STATUS"]


async def test_lag_is_served_in_prometheus_format(
        lag_collector: Collector, kafka_bootstrap: str, unique_name: str) -> None:
    topic = await create_topic(kafka_bootstrap, unique_name, partitions=1)
    group = f"{unique_name}-g"
    await produce_to_partitions(kafka_bootstrap, topic, {0: 12})
    await commit_offsets(kafka_bootstrap, group, {TopicPartition(topic, 0): 4})
    await asyncio.to_thread(lag_collector.wait_for,
                            lambda r: _partitions(r, group) == [(topic, 0, 4, 12, 8)],
                            "lag", "--group", group)

    def scrape() -> str:
        with urllib.request.urlopen(f"{lag_collector.otlp_url}/metrics", timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain")
            return answer.read().decode()

    lines = (await asyncio.to_thread(scrape)).splitlines()
    labels = f'group="{group}",topic="{topic}",partition="0"'
    assert f"flowscope_consumergroup_lag{{{labels}}} 8" in lines
    assert f"flowscope_consumergroup_committed_offset{{{labels}}} 4" in lines
    assert f"flowscope_partition_log_end_offset{{{labels}}} 12" in lines
