"""Poll every consumer group: committed offsets, log-end offsets, lag, lag in seconds, status.

Lag is computed as Kafka's ConsumerGroupCommand computes it (log-end offset minus committed
offset, per partition the group has committed). A group whose coordinator is moving is asked
again; one that still fails is logged and skipped this round (its last figures stay), never
reported as zero lag. A failing group never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from collectors.lag.offsets import compute_lag
from collectors.lag.status import Observation, PartitionWindow, Trend, group_lag, trend
from collectors.lag.timelag import EndOffsetTable, lag_seconds
from store.records import GroupLag, LagRow
from store.vocabulary import PartitionStatus

log = logging.getLogger(__name__)
RETRIES = 3
# Reading a message's own time costs a fetch: a poll spends at most this long on them, and
# the partitions it did not reach get theirs at the next polls.
LOOKUP_BUDGET_S = 1.0
TOPICS_PER_REQUEST = 20


@dataclass
class _PartitionState:
    window: PartitionWindow
    table: EndOffsetTable = field(default_factory=EndOffsetTable)


class LagPoller:
    """Keeps, per group and partition, the window and end-offset table the figures need."""

    def __init__(self, bootstrap: str, *, window: int = 10, timeout_s: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.window = window
        self.timeout_s = timeout_s
        self.state: dict[tuple[str, str, int], _PartitionState] = {}
        self.tables: dict[TopicPartition, EndOffsetTable] = {}
        self.admin: AIOKafkaAdminClient | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.reader: AIOKafkaConsumer | None = None
        # The time a message was written never changes: read it once per committed offset.
        self.message_times: dict[TopicPartition, tuple[int, float | None]] = {}
        self.skipped_groups = 0  # groups left out of a poll on an unexpected error

    async def start(self) -> None:
        """Connect (the admin client and an offsets-only consumer without a group)."""
        timeout_ms = int(self.timeout_s * 1000)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap,
                                         request_timeout_ms=timeout_ms)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                         enable_auto_commit=False,
                                         request_timeout_ms=timeout_ms)
        self.reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                       enable_auto_commit=False, fetch_max_bytes=1 << 20,
                                       max_partition_fetch_bytes=1 << 20,
                                       request_timeout_ms=timeout_ms)
        await asyncio.wait_for(self.admin.start(), self.timeout_s)
        await asyncio.wait_for(self.consumer.start(), self.timeout_s)
        await asyncio.wait_for(self.reader.start(), self.timeout_s)

    async def stop(self) -> None:
        """Disconnect."""
        for client in (self.reader, self.consumer, self.admin):
            if client is not None:
                try:
                    await (client.stop() if isinstance(client, AIOKafkaConsumer)
                           else client.close())
                except KafkaError:
                    log.debug("lag poller: close failed", exc_info=True)

    async def poll(self, now_s: float | None = None) -> tuple[list[LagRow], list[GroupLag]]:
        """One round over every group."""
        assert self.admin is not None, "start() first"
        assert self.consumer is not None, "start() first"
        now_s = time.time() if now_s is None else now_s
        listed = await asyncio.wait_for(self.admin.list_consumer_groups(), self.timeout_s)
        groups = sorted({str(g[0]) for g in listed})
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in groups:
            offsets = await self._group_offsets(group)
            if offsets is not None:
                committed[group] = offsets
        tps = sorted({tp for offsets in committed.values() for tp in offsets})
        ends = await self._end_offsets(tps)
        for tp, end in ends.items():
            self.tables.setdefault(tp, EndOffsetTable()).add(end, now_s)
        rows: list[LagRow] = []
        lookup_deadline = time.monotonic() + LOOKUP_BUDGET_S
        for group, offsets in committed.items():
            try:
                rows += [await self._row(group, tp, offsets[tp], end=ends.get(tp), now_s=now_s,
                                         may_look_up=time.monotonic() < lookup_deadline)
                         for tp in sorted(offsets)]
            except (KafkaError, TimeoutError, OSError):
                raise
            except Exception:  # one group's odd figures must not cost every group its poll
                self.skipped_groups += 1
                log.exception("lag: skipped group %r this round", group)
        return rows, self._groups(rows, now_s)

    async def _group_offsets(self, group: str) -> dict[TopicPartition, int] | None:
        assert self.admin is not None
        delay = 0.2
        for attempt in range(1, RETRIES + 1):
            try:
                fetched = await asyncio.wait_for(
                    self.admin.list_consumer_group_offsets(group), self.timeout_s)
                return {tp: meta.offset for tp, meta in fetched.items() if meta.offset >= 0}
            except (KafkaError, TimeoutError) as exc:
                if attempt == RETRIES:
                    log.warning("lag: group %s skipped this round: %s", group,
                                type(exc).__name__)
                    return None
                await asyncio.sleep(delay)
                delay *= 2
        return None

    async def _end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Log-end offsets, asked a few topics at a time: one request for every partition of
        a large cluster can outlast any timeout, and one vanished topic must not hide the
        others."""
        by_topic: dict[str, list[TopicPartition]] = {}
        for tp in tps:
            by_topic.setdefault(tp.topic, []).append(tp)
        topics = sorted(by_topic)
        await self._track_topics(topics)
        ends: dict[TopicPartition, int] = {}
        for start in range(0, len(topics), TOPICS_PER_REQUEST):
            chunk = topics[start:start + TOPICS_PER_REQUEST]
            try:
                ends.update(await self._ends_of([tp for t in chunk for tp in by_topic[t]]))
            except (KafkaError, TimeoutError):
                for topic in chunk:
                    try:
                        ends.update(await self._ends_of(by_topic[topic]))
                    except (KafkaError, TimeoutError) as exc:
                        log.warning("lag: end offsets of %s unavailable: %s", topic,
                                    type(exc).__name__)
        return ends

    async def _track_topics(self, topics: list[str]) -> None:
        """Fetch metadata for all these topics in one request. Left to itself, aiokafka's
        end_offsets learns of unknown topics one metadata refresh at a time (with a 100 ms
        backoff each): a minute for the first poll of a cluster with 600 topics."""
        assert self.consumer is not None
        client = getattr(self.consumer, "_client", None)
        if client is None or not hasattr(client, "set_topics"):
            return  # another aiokafka: end_offsets still works, only slower the first time
        known = getattr(client, "_topics", set())
        if set(topics) - known:
            await asyncio.wait_for(client.set_topics(set(known) | set(topics)), self.timeout_s)

    async def _ends_of(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        assert self.consumer is not None
        return await asyncio.wait_for(self.consumer.end_offsets(tps), self.timeout_s)

    async def _row(self, group: str, tp: TopicPartition, committed: int, *, end: int | None,
                   now_s: float, may_look_up: bool) -> LagRow:
        key = (group, tp.topic, tp.partition)
        state = self.state.get(key)
        if state is None:
            state = self.state[key] = _PartitionState(PartitionWindow(self.window))
        seconds = None
        if end is not None:
            state.window.add(Observation(now_s, committed, end))
            table = self.tables[tp]
            seconds = lag_seconds(table, committed, end, now_s)
            if seconds is None and committed < end and may_look_up:
                written = await self._message_time(tp, committed)
                seconds = lag_seconds(table, committed, end, now_s, written)
        status = state.window.status(now_s) if end is not None else PartitionStatus.OK
        return LagRow(group, tp.topic, tp.partition, committed, end,
                      compute_lag(committed, end), seconds, status, now_s)

    async def _message_time(self, tp: TopicPartition, offset: int) -> float | None:
        """The timestamp of the message at offset (None when it cannot be read quickly)."""
        cached = self.message_times.get(tp)
        if cached is not None and cached[0] == offset:
            return cached[1]
        assert self.reader is not None
        written = None
        try:
            self.reader.assign([tp])
            self.reader.seek(tp, offset)
            batch = await asyncio.wait_for(
                self.reader.getmany(tp, timeout_ms=500, max_records=1), self.timeout_s)
            records = batch.get(tp, [])
            written = records[0].timestamp / 1000 if records else None
        except (KafkaError, TimeoutError) as exc:
            log.debug("lag: cannot read %s@%d: %s", tp, offset, exc)
        self.message_times[tp] = (offset, written)
        return written

    def _groups(self, rows: list[LagRow], now_s: float) -> list[GroupLag]:
        by_group: dict[str, list[LagRow]] = {}
        for row in rows:
            by_group.setdefault(row.group, []).append(row)
        return [group_lag(group, members,
                          [t for r in members if (t := self._trend(r)) is not None], now_s)
                for group, members in sorted(by_group.items())]

    def _trend(self, row: LagRow) -> Trend | None:
        state = self.state.get((row.group, row.topic, row.partition))
        return trend(list(state.window.entries)) if state else None
