"""The demo services' producer replacement, resend-or-503 and redelivery rules, with fakes in
place of Kafka."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.structs import RecordMetadata
from opentelemetry import trace

from demo_services import web as http
from demo_services.config import DemoConfig
from demo_services.producer import ReplaceableProducer, SendFailed, fatal_reason
from demo_services.runtime import Incoming, Service, Worker, stop_consumer

pytestmark = pytest.mark.timeout(10)
TOPIC = "t"


@pytest.mark.parametrize(("error", "queued"), [
    (OutOfOrderSequenceNumber(), True), (UnknownProducerId(), True), (ProducerFenced(), True),
    (ProducerClosed(), False), (KafkaError("Unexpected error during batch delivery"), False),
    (LeaderNotAvailableError(), True), (NotLeaderForPartitionError(), True),
    (KafkaTimeoutError(), True),
])
def test_fatal_reason_names_errors_that_leave_the_producer_unusable(
        error: KafkaError, queued: bool) -> None:
    reason = fatal_reason(error, queued=queued)
    assert reason is not None
    assert type(error).__name__ in reason


@pytest.mark.parametrize("error", [KafkaTimeoutError(), NotLeaderForPartitionError(),
                                   ValueError("not Kafka's")])
def test_fatal_reason_spares_errors_raised_before_the_record_was_queued(
        error: Exception) -> None:
    assert fatal_reason(error, queued=False) is None


@dataclass
class FakeProducer:
    """Answers each send from a script of outcomes (an exception, or None for success)."""

    outcomes: list[BaseException | None] = field(default_factory=list)
    enqueue_error: KafkaError | None = None
    start_error: Exception | None = None
    hold: asyncio.Future[None] | None = None
    sent: int = 0
    stopped: bool = False
    pending: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None
                   ) -> asyncio.Future[RecordMetadata]:
        if self.enqueue_error is not None:
            raise self.enqueue_error
        self.sent += 1
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if self.hold is None:
            settle(future, outcome)
        else:
            self.pending.append(future)
            self.hold.add_done_callback(lambda _: settle(future, outcome))
        return future

    async def stop(self) -> None:
        # like aiokafka: flush what it holds before closing
        if self.pending:
            await asyncio.wait(self.pending)
        self.stopped = True


def settle(future: asyncio.Future[RecordMetadata], outcome: BaseException | None) -> None:
    if outcome is None:
        future.set_result(RecordMetadata(TOPIC, 0, None, 7, 0, 0, 0))
    else:
        future.set_exception(outcome)


def replaceable(*producers: FakeProducer) -> ReplaceableProducer:
    queue = list(producers)
    return ReplaceableProducer(lambda: queue.pop(0), name="svc",  # type: ignore[arg-type,return-value]
                               retry_interval_s=0)


async def send(producer: ReplaceableProducer) -> RecordMetadata:
    return await producer.send_and_wait(TOPIC, b"v", key=b"k", headers=[])


async def test_concurrent_fatal_failures_replace_the_producer_once(
        caplog: pytest.LogCaptureFixture) -> None:
    hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    broken = FakeProducer([OutOfOrderSequenceNumber() for _ in range(5)], hold=hold)
    fresh = FakeProducer()
    producer = replaceable(broken, fresh)
    await producer.start()
    sends = asyncio.gather(*(send(producer) for _ in range(5)), return_exceptions=True)
    await asyncio.sleep(0)
    assert broken.sent == 5
    hold.set_result(None)
    failures = await sends
    assert all(isinstance(f, SendFailed) and f.replaced for f in failures)
    assert {f.error_type for f in failures if isinstance(f, SendFailed)} == \
        {"OutOfOrderSequenceNumber"}
    assert producer.replacements == 1
    assert [r.message for r in caplog.records if "producer replaced" in r.message] == [
        "svc: producer replaced (replacement 1, after 0 failed start(s)): "
        "OutOfOrderSequenceNumber: [Error 45] "
        "OutOfOrderSequenceNumber (the broker no longer accepts this producer's records)"]
    assert (await send(producer)).offset == 7
    assert fresh.sent == 1
    await producer.close()
    assert broken.stopped
    assert fresh.stopped


async def test_a_failure_before_the_record_was_queued_keeps_the_producer() -> None:
    first = FakeProducer(enqueue_error=KafkaTimeoutError())
    producer = replaceable(first)
    await producer.start()
    with pytest.raises(SendFailed) as caught:
        await send(producer)
    assert not caught.value.replaced
    assert caught.value.error_type == "KafkaTimeoutError"
    assert producer.replacements == 0
    assert not first.stopped


async def test_a_delivery_failure_replaces_the_producer() -> None:
    producer = replaceable(FakeProducer([LeaderNotAvailableError()]), FakeProducer())
    await producer.start()
    with pytest.raises(SendFailed) as caught:
        await send(producer)
    assert caught.value.replaced
    assert caught.value.error_type == "LeaderNotAvailableError"
    assert producer.replacements == 1


async def test_while_no_new_producer_starts_sends_fail_without_the_broken_one() -> None:
    broken = FakeProducer([OutOfOrderSequenceNumber()])
    unreachable = FakeProducer(start_error=KafkaConnectionError("Unable to bootstrap"))
    fresh = FakeProducer()
    producer = replaceable(broken, unreachable, fresh)
    await producer.start()
    with pytest.raises(SendFailed) as first:
        await send(producer)
    assert not first.value.replaced
    assert (await send(producer)).offset == 7  # the next send starts `fresh` first
    assert (broken.sent, fresh.sent, producer.replacements) == (1, 1, 1)


async def test_sends_fail_fast_naming_why_the_producer_could_not_be_replaced() -> None:
    producer = replaceable(FakeProducer([OutOfOrderSequenceNumber()]),
                           FakeProducer(start_error=KafkaConnectionError("Unable to bootstrap")),
                           FakeProducer(start_error=KafkaConnectionError("Unable to bootstrap")))
    await producer.start()
    with pytest.raises(SendFailed):
        await send(producer)
    with pytest.raises(SendFailed) as caught:
        await send(producer)
    assert caught.value.error_type == "ProducerUnavailable"
    assert "OutOfOrderSequenceNumber" in caught.value.reason
    assert "Unable to bootstrap" in caught.value.reason


async def test_records_in_flight_on_a_replaced_producer_are_still_delivered() -> None:
    hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    old = FakeProducer([None, OutOfOrderSequenceNumber()], hold=hold)
    producer = replaceable(old, FakeProducer())
    await producer.start()
    in_flight = asyncio.ensure_future(send(producer))
    await asyncio.sleep(0)
    old.hold = None
    with pytest.raises(SendFailed):
        await send(producer)
    assert producer.replacements == 1
    assert not old.stopped  # still holding a record
    hold.set_result(None)
    assert (await in_flight).offset == 7
    await producer.close()
    assert old.stopped


async def test_a_closing_producer_is_not_replaced() -> None:
    hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    closing = FakeProducer([ProducerClosed()], hold=hold)
    producer = replaceable(closing, FakeProducer())
    await producer.start()
    in_flight = asyncio.ensure_future(send(producer))
    await asyncio.sleep(0)
    closed = asyncio.ensure_future(producer.close())
    hold.set_result(None)
    with pytest.raises(SendFailed) as caught:
        await in_flight
    await closed
    assert not caught.value.replaced
    assert producer.replacements == 0
    with pytest.raises(SendFailed, match="stopping"):
        await send(producer)


@dataclass
class FakeService:
    """Answers each send from a script of outcomes, like FakeProducer."""

    outcomes: list[SendFailed | None]
    calls: int = 0

    async def send(self, topic: str, payload: dict[str, Any], *, key: str,
                   correlation_id: str) -> None:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


def failed(reason: str, *, replaced: bool) -> SendFailed:
    return SendFailed(reason, error_type="X", replaced=replaced)


async def test_an_entry_point_sends_again_once_on_a_replaced_producer() -> None:
    service = FakeService([failed("OutOfOrderSequenceNumber", replaced=True), None])
    await http.send_or_503(service, TOPIC, {}, key="k", correlation_id="c")  # type: ignore[arg-type]
    assert service.calls == 2


@pytest.mark.parametrize(("outcomes", "calls", "reasons"), [
    ([failed("KafkaTimeoutError", replaced=False)], 1, ["KafkaTimeoutError"]),
    ([failed("OutOfOrderSequenceNumber", replaced=True), failed("LeaderNotAvailable",
                                                                replaced=False)],
     2, ["LeaderNotAvailable", "after OutOfOrderSequenceNumber"]),
])
async def test_an_entry_point_answers_503_with_the_reason(
        outcomes: list[SendFailed | None], calls: int, reasons: list[str]) -> None:
    service = FakeService(outcomes)
    with pytest.raises(web.HTTPServiceUnavailable) as caught:
        await http.send_or_503(service, TOPIC, {}, key="k", correlation_id="c")  # type: ignore[arg-type]
    assert service.calls == calls
    error = json.loads(caught.value.text or "")["error"]
    assert all(reason in error for reason in reasons)


@dataclass
class FakeConsumer:
    """Records commits and seeks; stop() raises what it is told to."""

    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)
    stop_error: BaseException | None = None
    client_closed: bool = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def stop(self) -> None:
        if self.stop_error is not None:
            raise self.stop_error

    @property
    def _client(self) -> FakeConsumer:
        return self

    async def close(self) -> None:
        self.client_closed = True


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, b"k", b'{"n": 1}', None, 1, 8, [])


async def test_a_message_whose_outputs_failed_is_not_committed_but_handled_again() -> None:
    handled: list[int] = []

    async def handler(incoming: Incoming) -> None:
        handled.append(incoming.record.offset)
        if handled.count(12) == 1 and incoming.record.offset == 12:
            raise failed("OutOfOrderSequenceNumber", replaced=True)

    worker = Worker(Service("svc", DemoConfig(), trace.NoOpTracer()), "g", [TOPIC], handler,
                    "dlq")
    consumer, tp = FakeConsumer(), TopicPartition(TOPIC, 0)
    done = await worker._handle_partition(consumer, tp, [record(o) for o in (10, 11, 12, 13)])  # type: ignore[arg-type]
    assert not done
    assert handled == [10, 11, 12]
    assert consumer.commits == [{tp: 12}]
    assert consumer.seeks == [(tp, 12)]
    assert await worker._handle_partition(consumer, tp, [record(12), record(13)])  # type: ignore[arg-type]
    assert handled[3:] == [12, 13]
    assert consumer.commits[-1] == {tp: 14}


async def test_stop_consumer_survives_a_stray_cancellation_from_aiokafka() -> None:
    consumer = FakeConsumer(stop_error=asyncio.CancelledError())
    await stop_consumer(consumer, "g")  # type: ignore[arg-type]
    assert consumer.client_closed


async def test_stop_consumer_lets_a_real_cancellation_through() -> None:
    consumer = FakeConsumer()
    started = asyncio.Event()

    async def stop_slowly() -> None:
        started.set()
        await asyncio.sleep(10)

    consumer.stop = stop_slowly  # type: ignore[method-assign]
    task = asyncio.ensure_future(stop_consumer(consumer, "g"))  # type: ignore[arg-type]
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not consumer.client_closed
