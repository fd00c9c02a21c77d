"""Backlog of RabbitMQ queues, from the management plugin's HTTP API, in the figures a Kafka
group has: lag in messages, lag in seconds, trend, time to drain and a Burrow-style status.

- A queue's lag is its messages not yet acknowledged: ready plus unacknowledged, as a Kafka
  group's lag includes what its consumers are processing.
- Lag in seconds is the age of the oldest ready message, from head_message_timestamp (the
  AMQP timestamp property of the message at the head; a producer that does not set it leaves
  it unknown); 0 when nothing is ready.
- The status reads a window of polls as Burrow reads commits, with the messages acknowledged
  so far (ack, deliver and get without ack) as the committed offset: OK; WARN when the
  backlog has not gone down over the window; STALL when consumers are attached but have
  acknowledged nothing over it; STOP when there is a backlog and no consumer at all.

One odd queue is counted and skipped, never the whole poll; a queue without statistics yet
(just declared) waits for the next poll; the API's own failures (down, 401, timeouts) are the
caller's to log and retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from collectors.lag.status import BacklogWindows, PartitionWindow, single_group
from store.records import GroupLag, LagRow
from store.vocabulary import RABBITMQ, PartitionStatus

log = logging.getLogger(__name__)
QUEUE_COLUMNS = ("name", "vhost", "messages_ready", "messages_unacknowledged", "consumers",
                 "head_message_timestamp", "message_stats.ack", "message_stats.deliver_no_ack",
                 "message_stats.get_no_ack")
BINDING_COLUMNS = ("source", "vhost", "destination", "destination_type")
ACKED = ("ack", "deliver_no_ack", "get_no_ack")
# Figures a queue's row needs: the API leaves them out until the queue's first statistics.
STATISTICS = ("messages_ready", "messages_unacknowledged", "consumers")


class ManagementError(Exception):
    """The management API did not answer as it should (the reason says how)."""


@dataclass(frozen=True)
class QueueSample:
    """One queue at one poll, as the management API tells it."""

    vhost: str
    name: str
    ready: int
    unacknowledged: int
    consumers: int
    acknowledged: int  # so far, since the queue's statistics began
    head_timestamp_s: float | None
    exchange: str  # the exchange that feeds it (the first bound, by name), else the queue

    @property
    def lag(self) -> int:
        """Messages not yet acknowledged."""
        return self.ready + self.unacknowledged

    @property
    def group(self) -> str:
        """The queue's name in lag rows: its name, prefixed by its virtual host unless '/'."""
        return self.name if self.vhost == "/" else f"{self.vhost}/{self.name}"


def _count(value: Any) -> int:
    """A non-negative count the API gave; anything else is a malformed queue."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}"[:200])
    return value


def _fed_by(bindings: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """(vhost, queue) -> the first exchange bound to it by name; the default exchange, which
    every queue is bound to, is left out."""
    fed: dict[tuple[str, str], str] = {}
    for binding in bindings:
        if not isinstance(binding, Mapping):
            continue
        source, vhost = binding.get("source"), binding.get("vhost")
        destination = binding.get("destination")
        if binding.get("destination_type") != "queue" or not source or \
                not isinstance(source, str) or not isinstance(destination, str) or \
                not isinstance(vhost, str):
            continue
        key = (vhost, destination)
        if key not in fed or source < fed[key]:
            fed[key] = source
    return fed


def queue_samples(queues: Any, bindings: Any) -> tuple[list[QueueSample], list[str]]:
    """Samples from the JSON of /api/queues and /api/bindings; and, for each queue that could
    not be read, why (the others are kept)."""
    if not isinstance(queues, list) or not isinstance(bindings, list):
        raise ManagementError("the management API answered something other than a list")
    fed = _fed_by(bindings)
    samples, problems = [], []
    for queue in queues:
        try:
            if not isinstance(queue, Mapping):
                raise ValueError("not an object")
            name, vhost = queue["name"], queue["vhost"]
            if not isinstance(name, str) or not isinstance(vhost, str):
                raise ValueError("name or vhost is not text")
            if any(queue.get(k) is None for k in STATISTICS):
                continue  # a queue just made has no statistics yet: next poll
            stats = queue.get("message_stats") or {}
            if not isinstance(stats, Mapping):
                raise ValueError("message_stats is not an object")
            head = queue.get("head_message_timestamp")
            if isinstance(head, bool) or not isinstance(head, int | float) or head <= 0:
                head = None
            samples.append(QueueSample(
                vhost, name, _count(queue["messages_ready"]),
                _count(queue["messages_unacknowledged"]), _count(queue["consumers"]),
                sum(_count(stats.get(k, 0)) for k in ACKED), head,
                fed.get((vhost, name), name)))
        except (KeyError, ValueError, TypeError) as exc:
            where = queue.get("name") if isinstance(queue, Mapping) else None
            problems.append(f"queue {str(where)[:200]!r}: {exc}")
    return samples, problems


class QueueLag(BacklogWindows):
    """Keeps a window of polls per queue and turns samples into lag rows and groups."""

    def rows(self, samples: Sequence[QueueSample], now_s: float
             ) -> tuple[list[LagRow], list[GroupLag]]:
        """The lag rows and group figures of one poll; queues gone since are forgotten."""
        rows, groups = [], []
        for sample in samples:
            window = self.observe((sample.vhost, sample.name), now_s, sample.acknowledged,
                                  sample.lag)
            row = LagRow(sample.group, sample.exchange, None, None, None, sample.lag,
                         _lag_seconds(sample, now_s), _status(sample, window, now_s), now_s,
                         RABBITMQ, sample.ready, sample.unacknowledged, sample.consumers)
            rows.append(row)
            groups.append(single_group(row, window, now_s))
        self.end_poll()
        return rows, groups


def _lag_seconds(sample: QueueSample, now_s: float) -> float | None:
    if sample.ready == 0:
        return 0.0
    if sample.head_timestamp_s is None:
        return None
    return max(0.0, now_s - sample.head_timestamp_s)


def _status(sample: QueueSample, window: PartitionWindow, now_s: float) -> PartitionStatus:
    if sample.lag == 0:
        return PartitionStatus.OK
    if sample.consumers == 0:
        return PartitionStatus.STOP
    return window.status(now_s)


class QueuePoller:
    """Polls a RabbitMQ management API (URL with user and password; guest:guest when none)."""

    def __init__(self, management_url: str, *, window: int = 10, timeout_s: float = 10.0
                 ) -> None:
        url = URL(management_url)
        self.auth = aiohttp.BasicAuth(url.user or "guest", url.password or "guest")
        bare = url.with_user(None).with_password(None)
        # A management API behind a path prefix keeps it: api/... is joined under it.
        self.base = bare if bare.path.endswith("/") else bare.with_path(bare.path + "/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.lag = QueueLag(window)
        self.session: aiohttp.ClientSession | None = None
        self.skipped = 0  # queues left out of a poll: malformed in the API's answer

    async def start(self) -> None:
        """Open the HTTP session."""
        self.session = aiohttp.ClientSession(auth=self.auth, timeout=self.timeout)

    async def stop(self) -> None:
        """Close it."""
        if self.session is not None:
            await self.session.close()

    async def poll(self, now_s: float | None = None) -> tuple[list[LagRow], list[GroupLag]]:
        """One round over every queue."""
        queues, bindings = await asyncio.gather(
            self._get("api/queues", QUEUE_COLUMNS), self._get("api/bindings", BINDING_COLUMNS))
        samples, problems = queue_samples(queues, bindings)
        for problem in problems:
            self.skipped += 1
            log.warning("rabbitmq lag: skipped %s (from %s)", problem, self.base)
        return self.lag.rows(samples, time.time() if now_s is None else now_s)

    async def _get(self, path: str, columns: Sequence[str]) -> Any:
        assert self.session is not None, "start() first"
        url = self.base.join(URL(path)).with_query(columns=",".join(columns))
        async with self.session.get(url) as response:
            if response.status in (401, 403):
                raise ManagementError(f"{self.base} refused the credentials (HTTP "
                                      f"{response.status}); set them in the management URL")
            if response.status != 200:
                raise ManagementError(f"{url} answered HTTP {response.status}")
            try:
                return await response.json(content_type=None)
            except ValueError as exc:
                raise ManagementError(f"{url} answered something other than JSON: {exc}"
                                      ) from None

