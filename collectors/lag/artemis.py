"""Backlog of ActiveMQ Artemis queues, from the broker's management API over HTTP (Jolokia),
in the figures a Kafka group has: lag in messages, lag in seconds, trend, time to drain and a
Burrow-style status.

- One bulk read per poll of every queue MBean: Name, Address, RoutingType, MessageCount,
  DeliveringCount, ScheduledCount, ConsumerCount, MessagesAdded, MessagesAcknowledged,
  MessagesKilled, MessagesExpired, FirstMessageTimestamp and FirstMessageAge.
- A queue's lag is its MessageCount, which includes the messages being delivered (sent to a
  consumer, not yet acknowledged) and those waiting out a redelivery delay (scheduled), as a
  Kafka group's lag includes what its consumers are processing: ready = MessageCount -
  DeliveringCount - ScheduledCount, unacknowledged = DeliveringCount.
- Its row: group = the queue, topic = its address; committed = the messages gone from it
  (acknowledged, killed after max-delivery-attempts, expired), end = committed + lag.
- Lag in seconds is FirstMessageAge, the age of the oldest message waiting for a consumer
  (the broker leaves out those being delivered); unknown when the producer gave the message no
  creation time (the broker then says 0 for its timestamp); 0 when nothing waits.
- The status reads a window of polls as Burrow reads commits, with `committed` as the
  committed offset: WARN when the backlog has not gone down over the window; STALL when
  consumers are attached but have taken nothing over it (STOP once that lasts longer than the
  window); STOP when there is a backlog and no consumer at all, but for a dead-letter or
  expiry queue, where messages are meant to stay until someone looks at them: OK.

The broker's own queues ($sys.*, the management address's replies) and temporary queues are
left out. One odd queue is counted and skipped, never the whole poll; a queue deleted between
polls is forgotten; Jolokia's own failures (down, 403, timeouts, nonsense) are the caller's to
log and retry.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from base.settings import redact_url
from collectors.lag.status import BacklogWindows, PartitionWindow, single_group
from store.records import INT64_MAX, GroupLag, LagRow
from store.vocabulary import ACTIVEMQ, PartitionStatus

log = logging.getLogger(__name__)
QUEUES_MBEAN = ("org.apache.activemq.artemis:broker=*,component=addresses,address=*,"
                "subcomponent=queues,routing-type=*,queue=*")
ATTRIBUTES = ("Name", "Address", "RoutingType", "Temporary", "MessageCount", "DeliveringCount",
              "ScheduledCount", "ConsumerCount", "MessagesAdded", "MessagesAcknowledged",
              "MessagesKilled", "MessagesExpired", "FirstMessageTimestamp", "FirstMessageAge")
INTERNAL_PREFIXES = ("$sys.", "activemq.management", "activemq.notifications")
EXPIRY_QUEUES = ("ExpiryQueue",)
MAX_ANSWER = 32 * 2**20  # bytes of one Jolokia answer


class JolokiaError(Exception):
    """Jolokia did not answer as it should (the reason says how)."""


@dataclass(frozen=True)
class ArtemisQueueSample:
    """One queue at one poll, as the broker tells it."""

    address: str
    name: str
    routing_type: str
    messages: int  # MessageCount: in the queue, being delivered and scheduled included
    delivering: int
    scheduled: int  # waiting out a redelivery delay (or a scheduled delivery time)
    consumers: int
    added: int
    gone: int  # acknowledged, killed and expired, since the broker started
    first_age_s: float | None  # the head message's age; None when the broker cannot tell

    @property
    def lag(self) -> int:
        """Messages not yet acknowledged."""
        return self.messages

    @property
    def ready(self) -> int:
        """Messages waiting for a consumer now."""
        return max(0, self.messages - self.delivering - self.scheduled)


def count_of(value: Any) -> int:
    """A non-negative count the broker gave; anything else is a malformed queue."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise ValueError(f"not a count: {value!r}"[:200])
    return value


def is_dead_letter_queue(name: str) -> bool:
    """True for the name of a dead-letter queue: DLQ, DLQ.<address>, <queue>.DLQ, <queue>.dlq."""
    return name == "DLQ" or name.startswith("DLQ.") or name.endswith((".DLQ", ".dlq"))


def is_internal(name: str, address: str) -> bool:
    """True for the broker's own queues, which no application reads."""
    return name.startswith(INTERNAL_PREFIXES) or address.startswith(INTERNAL_PREFIXES)


def queue_mbeans(answer: Any) -> Mapping[Any, Any]:
    """MBean name -> attributes, from Jolokia's answer to a bulk read of every queue
    (QUEUES_MBEAN); JolokiaError when the answer is no such read."""
    if not isinstance(answer, Mapping):
        raise JolokiaError("Jolokia answered something other than a JSON object")
    if answer.get("status") == 404 and "InstanceNotFound" in str(answer.get("error_type")):
        return {}  # a broker without a single queue
    if answer.get("status") != 200:
        error = str(answer.get("error") or answer.get("status"))[:300]
        raise JolokiaError(f"Jolokia refused the read of the queues: {error}")
    queues = answer.get("value")
    if queues is None:
        return {}
    if not isinstance(queues, Mapping):
        raise JolokiaError("Jolokia's value is not an object of queue MBeans")
    return queues


def queue_samples(answer: Any) -> tuple[list[ArtemisQueueSample], list[str]]:
    """Samples from Jolokia's answer to the bulk read of every queue; and, for each queue
    that could not be read, why (the others are kept)."""
    samples, problems = [], []
    for mbean, queue in queue_mbeans(answer).items():
        try:
            if not isinstance(queue, Mapping):
                raise ValueError("not an object")
            name, address = queue.get("Name"), queue.get("Address")
            if not isinstance(name, str) or not isinstance(address, str):
                raise ValueError("Name or Address is not text")
            if queue.get("Temporary") is True or is_internal(name, address):
                continue
            messages = count_of(queue["MessageCount"])
            stamp, age = queue.get("FirstMessageTimestamp"), queue.get("FirstMessageAge")
            known = isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0 \
                and isinstance(age, int) and not isinstance(age, bool) and age >= 0
            samples.append(ArtemisQueueSample(
                address, name, str(queue.get("RoutingType") or ""), messages,
                count_of(queue["DeliveringCount"]), count_of(queue.get("ScheduledCount", 0)),
                count_of(queue["ConsumerCount"]),
                count_of(queue["MessagesAdded"]),
                sum(count_of(queue[k]) for k in ("MessagesAcknowledged", "MessagesKilled",
                                               "MessagesExpired")),
                age / 1000 if known else None))
        except (KeyError, ValueError, TypeError) as exc:
            problems.append(f"queue MBean {str(mbean)[:300]!r}: {exc}")
    return samples, problems


class ArtemisLag(BacklogWindows):
    """Keeps a window of polls per queue and turns samples into lag rows and groups; parked
    names the queues where messages are meant to stay (dead-letter and expiry queues)."""

    def __init__(self, window: int = 10,
                 parked: Callable[[str], bool] = lambda name: is_dead_letter_queue(name)
                 or name in EXPIRY_QUEUES) -> None:
        super().__init__(window)
        self.parked = parked

    def rows(self, samples: Sequence[ArtemisQueueSample], now_s: float
             ) -> tuple[list[LagRow], list[GroupLag]]:
        """The lag rows and group figures of one poll; queues gone since are forgotten."""
        rows, groups = [], []
        for sample in samples:
            window = self.observe((sample.address, sample.name), now_s, sample.gone, sample.lag)
            row = LagRow(sample.name, sample.address, None, sample.gone,
                         sample.gone + sample.lag, sample.lag, _lag_seconds(sample),
                         self._status(sample, window, now_s), now_s, ACTIVEMQ, sample.ready,
                         sample.delivering, sample.consumers)
            rows.append(row)
            groups.append(single_group(row, window, now_s))
        self.end_poll()
        return rows, groups

    def _status(self, sample: ArtemisQueueSample, window: PartitionWindow, now_s: float
                ) -> PartitionStatus:
        if sample.lag == 0:
            return PartitionStatus.OK
        if sample.consumers == 0:
            return PartitionStatus.OK if self.parked(sample.name) else PartitionStatus.STOP
        return window.status(now_s)


def _lag_seconds(sample: ArtemisQueueSample) -> float | None:
    return 0.0 if sample.ready == 0 else sample.first_age_s


class JolokiaClient:
    """POSTs requests to an Artemis broker's Jolokia (URL with user and password): basic auth
    (UTF-8), the Origin header Jolokia checks, answers bounded to MAX_ANSWER bytes."""

    def __init__(self, management_url: str, *, timeout_s: float = 10.0) -> None:
        url = URL(management_url)
        self.password = url.password or ""
        self.url = url.with_user(None).with_password(None)
        self.where = redact_url(management_url)
        self.headers = {"Origin": str(self.url.origin()), "Accept": "application/json"}
        if url.user is not None:
            token = f"{url.user}:{self.password}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP session."""
        self.session = aiohttp.ClientSession(timeout=self.timeout, headers=self.headers)

    async def stop(self) -> None:
        """Close it."""
        if self.session is not None:
            await self.session.close()

    def without_password(self, text: str) -> str:
        """text with the password, should it be in it, replaced by '***'."""
        return text.replace(self.password, "***") if self.password else text

    async def post(self, body: object) -> Any:
        """Jolokia's JSON answer to one request (or a list of them); JolokiaError when it
        refuses the credentials or answers something else than JSON."""
        assert self.session is not None, "start() first"
        async with self.session.post(self.url, json=body) as response:
            if response.status in (401, 403):
                raise JolokiaError(f"{self.url} refused the credentials (HTTP "
                                   f"{response.status}); set them in the management URL")
            if response.status != 200:
                raise JolokiaError(f"{self.url} answered HTTP {response.status}")
            raw = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                raw += chunk
                if len(raw) > MAX_ANSWER:
                    raise JolokiaError(f"{self.url} answered more than {MAX_ANSWER} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise JolokiaError(f"{self.url} answered something other than JSON: {exc}"
                               ) from None


class ArtemisPoller:
    """Polls an Artemis broker's Jolokia (URL with user and password) for its queues."""

    def __init__(self, management_url: str, *, window: int = 10, timeout_s: float = 10.0,
                 dead_letter: Callable[[str], bool] = is_dead_letter_queue) -> None:
        self.client = JolokiaClient(management_url, timeout_s=timeout_s)
        self.lag = ArtemisLag(window, lambda name: dead_letter(name) or name in EXPIRY_QUEUES)
        self.skipped = 0  # queues left out of a poll: malformed in the answer

    async def start(self) -> None:
        """Open the HTTP session."""
        await self.client.start()

    async def stop(self) -> None:
        """Close it."""
        await self.client.stop()

    async def poll(self, now_s: float | None = None) -> tuple[list[LagRow], list[GroupLag]]:
        """One round over every queue."""
        samples, problems = queue_samples(await self.client.post(
            {"type": "read", "mbean": QUEUES_MBEAN, "attribute": list(ATTRIBUTES),
             "config": {"ignoreErrors": True}}))
        for problem in problems:
            self.skipped += 1
            log.warning("artemis lag: skipped %s (from %s)", problem, self.client.where)
        return self.lag.rows(samples, time.time() if now_s is None else now_s)
