"""A store seeded with known flows, lag and tapped messages, for the dashboard's tests and
benchmarks. Times are relative to the moment of seeding, so every window includes them."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from base.settings import Settings
from store.records import GroupLag, LagRow, MessageRecord, SpanRecord
from tests.store_writer import open_settings_store

HOSTILE = "<img src=x onerror=alert(1)>"
COMPLETED = ("upload-1", "upload-2", "upload-3")
DEAD = "upload-dead"
SLOW = "upload-slow"  # waits ten minutes in the retry topic
DEAD_KEY = "file-dead.bin"
RETRY_WAIT_S = 600


@dataclass
class Seeded:
    """What was written, for assertions."""

    path: Path
    now_ns: int
    dead_trace_id: str
    dead_message_id: str


class _Writer:
    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns
        self.spans: list[SpanRecord] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def hop(self, flow: str, trace: str, producer: str, topic: str, consumer: str | None, *,
            at_s: float, queue_ms: float = 40.0, work_ms: float = 10.0, error: bool = False,
            attempt: int | None = None, key: str | None = None, partition: int = 0) -> str:
        """A send and (when consumer is given) its processing; returns the message id."""
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        message_id = f"{topic}.{partition}.{offset}"
        start = self.now_ns - int(at_s * 1e9)
        send_id = secrets.token_hex(8)
        self.spans.append(SpanRecord(
            trace, send_id, None, (), producer, f"send {topic}", "producer", start,
            start + 2_000_000, False, None, "send", "kafka", topic, partition, offset,
            message_id, None, flow, key, attempt, None))
        if consumer:
            begin = start + 2_000_000 + int(queue_ms * 1e6)
            self.spans.append(SpanRecord(
                trace, secrets.token_hex(8), send_id, ((trace, send_id),), consumer,
                f"process {topic}", "consumer", begin, begin + int(work_ms * 1e6), error,
                "ValueError" if error else None, "process", "kafka", topic, partition, offset,
                message_id, consumer, flow, key, attempt, None))
        return message_id


def seed_store(path: Path, settings: Settings) -> Seeded:
    """Write the known flows, lag and tapped messages into a fresh store at path."""
    now_ns = time.time_ns()
    writer = _Writer(now_ns)
    for index, flow in enumerate(COMPLETED):
        trace = secrets.token_hex(16)
        writer.hop(flow, trace, "uploads", "files.uploaded", "processor", at_s=120 - index,
                   partition=index % 2)
        writer.hop(flow, trace, "processor", "files.notified", "notifier", at_s=119 - index)
    dead_trace = secrets.token_hex(16)
    writer.hop(DEAD, dead_trace, "uploads", "files.uploaded", "processor", at_s=90, error=True,
               key=DEAD_KEY)
    writer.hop(DEAD, dead_trace, "processor", "files.uploaded.retry", "processor", at_s=89,
               error=True, attempt=2)
    dead_message = writer.hop(DEAD, dead_trace, "processor", "files.dlq", None, at_s=88,
                              key=DEAD_KEY)
    slow_trace = secrets.token_hex(16)
    writer.hop(SLOW, slow_trace, "uploads", "files.uploaded", "processor", at_s=RETRY_WAIT_S + 60,
               error=True)
    writer.hop(SLOW, slow_trace, "processor", "files.uploaded.retry", "processor",
               at_s=RETRY_WAIT_S + 59, queue_ms=RETRY_WAIT_S * 1000.0, attempt=2)
    writer.hop(SLOW, slow_trace, "processor", "files.notified", "notifier", at_s=58)
    store = open_settings_store(settings)
    try:
        store.write_spans(writer.spans)
        now_s = now_ns / 1e9
        history = []
        for age, lags in ((60, (1, 2)), (30, (3, 4)), (0, (5, 7))):
            history += [LagRow("processor", "files.uploaded", partition, 100, 100 + lag, lag,
                               lag * 0.5, "WARN", now_s - age)
                        for partition, lag in enumerate(lags)]
        store.write_lag(history[:-2], [])
        store.write_lag(history[-2:], [GroupLag("processor", "WARN", "files.uploaded/1", 12,
                                                3.5, 10.0, 2.0, None, now_s)])
        tapped = [MessageRecord("files.uploaded", i % 2, i // 2, now_ns // 1_000_000 - 50_000 + i,
                                f"file-{i}", 10, COMPLETED[i], secrets.token_hex(16) if i < 2
                                else None, None, None, False) for i in range(3)]
        tapped.append(MessageRecord(
            "files.uploaded.retry", 0, 0, now_ns // 1_000_000 - 40_000, DEAD_KEY, 10, DEAD,
            dead_trace, 2, None, False))
        tapped.append(MessageRecord(
            "files.dlq", 0, 0, now_ns // 1_000_000 - 30_000, DEAD_KEY, 10, DEAD, dead_trace,
            2, json.dumps([["correlation-id", DEAD], ["dlq-reason", "disk full"],
                           ["x-note", HOSTILE]]), False))
        store.write_messages(tapped)
    finally:
        store.close()
    return Seeded(path, now_ns, dead_trace, dead_message)
