"""JetStream's dead letters, as the server itself announces them.

A JetStream consumer gives a message up in two ways: it reached the consumer's max-deliver
limit, or a subscriber terminated it (`+TERM`). The server then publishes an advisory on
$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer> or
...MSG_TERMINATED.<stream>.<consumer>, naming the stream sequence. This component subscribes to
both, reads the message from the stream by sequence (its subject, time and headers: the
correlation ID and the traceparent join it to its flow) and records it as a message on that
advisory subject, which the default dead-letter rules match: the flow is dead-lettered and the
message is listed with the dead letters, whatever the application does next.

One malformed advisory, or one message the stream no longer holds, is counted and logged with
its subject; the subscription goes on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import nats
from nats.aio.msg import Msg

from collectors.ingest import headers as hdr
from collectors.ingest.pipeline import Pipeline
from collectors.lag.jetstream import parse_time
from collectors.normalize import as_count
from collectors.supervise import Health
from store.records import MessageRecord

log = logging.getLogger(__name__)
COMPONENT = "jetstream_advisories"
ADVISORIES = ("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
              "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>")
READ_TIMEOUT_S = 2.0
BATCH = 100  # advisories written at once
HEADER_LINE = b"NATS/1.0"


def parse_headers(block: bytes) -> list[tuple[str, bytes]]:
    """A NATS header block ('NATS/1.0\\r\\nName: value\\r\\n...') as (name, value) pairs;
    lines that are not 'name: value' are left out."""
    pairs = []
    for line in block.split(b"\r\n")[1:] if block.startswith(HEADER_LINE) else []:
        name, sep, value = line.partition(b":")
        if sep and name.strip():
            pairs.append((name.strip().decode("utf-8", "replace"), value.strip()))
    return pairs


def advisory_record(subject: str, advisory: Any, message: Mapping[str, Any] | None
                    ) -> MessageRecord:
    """The dead letter an advisory announces, with what the stream still holds of the message
    (None: nothing); ValueError when the advisory is not one."""
    if not isinstance(advisory, Mapping):
        raise ValueError("not a JSON object")
    sequence = as_count(advisory.get("stream_seq"))
    if sequence is None or not isinstance(advisory.get("stream"), str):
        raise ValueError("no stream or stream_seq")
    pairs: list[tuple[str, bytes]] = []
    size = 0
    at_s = parse_time(advisory.get("timestamp"))
    if message is not None:
        raw = message.get("hdrs")
        with contextlib.suppress(ValueError, TypeError):
            pairs = parse_headers(base64.b64decode(raw)) if raw else []
        with contextlib.suppress(ValueError, TypeError):
            size = len(base64.b64decode(message.get("data") or ""))
        at_s = parse_time(message.get("time")) or at_s
    if at_s is None:
        raise ValueError("no time in the advisory or the message")
    reason = advisory.get("reason") or (
        f"max deliveries reached ({advisory.get('deliveries')})"
        if "MAX_DELIVERIES" in subject else "terminated")
    facts = [("dlq-reason", str(reason).encode()),
             ("nats-consumer", str(advisory.get("consumer", "")).encode())]
    if message is not None and isinstance(message.get("subject"), str):
        facts.append(("nats-subject", message["subject"].encode()))
    shown, cut_headers = hdr.bounded_headers([*facts, *pairs])
    correlation, cut_correlation = hdr.header_text(hdr.first_header(pairs, "correlation-id"),
                                                   128)
    return MessageRecord(
        topic=subject[:512], partition=0, offset=sequence, timestamp_ms=int(at_s * 1000),
        key=None, size=size, correlation_id=correlation,
        trace_id=hdr.trace_id_of(hdr.first_header(pairs, "traceparent")),
        retry_attempt=as_count(advisory.get("deliveries")), headers=json.dumps(shown),
        truncated=cut_headers or cut_correlation)


async def _read_message(client: Any, stream: str, sequence: int) -> Mapping[str, Any] | None:
    """The stream's message at this sequence (None when it is gone or cannot be read)."""
    try:
        answer = await client.request(f"$JS.API.STREAM.MSG.GET.{stream}",
                                      json.dumps({"seq": sequence}).encode(),
                                      timeout=READ_TIMEOUT_S)
        body = json.loads(answer.data)
    except Exception as exc:  # a message gone, a timeout: the advisory is kept without it
        log.info("%s: no message %s:%d to read (%s)", COMPONENT, stream, sequence, exc)
        return None
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, dict) else None


async def run_advisories(nats_url: str, pipeline: Pipeline, health: Health,
                         stopping: asyncio.Event) -> None:
    """Record JetStream's dead letters until stopping; the client reconnects by itself, and
    health says when it is away."""
    queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10_000)

    async def received(msg: Msg) -> None:
        if queue.full():
            pipeline.count(f"{COMPONENT}_dropped")
            return
        queue.put_nowait(msg)

    async def disconnected() -> None:
        health.degraded(COMPONENT, f"NATS {nats_url}: disconnected; reconnecting")

    async def reconnected() -> None:
        health.ok(COMPONENT)

    async def error(exc: Exception) -> None:
        log.warning("%s: NATS %s: %s", COMPONENT, nats_url, exc)

    client = await nats.connect(nats_url, name="flowscope-advisories", connect_timeout=5,
                                max_reconnect_attempts=-1, reconnect_time_wait=1,
                                disconnected_cb=disconnected, reconnected_cb=reconnected,
                                error_cb=error)
    try:
        for subject in ADVISORIES:
            await client.subscribe(subject, cb=received)
        health.ok(COMPONENT)
        while not stopping.is_set():
            batch = await _next_batch(queue, stopping)
            if batch:
                await _record(client, batch, pipeline)
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def _next_batch(queue: asyncio.Queue[Msg], stopping: asyncio.Event) -> list[Msg]:
    """What arrived, up to BATCH, waiting at most a second for the first."""
    try:
        first = await asyncio.wait_for(queue.get(), 1.0)
    except TimeoutError:
        return []
    batch = [first]
    while len(batch) < BATCH and not queue.empty() and not stopping.is_set():
        batch.append(queue.get_nowait())
    return batch


async def _record(client: Any, batch: Sequence[Msg], pipeline: Pipeline) -> None:
    records = []
    for msg in batch:
        try:
            advisory = json.loads(msg.data)
            stream = advisory.get("stream") if isinstance(advisory, dict) else None
            sequence = as_count(advisory.get("stream_seq")) if isinstance(advisory, dict) \
                else None
            message = await _read_message(client, stream, sequence) \
                if isinstance(stream, str) and sequence is not None else None
            records.append(advisory_record(msg.subject, advisory, message))
        except (ValueError, TypeError) as exc:
            pipeline.count(f"{COMPONENT}_malformed")
            log.warning("%s: skipped a malformed advisory on %s: %s (first bytes %r)",
                        COMPONENT, msg.subject[:200], exc, msg.data[:80])
    if records:
        await pipeline.write_messages(records)
        pipeline.count(f"{COMPONENT}_dead_letters", len(records))
