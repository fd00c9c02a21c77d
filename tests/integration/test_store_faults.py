"""The store's disk fills up under the collector: it says so on /health and in its log,
answers OTLP senders 503 (which they retry), commits nothing it could not store, and once space
returns stores everything that arrived meanwhile, exactly once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from collectors.ingest.kafka_spans import group_for
from flowscope.infra.jaeger import JaegerStatus
from tests.integration.collector_process import Collector, post_otlp
from tests.otlp_factory import new_span_id, new_trace_id, request, span

pytestmark = pytest.mark.jaeger
DISK_MB = 48


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of its own (tmpfs, DISK_MB), so that the store's disk can be filled
    without filling the machine's."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs for the store and needs root (CI runs as "
                    "root); run it as root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
                   check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def _fill(disk: Path) -> Path:
    """Fill the disk to its last byte; the file that did it."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(descriptor, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(descriptor)
    return filler


def _wait(predicate, what: str, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout_s}s (last: {last})")


def _batch(flow: str) -> bytes:
    trace, producer = new_trace_id(), new_span_id()
    attributes = {"messaging.system": "kafka", "messaging.destination.name": "disk-t",
                  "messaging.message.conversation_id": flow}
    return request({"disk-svc": [
        span(name="send disk-t", kind="producer", trace_id=trace, span_id=producer,
             attributes=attributes),
        span(name="process disk-t", kind="consumer", trace_id=trace, parent=producer,
             start_ms=5, attributes=attributes)]}).SerializeToString()


async def _send(bootstrap: str, topic: str, flows: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for flow in flows:
            await producer.send(topic, _batch(flow), partition=0)
        await producer.flush()
    finally:
        await producer.stop()


async def _committed(bootstrap: str, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await asyncio.wait_for(admin.list_consumer_group_offsets(group), 30)
    finally:
        await admin.close()
    found = offsets.get(TopicPartition(topic, 0))
    return found.offset if found is not None else 0


def test_a_full_disk_stops_ingest_without_losing_a_span_and_it_resumes_when_space_returns(
        small_disk: Path, kafka_bootstrap: str, jaeger_endpoints: JaegerStatus,
        tmp_path: Path) -> None:
    topic = f"spans-disk-{uuid.uuid4().hex[:8]}"
    collector = Collector.create(tmp_path / "home", kafka_bootstrap, jaeger_endpoints.otlp_http,
                                 jaeger_endpoints.query, topic)
    collector.env.update(FLOWSCOPE_STORE=str(small_disk / "flowscope.db"),
                         FLOWSCOPE_RETENTION_RAW="100000000")
    collector.start()
    try:
        before = [f"before-{i}" for i in range(20)]
        asyncio.run(_send(kafka_bootstrap, topic, before))
        collector.wait_for(lambda r: len(r["flows"]) == len(before), "flows", "--since",
                           "100000d", "--limit", "1000")
        _wait(lambda: asyncio.run(_committed(kafka_bootstrap, group_for(topic), topic))
              == len(before), "commit of the first batches")
        filler = _fill(small_disk)

        during = [f"during-{i}" for i in range(200)]
        asyncio.run(_send(kafka_bootstrap, topic, during))
        health = collector.wait_for_health(
            lambda h: h["components"]["spans_topic"]["state"] == "degraded", timeout_s=60)
        assert "store unavailable" in health["components"]["spans_topic"]["reason"]
        assert "full" in health["components"]["spans_topic"]["reason"]
        status, _, headers = post_otlp(collector.otlp_url, _batch("over-http"))
        assert status == 503
        assert headers.get("Retry-After") == "5"
        # Nothing past what was stored is committed while the disk is full.
        assert asyncio.run(_committed(kafka_bootstrap, group_for(topic), topic)) == len(before)

        filler.unlink()
        assert post_otlp(collector.otlp_url, _batch("over-http"))[0] == 200
        result = collector.wait_for(lambda r: len(r["flows"]) == len(before) + len(during) + 1,
                                    "flows", "--since", "100000d", "--limit", "1000",
                                    timeout_s=120)
        assert sorted(f["id"] for f in result["flows"]) == sorted([*before, *during,
                                                                  "over-http"])
        assert {f["hops"] for f in result["flows"]} == {1}
        collector.wait_for_health(lambda h: h["status"] == "ok", timeout_s=60)
        counters = collector.wait_for(
            lambda c: c["counters"].get("spans_topic_store_unavailable", 0) >= 1, "counters")
        assert counters["counters"]["rejected_bodies_unavailable"] >= 1  # type: ignore[index]
        assert "nothing committed" in "".join(collector.output)
    finally:
        assert collector.stop() == 0
