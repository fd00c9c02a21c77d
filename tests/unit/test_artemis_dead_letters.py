"""Artemis' dead-letter queues, as Jolokia answers for them, onto message records: the queues
found by name, each browsed message with its original queue, correlation ID, trace ID and
properties (text only, bounded), the walk that browses each queue from its tail one page a
poll, and the poll loop's failures (403, nonsense) degrading health without the password.
The fixtures are answers of a real Artemis 2.40, trimmed."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from base.settings import CollectorSettings
from collectors.ingest.artemis_dead_letters import (
    COMPONENT,
    DeadLetterQueue,
    DeadLetterScanner,
    browse_request,
    browsed_messages,
    dead_letter_queues,
    dead_letter_record,
    is_dead_letter_queue,
    message_properties,
    run_dead_letters,
)
from collectors.ingest.headers import MAX_HEADERS, MAX_VALUE
from collectors.ingest.pipeline import Pipeline
from collectors.lag.artemis import JolokiaError
from collectors.supervise import Health
from store.contract import StoreUnavailable
from store.factory import flow_rules
from store.vocabulary import ComponentState, FlowFlag
from tests.store_writer import open_writable

NOW_MS = 1_796_279_323_358
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
DLQ_MBEAN = ('org.apache.activemq.artemis:address="DLA",broker="flowscope",'
             'component=addresses,queue="DLQ.invoices",routing-type="multicast",'
             'subcomponent=queues')
# The bulk read of every queue (Name, Address, MessageCount, MessagesAdded).
QUEUES_ANSWER: dict[str, Any] = {
    "request": {"type": "read", "attribute": ["Name", "Address", "MessageCount",
                                              "MessagesAdded"]},
    "value": {
        'org.apache.activemq.artemis:address="invoices",broker="flowscope",'
        'component=addresses,queue="invoices",routing-type="anycast",subcomponent=queues': {
            "MessagesAdded": 2, "Address": "invoices", "MessageCount": 0, "Name": "invoices"},
        'org.apache.activemq.artemis:address="ExpiryQueue",broker="flowscope",'
        'component=addresses,queue="ExpiryQueue",routing-type="anycast",'
        'subcomponent=queues': {
            "MessagesAdded": 0, "Address": "ExpiryQueue", "MessageCount": 0,
            "Name": "ExpiryQueue"},
        DLQ_MBEAN: {"MessagesAdded": 2, "Address": "DLA", "MessageCount": 2,
                    "Name": "DLQ.invoices"},
    },
    "status": 200}
# browse(1, 200) of DLQ.invoices: a message a consumer rejected (AMQP, with application
# properties of every type), then one that used up its delivery attempts.
REJECTED: dict[str, Any] = {
    "address": "DLA", "ShortProperties": None, "messageID": "28", "priority": 4, "type": 5,
    "userID": "ID:mid-1", "redelivered": False, "ByteProperties": None,
    "LongProperties": {"extraProperties._AMQ_ORIG_MESSAGE_ID": 20,
                       "messageAnnotations.x-opt-ORIG-MESSAGE-ID": 20,
                       "applicationProperties.x-int": 42},
    "IntProperties": None, "durable": False, "protocol": "AMQP", "persistentSize": 392,
    "StringProperties": {
        "applicationProperties.x-evil": "<script>alert(1)</script>\r\nX: y",
        "applicationProperties.correlation-id": "corr-1", "properties.subject": "subj",
        "properties.to": "DLA", "extraProperties._AMQ_ORIG_QUEUE": "invoices",
        "messageAnnotations.x-opt-ORIG-ADDRESS": "invoices",
        "properties.correlationId": "amqp-corr-1", "extraProperties._AMQ_AD": "DLA",
        "messageAnnotations.x-opt-ORIG-QUEUE": "invoices",
        "properties.contentType": "application/json",
        "applicationProperties.traceparent": TRACEPARENT,
        "extraProperties._AMQ_ORIG_ADDRESS": "invoices"},
    "DoubleProperties": {"applicationProperties.x-float": 1.5}, "expiration": 0,
    "text": "{order=o-1}",
    "PropertiesText": "{applicationProperties.x-bytes=[B@347f75f2, applicationProperties."
                      "x-evil=<script>alert(1)</script>\r\nX: y, + 537 more",
    "largeMessage": False, "BooleanProperties": {"applicationProperties.x-bool": True},
    "FloatProperties": None, "timestamp": 0}
EXHAUSTED: dict[str, Any] = {
    "address": "DLA", "ShortProperties": None, "messageID": "36", "priority": 4, "type": 3,
    "userID": "", "redelivered": False, "ByteProperties": None,
    "LongProperties": {"extraProperties._AMQ_ORIG_MESSAGE_ID": 21,
                       "messageAnnotations.x-opt-ORIG-MESSAGE-ID": 21},
    "IntProperties": None, "durable": False, "protocol": "AMQP", "persistentSize": 176,
    "StringProperties": {
        "applicationProperties.correlation-id": "corr-2", "properties.to": "DLA",
        "extraProperties._AMQ_ORIG_QUEUE": "invoices",
        "messageAnnotations.x-opt-ORIG-ADDRESS": "invoices", "extraProperties._AMQ_AD": "DLA",
        "messageAnnotations.x-opt-ORIG-QUEUE": "invoices",
        "extraProperties._AMQ_ORIG_ADDRESS": "invoices"},
    "DoubleProperties": None, "expiration": 0, "text": "fail me",
    "PropertiesText": "{applicationProperties.correlation-id=corr-2, + 135 more",
    "largeMessage": False, "BooleanProperties": None, "FloatProperties": None, "timestamp": 0}
BROWSE_ANSWER: dict[str, Any] = {
    "request": {"mbean": DLQ_MBEAN, "arguments": [1, 200], "type": "exec",
                "operation": "browse(int,int)"},
    "value": [REJECTED, EXHAUSTED], "status": 200}


def _message(**changes: Any) -> dict[str, Any]:
    message = copy.deepcopy(REJECTED)
    message.update(changes)
    return message


def _headers(record: Any) -> dict[str, str]:
    return dict(json.loads(record.headers or "[]"))


@pytest.mark.parametrize(("name", "dead"), [
    ("DLQ", True), ("DLQ.invoices", True), ("DLQ.billing.events.ledger", True),
    ("invoices.DLQ", True), ("orders.dlq", True), ("invoices", False), ("DLQueue", False),
    ("ExpiryQueue", False), ("my-dlq", False), ("DLQX.a", False), ("dlq.orders", False),
    ("", False)])
def test_dead_letter_queues_are_known_by_name(name: str, dead: bool) -> None:
    assert is_dead_letter_queue(name) is dead


def test_the_read_of_every_queue_keeps_the_dead_letter_queues() -> None:
    queues, problems = dead_letter_queues(QUEUES_ANSWER)
    assert queues == [DeadLetterQueue(DLQ_MBEAN, "DLQ.invoices", "DLA", 2, 2)]
    assert problems == []
    assert browse_request(queues[0], 3) == {"type": "exec", "mbean": DLQ_MBEAN,
                                            "operation": "browse(int,int)",
                                            "arguments": [3, 200]}


def test_a_malformed_queue_is_skipped_with_a_reason_and_the_others_are_kept() -> None:
    answer = copy.deepcopy(QUEUES_ANSWER)
    answer["value"].update({
        "a": "not an object", "b": {"Name": 7}, "c": {"Name": "DLQ.x", "MessageCount": -1,
                                                       "MessagesAdded": 1},
        "d": {"Name": "DLQ.y", "MessageCount": True, "MessagesAdded": 1},
        "e": {"Name": "DLQ.z"},  # the counts left out (ignoreErrors)
        "f": {"Name": "orders", "MessageCount": "junk"},  # not a dead-letter queue: not read
        "g": {"Name": "x.DLQ", "MessageCount": 1, "MessagesAdded": 1, "Address": None}})
    queues, problems = dead_letter_queues(answer)
    assert [(q.name, q.address) for q in queues] == [("DLQ.invoices", "DLA"), ("x.DLQ", "")]
    assert [p.split(":", 1)[0] for p in problems] == [f"queue MBean {k!r}" for k in "abcde"]


def test_a_broker_without_queues_has_no_dead_letter_queues() -> None:
    assert dead_letter_queues({"error_type": "javax.management.InstanceNotFoundException",
                               "error": "No MBean with pattern ... found", "status": 404}) == \
        ([], [])
    assert dead_letter_queues({"status": 200, "value": None}) == ([], [])


@pytest.mark.parametrize("answer", [
    None, [], "text",
    {"error_type": "java.lang.Exception", "status": 403,
     "error": "java.lang.Exception : Origin null is not allowed to call this agent"},
    {"status": 500, "error": "x"}, {"status": 200, "value": ["not", "an", "object"]}])
def test_an_answer_that_is_no_answer_fails_the_poll(answer: Any) -> None:
    with pytest.raises(JolokiaError):
        dead_letter_queues(answer)


def test_a_browse_answer_gives_its_messages_none_when_the_queue_is_gone() -> None:
    assert browsed_messages(BROWSE_ANSWER) == [REJECTED, EXHAUSTED]
    assert browsed_messages({"status": 200, "value": None}) == []
    assert browsed_messages({"status": 404, "error_type":
                             "javax.management.InstanceNotFoundException"}) is None
    for bad in ("x", {"status": 400, "error": "bad"}, {"status": 200, "value": {"a": 1}}):
        with pytest.raises(ValueError):  # noqa: PT011 - each case has its own reason
            browsed_messages(bad)


def test_a_rejected_message_is_a_dead_letter_of_its_flow() -> None:
    record = dead_letter_record("DLQ.invoices", REJECTED, NOW_MS)
    assert (record.topic, record.partition, record.offset, record.size) == \
        ("DLQ.invoices", 0, 28, 392)
    assert (record.correlation_id, record.trace_id, record.retry_attempt) == \
        ("corr-1", "0af7651916cd43dd8448eb211c80319c", None)
    assert record.timestamp_ms == NOW_MS  # the broker gives no time: when first seen
    assert not record.truncated
    headers = _headers(record)
    assert headers["dlq-reason"].startswith("max-delivery-attempts reached or rejected")
    assert headers["artemis-time"] == "first seen by the collector"
    assert (headers["artemis-original-queue"], headers["artemis-original-address"],
            headers["artemis-original-message-id"], headers["amqp-message-id"]) == \
        ("invoices", "invoices", "20", "ID:mid-1")
    # the application's own properties, every type as text; the broker's are not repeated
    assert {k: headers[k] for k in ("correlation-id", "traceparent", "x-evil", "x-int",
                                    "x-float", "x-bool")} == {
        "correlation-id": "corr-1", "traceparent": TRACEPARENT,
        "x-evil": "<script>alert(1)</script>\r\nX: y", "x-int": "42", "x-float": "1.5",
        "x-bool": "true"}
    assert not [k for k in headers if k.startswith(("_AMQ", "extraProperties", "properties."))]
    assert flow_rules(CollectorSettings(store="x")).flag_of(record.topic) == \
        FlowFlag.DEAD_LETTERED  # type: ignore[arg-type]


def test_the_time_is_the_message_timestamp_else_the_ingress_time() -> None:
    stamped = dead_letter_record("DLQ.invoices", _message(timestamp=1_796_279_161_399), NOW_MS)
    assert stamped.timestamp_ms == 1_796_279_161_399
    assert _headers(stamped)["artemis-time"] == "message timestamp"
    ingress = _message()
    ingress["LongProperties"]["messageAnnotations.x-opt-ingress-time"] = 1_796_279_000_000
    record = dead_letter_record("DLQ.invoices", ingress, NOW_MS)
    assert (record.timestamp_ms, _headers(record)["artemis-time"]) == \
        (1_796_279_000_000, "broker ingress")
    for odd in (-5, True, 1e300, float("nan"), "1796279161399", 2**60):
        assert dead_letter_record("DLQ.i", _message(timestamp=odd), NOW_MS).timestamp_ms == \
            NOW_MS


def test_without_a_correlation_id_property_the_amqp_correlation_id_is_taken() -> None:
    message = _message()
    del message["StringProperties"]["applicationProperties.correlation-id"]
    assert dead_letter_record("DLQ.i", message, NOW_MS).correlation_id == "amqp-corr-1"
    del message["StringProperties"]["properties.correlationId"]
    message["LongProperties"]["properties.correlationId"] = 77  # a ulong correlation ID
    assert dead_letter_record("DLQ.i", message, NOW_MS).correlation_id == "77"
    del message["LongProperties"]["properties.correlationId"]
    assert dead_letter_record("DLQ.i", message, NOW_MS).correlation_id is None


def test_a_core_message_has_its_property_names_unprefixed() -> None:
    message = {"messageID": "90", "protocol": "CORE", "timestamp": 1_796_279_161_399,
               "StringProperties": {"_AMQ_ORIG_QUEUE": "orders", "_AMQ_ORIG_ADDRESS": "orders",
                                    "correlation-id": "c-9", "traceparent": TRACEPARENT},
               "LongProperties": {"_AMQ_ORIG_MESSAGE_ID": 80}}
    record = dead_letter_record("DLQ.orders", message, NOW_MS)
    headers = _headers(record)
    assert (record.offset, record.correlation_id, record.trace_id) == \
        (90, "c-9", "0af7651916cd43dd8448eb211c80319c")
    assert (headers["artemis-original-queue"], headers["artemis-original-message-id"]) == \
        ("orders", "80")
    assert "_AMQ_ORIG_QUEUE" not in headers


def test_a_message_without_an_original_queue_says_so() -> None:
    record = dead_letter_record("DLQ", {"messageID": 5}, NOW_MS)
    assert _headers(record)["dlq-reason"].startswith("on a dead-letter queue")
    assert (record.correlation_id, record.trace_id, record.size) == (None, None, 0)


def test_hostile_property_values_end_up_bounded_text() -> None:
    strings = {f"applicationProperties.h{i:02d}": f"<script>{i}</script>\r\n" for i in range(50)}
    strings.update({
        "applicationProperties.correlation-id": "c" * 100_000,
        "applicationProperties.big": "x" * 100_000,
        "applicationProperties." + "n" * 100_000: "long name",
        "applicationProperties.surrogate": "\ud800 lone",
        "applicationProperties.traceparent": "garbage\r\n<script>",
        "extraProperties._AMQ_ORIG_QUEUE": "q\r\n" * 10_000})
    message = _message(StringProperties=strings, userID={"nested": ["object", 1]},
                       persistentSize=True, LongProperties={"applicationProperties.l": 2**70},
                       DoubleProperties={"applicationProperties.d": [1, {"a": None}]})
    record = dead_letter_record("DLQ." + "q" * 10_000, message, NOW_MS)
    shown = json.loads(record.headers or "[]")
    assert record.truncated
    assert len(shown) == MAX_HEADERS
    assert all(isinstance(k, str) and isinstance(v, str) and len(k) <= 128
               and len(v) <= MAX_VALUE for k, v in shown)
    headers = dict(shown)
    assert headers["artemis-original-queue"] == ("q\r\n" * 10_000)[:MAX_VALUE]
    assert headers["amqp-message-id"] == '{"nested": ["object", 1]}'
    assert record.correlation_id == "c" * 128
    assert (record.trace_id, record.size, len(record.topic)) == (None, 0, 512)


def test_a_value_the_broker_cut_marks_the_record_truncated() -> None:
    message = _message()
    message["StringProperties"]["applicationProperties.note"] = "x" * 256 + ", + 99744 more"
    assert dead_letter_record("DLQ.i", message, NOW_MS).truncated


def test_a_property_table_that_is_not_an_object_is_left_out() -> None:
    message = _message(StringProperties="oops", LongProperties=["a"], IntProperties=None,
                       BooleanProperties={"applicationProperties.b": None})
    assert message_properties(message) == {"applicationProperties.x-float": 1.5}
    assert dead_letter_record("DLQ.i", message, NOW_MS).offset == 28


@pytest.mark.parametrize("message", [
    "text", [], None, {}, {"messageID": "abc"}, {"messageID": -1}, {"messageID": True},
    {"messageID": "99999999999999999999999"}, {"messageID": 1.5}, {"messageID": None}])
def test_a_malformed_message_is_refused_with_a_reason(message: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own reason
        dead_letter_record("DLQ.i", message, NOW_MS)


class FakeQueue:
    """A queue browsed as Artemis does: pages counted from the head, in priority order."""

    def __init__(self, name: str = "DLQ.invoices") -> None:
        self.name = name
        self.messages: list[dict[str, Any]] = []  # in browse order
        self.added = 0
        self.next_id = 100

    def add(self, count: int, priority: int = 4) -> list[int]:
        ids = []
        for _ in range(count):
            self.next_id += 1
            message = {"messageID": str(self.next_id), "priority": priority, "timestamp": 0}
            index = next((i for i, m in enumerate(self.messages) if m["priority"] < priority),
                         len(self.messages))
            self.messages.insert(index, message)
            ids.append(self.next_id)
        self.added += count
        return ids

    @property
    def sample(self) -> DeadLetterQueue:
        return DeadLetterQueue("mbean", self.name, "DLA", len(self.messages), self.added)

    def browse(self, page: int, size: int) -> list[dict[str, Any]]:
        return self.messages[(page - 1) * size:page * size]


def _poll(scanner: DeadLetterScanner, *queues: FakeQueue) -> tuple[list[int], list[int]]:
    """One poll: (the pages browsed, the offsets recorded)."""
    pages, offsets = [], []
    by_name = {q.name: q for q in queues}
    for sample, page in scanner.pages([q.sample for q in queues]):
        pages.append(page)
        records, problems = scanner.take(
            sample, page, by_name[sample.name].browse(page, scanner.page_size), NOW_MS)
        assert problems == []
        offsets.extend(r.offset for r in records)
    return pages, offsets


def test_the_first_walk_browses_one_page_a_poll_from_the_tail_to_the_head() -> None:
    queue, scanner = FakeQueue(), DeadLetterScanner(page_size=2)
    ids = queue.add(5)
    assert [_poll(scanner, queue) for _ in range(4)] == [
        ([3], ids[4:]), ([2], ids[2:4]), ([1], ids[:2]), ([], [])]


def test_new_dead_letters_are_found_at_the_tail_and_a_quiet_queue_is_not_browsed() -> None:
    queue, scanner = FakeQueue(), DeadLetterScanner(page_size=2)
    queue.add(5)
    while _poll(scanner, queue)[0]:
        pass
    later = queue.add(3)
    # the last page holds the newest two; the page before it the third and older ones
    assert _poll(scanner, queue) == ([4], later[1:])
    assert _poll(scanner, queue) == ([3], later[:1])
    assert _poll(scanner, queue) == ([], [])
    queue.messages = queue.messages[3:]  # someone took three from the head
    assert _poll(scanner, queue) == ([], [])


def test_a_dead_letter_of_a_higher_priority_is_found_at_the_head() -> None:
    queue, scanner = FakeQueue(), DeadLetterScanner(page_size=2)
    queue.add(5)
    while _poll(scanner, queue)[0]:
        pass
    urgent = queue.add(1, priority=9)  # browsed first: page 1
    assert [_poll(scanner, queue) for _ in range(4)] == [
        ([3], []), ([2], []), ([1], urgent), ([], [])]


def test_what_a_walk_found_beyond_what_it_looked_for_is_not_looked_for_again() -> None:
    queue, scanner = FakeQueue(), DeadLetterScanner(page_size=4)
    queue.add(2)
    assert _poll(scanner, queue)[1] == [101, 102]
    queue.add(1)
    pages = scanner.pages([queue.sample])
    queue.add(1)  # arrives between the listing and the browse, on the same page
    records, _ = scanner.take(queue.sample, pages[0][1], queue.browse(pages[0][1], 4), NOW_MS)
    assert [r.offset for r in records] == [103, 104]
    assert _poll(scanner, queue) == ([], [])


def test_a_broker_restart_walks_again_and_records_nothing_twice() -> None:
    queue, scanner = FakeQueue(), DeadLetterScanner(page_size=2)
    queue.add(3)
    while _poll(scanner, queue)[0]:
        pass
    queue.added = 0  # the counters start again with the broker
    assert [_poll(scanner, queue) for _ in range(3)] == [([2], []), ([1], []), ([], [])]


def test_walks_are_bounded_and_so_is_the_memory_of_what_was_seen() -> None:
    queue, scanner = FakeQueue(), DeadLetterScanner(page_size=2, max_walk_pages=2, remember=3)
    queue.add(9)
    assert [_poll(scanner, queue)[0] for _ in range(3)] == [[5], [4], []]
    assert len(scanner.seen) == 3


def test_a_malformed_message_costs_only_itself() -> None:
    queue, scanner = FakeQueue(), DeadLetterScanner(page_size=10)
    queue.add(3)
    queue.messages[1] = {"messageID": "junk"}
    [(sample, page)] = scanner.pages([queue.sample])
    records, problems = scanner.take(sample, page, queue.browse(page, 10), NOW_MS)
    assert [r.offset for r in records] == [101, 103]
    assert problems == ["message 1 of page 1 of queue 'DLQ.invoices': no messageID: 'junk'"]


def test_a_queue_gone_is_forgotten() -> None:
    queue, other, scanner = FakeQueue(), FakeQueue("x.DLQ"), DeadLetterScanner(page_size=10)
    queue.add(1)
    other.add(1)
    assert _poll(scanner, queue, other) == ([1, 1], [101, 101])
    assert set(scanner.walked) == {"DLQ.invoices", "x.DLQ"}
    assert _poll(scanner, queue) == ([], [])
    assert set(scanner.walked) == {"DLQ.invoices"}
    queue.add(1)
    [(sample, page)] = scanner.pages([queue.sample])
    assert scanner.take(sample, page, None, NOW_MS) == ([], [])  # deleted meanwhile
    assert scanner.walks == {}


class FakeJolokia:
    """A management API on loopback that answers what the test says."""

    def __init__(self, answer: Callable[[Any], web.StreamResponse]) -> None:
        self.answer = answer
        self.requests: list[Any] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.headers.get("Origin"),
                              request.headers.get("Authorization"), body))
        return self.answer(body)


@pytest.fixture
async def jolokia() -> AsyncIterator[tuple[FakeJolokia, str]]:
    fake = FakeJolokia(lambda body: web.json_response({}))
    app = web.Application()
    app.router.add_post("/console/jolokia", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield fake, f"http://flowscope:s3cret-pw@127.0.0.1:{port}/console/jolokia"
    await runner.cleanup()


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    settings = CollectorSettings(store=str(tmp_path / "s.db"))
    return Pipeline(open_writable(tmp_path / "s.db", flow_rules(settings)).writer)


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def _running(url: str, pipeline: Pipeline, health: Health,
                   condition: Callable[[], bool]) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(run_dead_letters(url, pipeline, health, stopping,
                                                interval_s=0.05))
    try:
        await _until(condition)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


async def test_the_loop_records_dead_letters_once_and_counts_the_malformed(
        jolokia: tuple[FakeJolokia, str], pipeline: Pipeline) -> None:
    fake, url = jolokia
    browse = copy.deepcopy(BROWSE_ANSWER)
    browse["value"].append({"messageID": "not a number"})

    def answer(body: Any) -> web.StreamResponse:
        return web.json_response([browse] if isinstance(body, list) else QUEUES_ANSWER)

    fake.answer = answer
    health = Health()
    await _running(url, pipeline, health, lambda: len(fake.requests) >= 6)
    assert health.components[COMPONENT].state == ComponentState.OK
    assert pipeline.counters[f"{COMPONENT}_dead_letters"] == 2
    assert pipeline.counters[f"{COMPONENT}_malformed"] == 1  # browsed once: the queue is quiet
    port = url.rsplit(":", 1)[1].split("/")[0]
    origin, authorization, _ = fake.requests[0]
    assert origin == f"http://127.0.0.1:{port}"
    assert authorization == "Basic Zmxvd3Njb3BlOnMzY3JldC1wdw=="  # flowscope:s3cret-pw
    letters = pipeline.store.dead_letters(0)
    assert sorted((d.topic, d.offset, d.correlation_id) for d in letters) == [
        ("DLQ.invoices", 28, "corr-1"), ("DLQ.invoices", 36, "corr-2")]


@pytest.mark.parametrize(("respond", "said"), [
    (lambda body: web.Response(status=403), "refused the credentials (HTTP 403)"),
    (lambda body: web.Response(text="<html>s3cret-pw</html>"), "other than JSON"),
    (lambda body: web.json_response({"status": 403, "error": "Origin null is not allowed"}),
     "Origin null is not allowed"),
    (lambda body: web.Response(status=502), "answered HTTP 502")])
async def test_a_management_api_that_fails_degrades_health_without_the_password(
        jolokia: tuple[FakeJolokia, str], pipeline: Pipeline,
        respond: Callable[[Any], web.StreamResponse], said: str) -> None:
    fake, url = jolokia
    fake.answer = respond
    health = Health()
    await _running(url, pipeline, health, lambda: COMPONENT in health.components)
    component = health.components[COMPONENT]
    assert component.state == ComponentState.DEGRADED
    assert said in (component.reason or "")
    assert "s3cret-pw" not in (component.reason or "")
    assert "trying again in 1s" in (component.reason or "")
    assert pipeline.counters[f"{COMPONENT}_failures"] == 1  # then backing off


async def test_a_store_that_cannot_take_the_dead_letters_degrades_and_they_are_written_later(
        jolokia: tuple[FakeJolokia, str], pipeline: Pipeline,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = jolokia
    fake.answer = lambda body: web.json_response(
        [BROWSE_ANSWER] if isinstance(body, list) else QUEUES_ANSWER)
    write = pipeline.writer.write_messages
    refusals = [2]

    def refusing(records: list[Any]) -> int:
        if refusals[0]:
            refusals[0] -= 1
            raise StoreUnavailable("database is locked")
        return write(records)

    monkeypatch.setattr(pipeline.writer, "write_messages", refusing)
    health = Health()
    states: list[str] = []

    def written() -> bool:
        if COMPONENT in health.components:
            states.append(health.components[COMPONENT].state)
        return pipeline.counters.get(f"{COMPONENT}_dead_letters", 0) == 2

    await _running(url, pipeline, health, written)
    assert ComponentState.DEGRADED in states
    assert pipeline.counters[f"{COMPONENT}_store_unavailable"] == 2
    assert health.components[COMPONENT].state == ComponentState.OK
    assert len(pipeline.store.dead_letters(0)) == 2
