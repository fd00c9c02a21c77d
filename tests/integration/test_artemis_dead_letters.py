"""Artemis' dead letters against the real broker: a message a consumer rejects, and one whose
deliveries all fail, land in DLQ.<queue>; the component finds them through Jolokia and records
each once, with its correlation ID and trace ID, as a dead letter of its flow; polls after that
add nothing, and a restarted component writes them again harmlessly (the store keeps one).
A management URL with the wrong password degrades the component, and its reason does not show
the password."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from proton import Delivery, Message
from proton.utils import BlockingConnection
from yarl import URL

from base.settings import CollectorSettings
from collectors.ingest.artemis_dead_letters import COMPONENT, run_dead_letters
from collectors.ingest.pipeline import Pipeline
from collectors.supervise import Health
from store.factory import flow_rules
from store.records import MessageRecord
from store.vocabulary import ComponentState
from tests.integration.conftest import ArtemisBroker
from tests.store_writer import open_writable

pytestmark = pytest.mark.timeout(180)
MAX_DELIVERY_ATTEMPTS = 4  # the broker's address-settings for `#`
REJECTED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
EXHAUSTED_TRACE = "0af7651916cd43dd8448eb211c80319c"


class CountingHealth(Health):
    """Health that counts the polls that went well."""

    def __init__(self) -> None:
        super().__init__()
        self.good_polls = 0

    def ok(self, name: str) -> None:
        self.good_polls += 1
        super().ok(name)


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    """A pipeline over a new SQLite store with the default flow rules (DLQ.* dead-letters)."""
    rules = flow_rules(CollectorSettings(store=str(tmp_path / "store.db")))
    return Pipeline(open_writable(tmp_path / "store.db", rules).writer)


def _recording(pipeline: Pipeline) -> list[MessageRecord]:
    """Every record the pipeline is given to write, whether the store keeps it or not."""
    written: list[MessageRecord] = []
    write = pipeline.write_messages

    async def recording(records: list[MessageRecord]) -> None:
        written.extend(records)
        await write(records)

    pipeline.write_messages = recording  # type: ignore[method-assign]
    return written


def _dead_letter_two(amqp_url: str, queue: str, name: str) -> None:
    """Send two messages to queue: reject the first, fail every delivery of the second."""
    connection = BlockingConnection(amqp_url, timeout=10, allowed_mechs="PLAIN")
    try:
        sender = connection.create_sender(queue)
        for flow, trace in (("rejected", REJECTED_TRACE), ("exhausted", EXHAUSTED_TRACE)):
            sender.send(Message(body=f'{{"flow": "{flow}"}}', durable=True, properties={
                "correlation-id": f"{name}-{flow}",
                "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}))
        receiver = connection.create_receiver(queue, credit=1)
        first = receiver.receive(timeout=10)
        assert first.properties["correlation-id"] == f"{name}-rejected"
        receiver.reject()  # straight to the dead-letter address
        for attempt in range(MAX_DELIVERY_ATTEMPTS):
            again = receiver.receive(timeout=15)  # the redelivery delay grows: 0.5 s to 2 s
            assert (again.properties["correlation-id"], again.delivery_count) == \
                (f"{name}-exhausted", attempt)
            # MODIFIED with delivery-failed: counted by the broker, delivered again
            delivery = receiver.fetcher.unsettled.popleft()  # type: ignore[union-attr]
            delivery.local.failed = True
            delivery.update(Delivery.MODIFIED)
            delivery.settle()
        # a send returns once the broker took it, after every frame before it
        sender.send(Message(body="flush"))
    finally:
        with contextlib.suppress(Exception):
            connection.close()


@contextlib.asynccontextmanager
async def _running(management_url: str, pipeline: Pipeline, health: Health
                   ) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    task = asyncio.create_task(run_dead_letters(management_url, pipeline, health, stopping,
                                                interval_s=0.2))
    try:
        yield
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


async def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.05)


async def test_rejected_and_exhausted_messages_are_recorded_once_as_dead_letters(
        artemis_broker: ArtemisBroker, pipeline: Pipeline, unique_name: str) -> None:
    queue = f"dl.{unique_name}"
    topic = f"DLQ.{queue}"
    await asyncio.to_thread(_dead_letter_two, artemis_broker.amqp_url, queue, unique_name)
    written = _recording(pipeline)
    health = CountingHealth()

    def ours() -> list[MessageRecord]:
        return [r for r in written if r.topic == topic]

    async with _running(artemis_broker.management_url, pipeline, health):
        await _eventually(lambda: len(ours()) == 2, f"two dead letters written on {topic}")
        polls = health.good_polls
        await _eventually(lambda: health.good_polls >= polls + 3, "three more polls")
        assert health.components[COMPONENT].state == ComponentState.OK
    records = {r.correlation_id: r for r in ours()}
    assert len(ours()) == 2  # later polls wrote nothing more
    rejected, exhausted = records[f"{unique_name}-rejected"], records[f"{unique_name}-exhausted"]
    assert (rejected.trace_id, exhausted.trace_id) == (REJECTED_TRACE, EXHAUSTED_TRACE)
    assert rejected.offset != exhausted.offset
    assert pipeline.counters[f"{COMPONENT}_dead_letters"] >= 2
    assert pipeline.counters[f"{COMPONENT}_failures"] == 0

    letters = [d for d in pipeline.store.dead_letters(0) if d.topic == topic]
    assert sorted((d.correlation_id, d.flow_id) for d in letters) == [
        (f"{unique_name}-exhausted", f"{unique_name}-exhausted"),
        (f"{unique_name}-rejected", f"{unique_name}-rejected")]
    rejected_letter = next(d for d in letters if d.correlation_id == rejected.correlation_id)
    headers = dict(rejected_letter.headers)
    assert (headers["artemis-original-queue"], headers["artemis-original-address"]) == \
        (queue, queue)
    assert headers["dlq-reason"].startswith("max-delivery-attempts reached or rejected")
    assert headers["traceparent"] == f"00-{REJECTED_TRACE}-00f067aa0ba902b7-01"
    assert pipeline.store.find_flows(f"{topic}.0.{rejected.offset}") == \
        [f"{unique_name}-rejected"]
    found = pipeline.store.flow(f"{unique_name}-rejected", time.time_ns())
    assert found is not None
    flow, _ = found
    assert (str(flow.status), flow.trace_ids) == ("dead-lettered", [REJECTED_TRACE])

    # A component started again remembers nothing: it writes both again, the store keeps one.
    again = CountingHealth()
    async with _running(artemis_broker.management_url, pipeline, again):
        await _eventually(lambda: len(ours()) == 4, "the dead letters written again")
    assert len([d for d in pipeline.store.dead_letters(0) if d.topic == topic]) == 2


async def test_wrong_credentials_degrade_the_component_without_showing_the_password(
        artemis_broker: ArtemisBroker, pipeline: Pipeline) -> None:
    password = f"wrong-{uuid.uuid4().hex}"
    wrong = str(URL(artemis_broker.management_url).with_password(password))
    health = Health()
    async with _running(wrong, pipeline, health):
        await _eventually(lambda: COMPONENT in health.components, "a poll")
    component = health.components[COMPONENT]
    assert component.state == ComponentState.DEGRADED
    assert "refused the credentials (HTTP 403)" in (component.reason or "")
    assert password not in (component.reason or "")
    assert pipeline.counters[f"{COMPONENT}_failures"] >= 1
    assert pipeline.counters[f"{COMPONENT}_dead_letters"] == 0
