"""Supervision and isolation: a failing component is down with its reason and started again;
one record a handler cannot take costs that record only; a full store costs none."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from collectors.ingest.consuming import handle_isolated
from collectors.ingest.pipeline import Pipeline
from collectors.supervise import Health, supervise
from store.contract import StoreUnavailable
from store.vocabulary import ComponentState, FlowRules
from tests.store_writer import open_writable


def _record(offset: int) -> ConsumerRecord:
    return ConsumerRecord("t", 0, offset, 0, 0, None, b"v", None, 0, 1, [])


async def test_a_failing_component_is_down_with_its_reason_then_started_again() -> None:
    health, counters, stopping = Health(), Counter[str](), asyncio.Event()
    runs = 0
    seen_down = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("boom")
        health.ok("tap")
        await stopping.wait()

    async def watch() -> None:
        while health.components.get("tap") is None or health.components["tap"].state != "down":
            await asyncio.sleep(0.01)
        assert "RuntimeError: boom" in (health.components["tap"].reason or "")
        assert health.status == ComponentState.DOWN
        seen_down.set()

    watcher = asyncio.create_task(watch())
    task = asyncio.create_task(supervise("tap", flaky, health=health, counters=counters,
                                         stopping=stopping, max_backoff_s=0.05))
    await asyncio.wait_for(seen_down.wait(), 5)
    async with asyncio.timeout(5):
        while health.components["tap"].state != ComponentState.OK:
            await asyncio.sleep(0.01)
    assert health.status == ComponentState.OK
    assert health.components["tap"].restarts == 1
    assert counters == Counter({"tap_failures": 1, "tap_restarts": 1})
    stopping.set()
    await asyncio.wait_for(task, 5)
    await watcher


async def test_a_component_that_ends_by_itself_is_down_too(
        caplog: pytest.LogCaptureFixture) -> None:
    health, counters, stopping = Health(), Counter[str](), asyncio.Event()
    states: list[tuple[ComponentState, str | None]] = []

    async def ends() -> None:
        if "x" in health.components and counters["x_failures"]:
            states.append((health.components["x"].state, health.components["x"].reason))
            stopping.set()

    await asyncio.wait_for(supervise("x", ends, health=health, counters=counters,
                                     stopping=stopping, max_backoff_s=0.01), 5)
    assert counters["x_failures"] == 1
    assert states == [(ComponentState.STARTING, "restart 1")]
    assert "x ended by itself" in caplog.text


def test_health_is_its_worst_component() -> None:
    health = Health()
    health.register("a")
    assert health.status == ComponentState.OK  # starting counts as ok
    health.degraded("a", "broker away")
    assert health.snapshot()["status"] == "degraded"
    health.down("b", "x" * 1000)
    assert health.status == ComponentState.DOWN
    assert len(health.components["b"].reason or "") == 300


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(open_writable(tmp_path / "s.db", FlowRules((), (), (), 60)).writer)


async def test_one_record_the_handler_cannot_take_is_skipped_and_counted(
        pipeline: Pipeline) -> None:
    handled: list[int] = []

    async def handle(batch: dict) -> None:  # type: ignore[type-arg]
        for records in batch.values():
            if any(r.offset == 2 for r in records):
                raise ValueError("poison")
        handled.extend(r.offset for records in batch.values() for r in records)

    tp = TopicPartition("t", 0)
    await handle_isolated({tp: [_record(i) for i in range(5)]}, handle, name="tap",
                          pipeline=pipeline)
    assert handled == [0, 1, 3, 4]
    assert pipeline.counters["tap_skipped_records"] == 1


async def test_a_store_that_cannot_write_skips_nothing(pipeline: Pipeline) -> None:
    async def handle(batch: dict) -> None:  # type: ignore[type-arg]
        raise StoreUnavailable("disk full")

    with pytest.raises(StoreUnavailable):
        await handle_isolated({TopicPartition("t", 0): [_record(0), _record(1)]}, handle,
                              name="tap", pipeline=pipeline)
    assert pipeline.counters["tap_skipped_records"] == 0


async def test_counters_the_store_cannot_take_are_kept_for_the_next_flush(
        pipeline: Pipeline) -> None:
    pipeline.count("x", 3)
    pipeline.store.db.execute("PRAGMA query_only = 1")  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable):
        await pipeline.flush_counters()
    pipeline.count("x", 1)
    pipeline.store.db.execute("PRAGMA query_only = 0")  # type: ignore[attr-defined]
    await pipeline.flush_counters()
    assert pipeline.store.counters() == {"x": 4}
