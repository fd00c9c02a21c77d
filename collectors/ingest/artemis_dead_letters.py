"""ActiveMQ Artemis' dead letters, found on the broker's dead-letter queues.

Artemis moves a message that used up max-delivery-attempts, or that a consumer rejected, to the
dead-letter address (`DLA`), into the queue `DLQ.<original address>` (made on the first one,
MULTICAST, filtered on _AMQ_ORIG_ADDRESS). No span is written for that move, so this component
looks for dead letters itself, through the management API over HTTP (Jolokia), and records each
as a message on its dead-letter queue, which the default dead-letter rules (`DLQ.*`) match: the
flow is dead-lettered and the message is listed with the dead letters.

Every poll:
- one bulk read of every queue MBean (Name, Address, MessageCount, MessagesAdded) finds the
  dead-letter queues (`DLQ`, `DLQ.*`, `*.DLQ`, `*.dlq`);
- a queue whose MessagesAdded moved since its last walk is walked back from its tail (new dead
  letters are appended there) with the queue MBean's `browse(page, pageSize)`, one page of
  PAGE messages per queue per poll, until the walk has found as many new messages as were
  added, reached the head, or looked at MAX_WALK_PAGES pages. The first walk of a queue (or
  after a broker restart, when the counter starts again) has nothing to expect and goes to
  the head. Artemis browses a queue in priority order, so a dead letter of a higher priority
  is not at the tail: counting what was added still finds it.
- a message not seen before becomes a MessageRecord: topic = the queue, partition 0, offset =
  the broker's message ID of the dead-letter copy.

What Artemis tells of a dead letter, and what it does not (2.40): the copy carries
_AMQ_ORIG_QUEUE, _AMQ_ORIG_ADDRESS and _AMQ_ORIG_MESSAGE_ID (and, for AMQP, the same as
x-opt-ORIG-* annotations); it keeps neither the time of the move, nor the delivery count, nor
whether the delivery count ran out or a consumer rejected it (a rejection's error condition is
dropped). So the time is the message's own timestamp (AMQP creation-time), else the broker's
ingress time when it stamps one, else when this component first saw it; retry_attempt is
unknown. Property values are cut by the broker (management-message-attribute-size-limit, 256
characters by default: "..., + N more"), and properties that are not strings, numbers or
booleans (binary, UUID) are left out of the typed tables browse answers with.

One malformed queue or message is counted, logged with its queue and the management URL
(without password) and skipped. A management API that is down, refuses the credentials (HTTP
403) or answers nonsense degrades the component, and is tried again after a backoff (1 s
doubling to 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from base.settings import redact_url
from collectors.ingest import headers as hdr
from collectors.ingest.pipeline import Pipeline
from collectors.lag.artemis import (
    QUEUES_MBEAN,
    JolokiaClient,
    JolokiaError,
    count_of,
    is_dead_letter_queue,
    queue_mbeans,
)
from collectors.normalize import as_count
from collectors.supervise import Health
from store.contract import StoreUnavailable
from store.records import MessageRecord

log = logging.getLogger(__name__)
COMPONENT = "artemis_dead_letters"
QUEUE_ATTRIBUTES = ("Name", "Address", "MessageCount", "MessagesAdded")
BROWSE = "browse(int,int)"  # browse(page, pageSize): page 1 is the head of the queue
PAGE = 200  # messages browsed per queue per poll
MAX_WALK_PAGES = 50  # a walk looks at the newest 10,000 messages at most
SEEN = 100_000  # (queue, message ID) remembered as recorded
BROWSE_BATCH = 16  # queues browsed in one request
MAX_BACKOFF_S = 30.0
# Typed tables of a browsed message (CompositeData): property name -> value.
PROPERTY_TABLES = ("StringProperties", "LongProperties", "IntProperties", "ShortProperties",
                   "ByteProperties", "BooleanProperties", "DoubleProperties", "FloatProperties")
# The prefixes of an AMQP message's property names; a CORE message's names have none.
APPLICATION, BROKER = "applicationProperties.", "extraProperties."
ANNOTATION, AMQP = "messageAnnotations.", "properties."
BROKER_CUT = re.compile(r", \+ \d+ more\Z")  # how the broker ends a value it cut
MAX_TIME_MS = 2**53


@dataclass(frozen=True)
class DeadLetterQueue:
    """A dead-letter queue at one poll."""

    mbean: str  # its MBean's name, as Jolokia gave it
    name: str
    address: str
    messages: int  # MessageCount
    added: int  # MessagesAdded, since the broker started


def queues_read() -> dict[str, object]:
    """The bulk read of every queue MBean (an attribute a queue lacks is left out)."""
    return {"type": "read", "mbean": QUEUES_MBEAN, "attribute": list(QUEUE_ATTRIBUTES),
            "config": {"ignoreErrors": True}}


def dead_letter_queues(answer: Any, is_dead_letter: Callable[[str], bool] = is_dead_letter_queue
                       ) -> tuple[list[DeadLetterQueue], list[str]]:
    """The dead-letter queues in Jolokia's answer to queues_read(); and, for each queue that
    could not be read, why (the others are kept). JolokiaError when the answer is no answer."""
    queues, problems = [], []
    for mbean, queue in queue_mbeans(answer).items():
        try:
            if not isinstance(queue, Mapping):
                raise ValueError("not an object")
            name = queue.get("Name")
            if not isinstance(name, str):
                raise ValueError("Name is not text")
            if not is_dead_letter(name):
                continue
            address = queue.get("Address")
            queues.append(DeadLetterQueue(
                str(mbean), name, address if isinstance(address, str) else "",
                count_of(queue.get("MessageCount")), count_of(queue.get("MessagesAdded"))))
        except ValueError as exc:
            problems.append(f"queue MBean {str(mbean)[:300]!r}: {exc}")
    return queues, problems


def browse_request(queue: DeadLetterQueue, page: int, size: int = PAGE) -> dict[str, object]:
    """The exec of browse(page, size) on a queue's MBean."""
    return {"type": "exec", "mbean": queue.mbean, "operation": BROWSE,
            "arguments": [page, size]}


def browsed_messages(answer: Any) -> list[Any] | None:
    """The messages in Jolokia's answer to one browse_request; None when the queue is gone;
    ValueError when the answer is not one."""
    if not isinstance(answer, Mapping):
        raise ValueError("the browse answer is not an object")
    status = answer.get("status")
    if status == 404:
        return None
    if status != 200:
        raise ValueError(f"browse failed: {str(answer.get('error') or status)[:300]}")
    messages = answer.get("value")
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise ValueError("the browsed messages are not a list")
    return messages


def message_id(message: Any) -> int:
    """The broker's ID of a browsed message; ValueError when it has none."""
    if not isinstance(message, Mapping):
        raise ValueError("not an object")
    found = as_count(message.get("messageID"))
    if found is None:
        raise ValueError(f"no messageID: {str(message.get('messageID'))[:80]!r}")
    return found


def message_properties(message: Mapping[str, Any]) -> dict[str, Any]:
    """Every property of a browsed message, from its typed tables (one not an object is left
    out)."""
    found: dict[str, Any] = {}
    for table in PROPERTY_TABLES:
        values = message.get(table)
        if isinstance(values, Mapping):
            found.update((str(k), v) for k, v in values.items() if v is not None)
    return found


def _split(properties: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the application's properties, the broker's and the AMQP sections' by their names)."""
    application: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for name, value in properties.items():
        if name.startswith(APPLICATION):
            application[name.removeprefix(APPLICATION)] = value
        elif name.startswith((BROKER, ANNOTATION, AMQP)):
            rest[name] = value
        elif name.startswith("_AMQ"):  # a CORE message: the broker's own, unprefixed
            rest[BROKER + name] = value
        else:
            application[name] = value
    return application, rest


def _raw(value: Any) -> bytes:
    """A property value as UTF-8 text, whatever its JSON type."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = json.dumps(value, default=str)
    return text.encode("utf-8", "replace")


def _time_ms(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not 0 < value < MAX_TIME_MS:
        return None
    return int(value)


def _first(rest: Mapping[str, Any], *names: str) -> Any:
    return next((rest[n] for n in names if rest.get(n) not in (None, "")), None)


def dead_letter_record(queue: str, message: Any, now_ms: int) -> MessageRecord:
    """The dead letter a browsed message is; now_ms is its time when the broker gives none.
    ValueError when the message is not one."""
    offset = message_id(message)
    application, rest = _split(message_properties(message))
    pairs = [(name, _raw(application[name])) for name in sorted(application)]
    original_queue = _first(rest, BROKER + "_AMQ_ORIG_QUEUE", ANNOTATION + "x-opt-ORIG-QUEUE")
    original_address = _first(rest, BROKER + "_AMQ_ORIG_ADDRESS",
                              ANNOTATION + "x-opt-ORIG-ADDRESS")
    at_ms, source = _time_ms(message.get("timestamp")), "message timestamp"
    if at_ms is None:
        at_ms, source = _time_ms(rest.get(ANNOTATION + "x-opt-ingress-time")), "broker ingress"
    if at_ms is None:
        at_ms, source = now_ms, "first seen by the collector"
    reason = ("max-delivery-attempts reached or rejected by a consumer (Artemis does not say "
              "which)") if original_queue is not None else \
        "on a dead-letter queue (Artemis names no original queue)"
    facts = [("dlq-reason", reason.encode()), ("artemis-time", source.encode())]
    for name, value in (("artemis-original-queue", original_queue),
                        ("artemis-original-address", original_address),
                        ("artemis-original-message-id",
                         rest.get(BROKER + "_AMQ_ORIG_MESSAGE_ID")),
                        ("amqp-message-id", message.get("userID") or None)):
        if value is not None:
            facts.append((name, _raw(value)))
    shown, cut_headers = hdr.bounded_headers([*facts, *pairs])
    correlation = hdr.first_header(pairs, "correlation-id")
    if correlation is None and rest.get(AMQP + "correlationId") not in (None, ""):
        correlation = _raw(rest[AMQP + "correlationId"])
    correlation_id, cut_correlation = hdr.header_text(correlation, 128)
    cut_by_broker = any(isinstance(v, str) and BROKER_CUT.search(v)
                        for v in application.values())
    size = as_count(message.get("persistentSize"))
    return MessageRecord(
        topic=queue[:512], partition=0, offset=offset, timestamp_ms=at_ms, key=None,
        size=size or 0,
        correlation_id=correlation_id,
        trace_id=hdr.trace_id_of(hdr.first_header(pairs, "traceparent")),
        retry_attempt=None, headers=json.dumps(shown),
        truncated=cut_headers or cut_correlation or cut_by_broker)


@dataclass
class _Walk:
    """A walk of one queue from its tail toward its head, one page per poll."""

    page: int  # the next page to browse
    expected: int | None  # new messages to find (None: look at every page)
    added: int  # MessagesAdded when the walk began
    found: int = 0
    pages: int = 0


class DeadLetterScanner:
    """Which page of which dead-letter queue to browse at each poll, and which of the browsed
    messages are new: no I/O, so that it is tested without a broker."""

    def __init__(self, page_size: int = PAGE, max_walk_pages: int = MAX_WALK_PAGES,
                 remember: int = SEEN) -> None:
        self.page_size = page_size
        self.max_walk_pages = max_walk_pages
        self.remember = remember
        # queue -> (MessagesAdded at its last finished walk, messages that walk found beyond
        # what it looked for: added while it went, they are not to be looked for again)
        self.walked: dict[str, tuple[int, int]] = {}
        self.walks: dict[str, _Walk] = {}
        self.seen: OrderedDict[tuple[str, int], None] = OrderedDict()

    def pages(self, queues: Iterable[DeadLetterQueue]) -> list[tuple[DeadLetterQueue, int]]:
        """The page of each queue to browse now; queues gone are forgotten."""
        wanted = []
        present = set()
        for queue in queues:
            present.add(queue.name)
            walk = self.walks.get(queue.name) or self._start(queue)
            if walk is not None:
                walk.page = max(1, min(walk.page, self._last_page(queue)))
                wanted.append((queue, walk.page))
        for gone in (set(self.walked) | set(self.walks)) - present:
            self.walked.pop(gone, None)
            self.walks.pop(gone, None)
        return wanted

    def _start(self, queue: DeadLetterQueue) -> _Walk | None:
        """A new walk of queue from its tail, or None when nothing was added to it."""
        last = self.walked.get(queue.name)
        if last is None or queue.added < last[0]:  # never walked, or the counter restarted
            expected = None
        else:
            expected = queue.added - last[0] - last[1]
        if queue.messages == 0 or (expected is not None and expected <= 0):
            if last is None or queue.added != last[0]:
                self.walked[queue.name] = (queue.added, max(0, -expected) if expected else 0)
            return None
        walk = self.walks[queue.name] = _Walk(self._last_page(queue), expected, queue.added)
        return walk

    def _last_page(self, queue: DeadLetterQueue) -> int:
        return max(1, math.ceil(queue.messages / self.page_size))

    def take(self, queue: DeadLetterQueue, page: int, messages: list[Any] | None, now_ms: int
             ) -> tuple[list[MessageRecord], list[str]]:
        """The new dead letters of one browsed page (None: the queue is gone), and why each
        malformed message was skipped; the walk moves on."""
        walk = self.walks.get(queue.name)
        if messages is None or walk is None:
            self.walks.pop(queue.name, None)
            return [], []
        records, problems = [], []
        for position, message in enumerate(messages):
            try:
                key = (queue.name, message_id(message))
                if key in self.seen:
                    self.seen.move_to_end(key)
                    continue
                self._remember(key)
                walk.found += 1
                records.append(dead_letter_record(queue.name, message, now_ms))
            except (ValueError, TypeError) as exc:
                problems.append(f"message {position} of page {page} of queue "
                                f"{queue.name[:300]!r}: {exc}")
        walk.pages += 1
        if page <= 1 or not messages or walk.pages >= self.max_walk_pages or \
                (walk.expected is not None and walk.found >= walk.expected):
            beyond = walk.found - walk.expected if walk.expected is not None else 0
            self.walked[queue.name] = (walk.added, max(0, beyond))
            del self.walks[queue.name]
        else:
            walk.page = page - 1
        return records, problems

    def _remember(self, key: tuple[str, int]) -> None:
        self.seen[key] = None
        while len(self.seen) > self.remember:
            self.seen.popitem(last=False)


class DeadLetterPoller:
    """Polls an Artemis broker's Jolokia (URL with user and password) for dead letters."""

    def __init__(self, management_url: str, *, timeout_s: float = 10.0,
                 scanner: DeadLetterScanner | None = None,
                 is_dead_letter: Callable[[str], bool] = is_dead_letter_queue) -> None:
        self.client = JolokiaClient(management_url, timeout_s=timeout_s)
        self.scanner = scanner or DeadLetterScanner()
        self.is_dead_letter = is_dead_letter

    async def start(self) -> None:
        """Open the HTTP session."""
        await self.client.start()

    async def stop(self) -> None:
        """Close it."""
        await self.client.stop()

    def without_password(self, text: str) -> str:
        """text with the password, should it be in it, replaced by '***'."""
        return self.client.without_password(text)

    async def poll(self, now_ms: int | None = None) -> tuple[list[MessageRecord], list[str]]:
        """One round: the new dead letters, and why each malformed queue or message was
        skipped. JolokiaError (or aiohttp's, a timeout) when the API did not answer."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        queues, problems = dead_letter_queues(await self.client.post(queues_read()),
                                              self.is_dead_letter)
        wanted = self.scanner.pages(queues)
        records: list[MessageRecord] = []
        # A page of BROWSE_BATCH queues per request keeps each answer well under its bound.
        for first in range(0, len(wanted), BROWSE_BATCH):
            batch = wanted[first:first + BROWSE_BATCH]
            answers = await self.client.post([browse_request(q, page, self.scanner.page_size)
                                              for q, page in batch])
            if not isinstance(answers, list) or len(answers) != len(batch):
                raise JolokiaError("Jolokia did not answer every browse: "
                                   f"{str(answers)[:300] if isinstance(answers, dict) else ''}")
            for (queue, page), answer in zip(batch, answers, strict=True):
                try:
                    messages = browsed_messages(answer)
                except ValueError as exc:
                    problems.append(f"queue {queue.name[:300]!r}: {exc}")
                    continue
                found, skipped = self.scanner.take(queue, page, messages, now_ms)
                records.extend(found)
                problems.extend(skipped)
        return records, problems


async def run_dead_letters(management_url: str, pipeline: Pipeline, health: Health,
                           stopping: asyncio.Event, *, interval_s: float = 1.0,
                           is_dead_letter: Callable[[str], bool] = is_dead_letter_queue
                           ) -> None:
    """Record the dead letters of the broker's dead-letter queues (the queues is_dead_letter
    names) every interval_s until stopping; a management API that fails, or a store that
    cannot take a poll's records, degrades the component and is tried again after a backoff
    (the queues walked again: a record written twice is stored once)."""
    where = redact_url(management_url)
    poller = DeadLetterPoller(management_url, is_dead_letter=is_dead_letter)
    await poller.start()
    delay = 1.0
    try:
        while not stopping.is_set():
            try:
                records, problems = await poller.poll()
            except (JolokiaError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = poller.without_password(
                    f"Jolokia at {where}: {str(exc) or type(exc).__name__}")
                pipeline.count(f"{COMPONENT}_failures")
                health.degraded(COMPONENT, f"{reason} (trying again in {delay:.0f}s)")
                log.warning("%s: %s; trying again in %.0fs", COMPONENT, reason, delay)
                wait, delay = delay, min(delay * 2, MAX_BACKOFF_S)
            else:
                for problem in problems:
                    log.warning("%s: skipped %s (from %s)", COMPONENT,
                                poller.without_password(problem), where)
                if problems:
                    pipeline.count(f"{COMPONENT}_malformed", len(problems))
                try:
                    if records:
                        await pipeline.write_messages(records)
                        pipeline.count(f"{COMPONENT}_dead_letters", len(records))
                except StoreUnavailable as exc:
                    pipeline.count(f"{COMPONENT}_store_unavailable")
                    health.degraded(COMPONENT, f"store unavailable: {exc}")
                    log.warning("%s: %d dead letters not stored (%s); the queues are walked "
                                "again in %.0fs", COMPONENT, len(records), exc, delay)
                    poller.scanner = DeadLetterScanner(poller.scanner.page_size,
                                                       poller.scanner.max_walk_pages,
                                                       poller.scanner.remember)
                    wait, delay = delay, min(delay * 2, MAX_BACKOFF_S)
                else:
                    health.ok(COMPONENT)
                    wait, delay = interval_s, 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
    finally:
        await poller.stop()
