"""Backlog of NATS JetStream consumers, in the figures a Kafka group has: lag in messages, lag
in seconds, trend, time to drain and a Burrow-style status.

- The counts come from the server's monitoring endpoint, /jsz with consumers: per durable
  consumer num_pending (messages not delivered yet) and num_ack_pending (delivered, not yet
  acknowledged), num_redelivered, and the delivered and ack-floor sequences; per stream its last
  sequence.
- A consumer's lag is num_pending + num_ack_pending, as a Kafka group's lag includes what its
  consumers are processing. Its row: group = the consumer, topic = the stream, committed = the
  ack floor's stream sequence, end = the stream's last sequence.
- Lag in seconds is the age of the first unacknowledged message: the stream message after the
  ack floor (the next one of the consumer's filter subject), read through the JetStream API;
  0 when nothing is pending. Its time is remembered until the ack floor moves, so a consumer
  that stands still costs one read, not one per poll.
- The status reads a window of polls as Burrow reads commits, with the ack floor's consumer
  sequence as the committed offset: a consumer that stops acknowledging goes STALL, then STOP;
  one that falls behind, WARN.

One odd consumer is counted and skipped, never the whole poll; a consumer deleted between
polls is forgotten; the endpoint's own failures (down, timeouts, nonsense) are the caller's to
log and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import nats
from yarl import URL

from collectors.lag.status import BacklogWindows, single_group
from store.records import GroupLag, LagRow
from store.vocabulary import NATS, PartitionStatus

log = logging.getLogger(__name__)
JSZ_QUERY = {"accounts": "true", "streams": "true", "consumers": "true", "config": "true"}
AGE_READS = 16  # stream reads in flight at once
AGE_TIMEOUT_S = 2.0
MAX_REMEMBERED = 10_000  # message times remembered (one per lagging consumer)


class MonitoringError(Exception):
    """The monitoring endpoint did not answer as it should (the reason says how)."""


@dataclass(frozen=True)
class ConsumerSample:
    """One durable consumer at one poll, as /jsz tells it."""

    account: str
    stream: str
    name: str
    pending: int  # not delivered yet
    ack_pending: int  # delivered, not acknowledged
    redelivered: int
    ack_floor_stream: int
    ack_floor_consumer: int
    last_seq: int  # the stream's
    filter_subject: str | None

    @property
    def lag(self) -> int:
        """Messages not yet acknowledged."""
        return self.pending + self.ack_pending

    @property
    def key(self) -> tuple[str, str, str]:
        """What names it: account, stream, consumer."""
        return (self.account, self.stream, self.name)


def _count(value: Any) -> int:
    """A non-negative count the endpoint gave; anything else makes the consumer malformed."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}"[:200])
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is not text")
    return value


def _filter_of(config: Any) -> str | None:
    """The one subject a consumer filters on (None: all of the stream's, or several)."""
    if not isinstance(config, Mapping):
        return None
    subject = config.get("filter_subject")
    if isinstance(subject, str) and subject:
        return subject
    subjects = config.get("filter_subjects")
    if isinstance(subjects, list) and len(subjects) == 1 and isinstance(subjects[0], str):
        return subjects[0]
    return None


def consumer_samples(jsz: Any) -> tuple[list[ConsumerSample], list[str]]:
    """Samples from the JSON of /jsz (accounts, streams, consumers, config); and, for each
    stream or consumer that could not be read, why (the others are kept)."""
    if not isinstance(jsz, Mapping):
        raise MonitoringError("/jsz answered something other than an object")
    accounts = jsz.get("account_details") or []
    if not isinstance(accounts, list):
        raise MonitoringError("/jsz account_details is not a list")
    samples: list[ConsumerSample] = []
    problems: list[str] = []
    for account in accounts:
        if not isinstance(account, Mapping):
            problems.append("an account that is not an object")
            continue
        name = str(account.get("name") or account.get("id") or "$G")[:200]
        for stream in account.get("stream_detail") or []:
            _stream_samples(name, stream, samples, problems)
    return samples, problems


def _stream_samples(account: str, stream: Any, samples: list[ConsumerSample],
                    problems: list[str]) -> None:
    try:
        if not isinstance(stream, Mapping):
            raise ValueError("not an object")
        stream_name = _text(stream.get("name"), "name")
        state = stream.get("state")
        if not isinstance(state, Mapping):
            raise ValueError("state is not an object")
        last_seq = _count(state.get("last_seq", 0))
        consumers = stream.get("consumer_detail") or []
        if not isinstance(consumers, list):
            raise ValueError("consumer_detail is not a list")
    except ValueError as exc:
        where = stream.get("name") if isinstance(stream, Mapping) else None
        problems.append(f"stream {str(where)[:200]!r}: {exc}")
        return
    for consumer in consumers:
        try:
            if not isinstance(consumer, Mapping):
                raise ValueError("not an object")
            floor = consumer.get("ack_floor")
            if not isinstance(floor, Mapping):
                raise ValueError("ack_floor is not an object")
            samples.append(ConsumerSample(
                account, stream_name, _text(consumer.get("name"), "name"),
                _count(consumer.get("num_pending")), _count(consumer.get("num_ack_pending")),
                _count(consumer.get("num_redelivered", 0)),
                _count(floor.get("stream_seq", 0)), _count(floor.get("consumer_seq", 0)),
                last_seq, _filter_of(consumer.get("config"))))
        except ValueError as exc:
            where = consumer.get("name") if isinstance(consumer, Mapping) else None
            problems.append(f"consumer {str(where)[:200]!r} of stream {stream_name!r}: {exc}")


class ConsumerLag(BacklogWindows):
    """Keeps a window of polls per consumer and turns samples into lag rows and groups."""

    def rows(self, samples: Sequence[ConsumerSample], ages_s: Mapping[tuple[str, str, str],
             float | None], now_s: float) -> tuple[list[LagRow], list[GroupLag]]:
        """The lag rows and group figures of one poll (ages_s: the age of each lagging
        consumer's first unacknowledged message, where known); consumers gone are forgotten."""
        rows, groups = [], []
        for sample in samples:
            # A sequence that went down (the consumer or stream made again): a new window.
            window = self.observe(sample.key, now_s, sample.ack_floor_consumer, sample.lag)
            status = PartitionStatus.OK if sample.lag == 0 else window.status(now_s)
            row = LagRow(sample.name, sample.stream, None, sample.ack_floor_stream,
                         sample.last_seq, sample.lag,
                         0.0 if sample.lag == 0 else ages_s.get(sample.key), status, now_s,
                         NATS, sample.pending, sample.ack_pending, None)
            rows.append(row)
            groups.append(single_group(row, window, now_s))
        self.end_poll()
        return rows, groups


def parse_time(text: Any) -> float | None:
    """Seconds since the epoch of an RFC 3339 time as NATS writes it (nanoseconds, Z)."""
    if not isinstance(text, str) or not text:
        return None
    head, _, rest = text.partition(".")
    digits = len(rest) - len(rest.lstrip("0123456789"))
    fraction = rest[:digits]
    zone = rest[digits:] if rest else head[19:]
    try:
        at = datetime.fromisoformat(head[:19] + (zone.replace("Z", "+00:00") or "+00:00"))
    except ValueError:
        return None
    return at.timestamp() + (int(fraction[:9].ljust(9, "0")) / 1e9 if fraction else 0.0)


class JetStreamPoller:
    """Polls a NATS server's /jsz for consumer backlog; reads message ages through a client
    connection to nats_url (without one, lag in seconds is unknown)."""

    def __init__(self, monitoring_url: str, nats_url: str | None, *, window: int = 10,
                 timeout_s: float = 10.0) -> None:
        base = URL(monitoring_url)
        self.base = base if base.path.endswith("/") else base.with_path(base.path + "/")
        self.nats_url = nats_url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.lag = ConsumerLag(window)
        self.session: aiohttp.ClientSession | None = None
        self.client: Any = None
        self.times: dict[tuple[str, str, int], float] = {}  # (account, stream, seq) -> time
        self.skipped = 0  # left out of a poll: malformed in the endpoint's answer
        self.failed_reads = 0  # message ages that could not be read

    async def start(self) -> None:
        """Open the HTTP session (the client connection is opened on first need)."""
        self.session = aiohttp.ClientSession(timeout=self.timeout)

    async def stop(self) -> None:
        """Close both."""
        if self.session is not None:
            await self.session.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()

    async def poll(self, now_s: float | None = None) -> tuple[list[LagRow], list[GroupLag]]:
        """One round over every consumer of every stream."""
        samples, problems = consumer_samples(await self._jsz())
        for problem in problems:
            self.skipped += 1
            log.warning("nats lag: skipped %s (from %s)", problem, self.base)
        ages = await self._ages([s for s in samples if s.lag > 0])
        return self.lag.rows(samples, ages, time.time() if now_s is None else now_s)

    async def _jsz(self) -> Any:
        assert self.session is not None, "start() first"
        url = self.base.join(URL("jsz")).with_query(JSZ_QUERY)
        async with self.session.get(url) as response:
            if response.status != 200:
                raise MonitoringError(f"{url} answered HTTP {response.status}")
            try:
                return await response.json(content_type=None)
            except ValueError as exc:
                raise MonitoringError(f"{url} answered something other than JSON: {exc}"
                                      ) from None

    async def _ages(self, lagging: Sequence[ConsumerSample]
                    ) -> dict[tuple[str, str, str], float | None]:
        """The age of each lagging consumer's first unacknowledged message."""
        now = time.time()
        wanted = {s.key: (s.account, s.stream, s.ack_floor_stream + 1) for s in lagging}
        missing = [s for s in lagging if wanted[s.key] not in self.times]
        if missing and self.nats_url is not None:
            limit = asyncio.Semaphore(AGE_READS)
            await asyncio.gather(*(self._read_time(s, limit) for s in missing))
        if len(self.times) > MAX_REMEMBERED:
            keep = set(wanted.values())
            self.times = {k: v for k, v in self.times.items() if k in keep}
        return {key: (max(0.0, now - self.times[first]) if first in self.times else None)
                for key, first in wanted.items()}

    async def _read_time(self, sample: ConsumerSample, limit: asyncio.Semaphore) -> None:
        async with limit:
            try:
                client = await self._client()
                request: dict[str, Any] = {"seq": sample.ack_floor_stream + 1}
                if sample.filter_subject:
                    request["next_by_subj"] = sample.filter_subject
                answer = await client.request(f"$JS.API.STREAM.MSG.GET.{sample.stream}",
                                              json.dumps(request).encode(),
                                              timeout=AGE_TIMEOUT_S)
                body = json.loads(answer.data)
                message = body.get("message") if isinstance(body, dict) else None
                at = parse_time(message.get("time")) if isinstance(message, dict) else None
                if at is None:
                    raise ValueError(f"no message time in the answer: {str(body)[:200]}")
                self.times[(sample.account, sample.stream, sample.ack_floor_stream + 1)] = at
            except Exception as exc:  # one consumer's age fails, never the poll
                self.failed_reads += 1
                log.debug("nats lag: no message age for %s/%s after sequence %d: %s",
                          sample.stream, sample.name, sample.ack_floor_stream,
                          f"{type(exc).__name__}: {exc}"[:300])

    async def _client(self) -> Any:
        if self.client is None or self.client.is_closed:
            assert self.nats_url is not None
            self.client = await nats.connect(self.nats_url, connect_timeout=AGE_TIMEOUT_S,
                                             max_reconnect_attempts=-1, name="flowscope-lag",
                                             allow_reconnect=True)
        return self.client
