"""The demo system's NATS subjects, JetStream streams and consumer, and their creation.

Shipments (JetStream: persisted, acknowledged, redelivered): shipping publishes each dispatched
order on `shipments.<region>.dispatched`, captured by the stream `SHIPMENTS`; the tracking
service reads them through the durable pull consumer `tracking` (explicit acks, at most
max_attempts deliveries). What tracking gives up on goes to `shipments.dlq`, captured by
`SHIPMENTS_DLQ`. Live status (core NATS: no persistence, no backlog): tracking publishes on
`tracking.status.<region>`, the portal subscribes to `tracking.status.*` in the queue group
`portal`.

Every subject takes the configuration's topic prefix, as the Kafka topics do; a stream name
cannot hold '.', so its prefix has every character but letters, digits and '_' made '_'.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError

from demo_services.config import DemoConfig
from demo_services.retry import RetryPolicy

log = logging.getLogger(__name__)

REGIONS = ("eu", "us", "ap")
SHIPMENTS = "SHIPMENTS"
SHIPMENTS_DLQ = "SHIPMENTS_DLQ"
SHIPMENTS_TEMPLATE = "shipments.*.dispatched"
SHIPMENTS_DLQ_SUBJECT = "shipments.dlq"
STATUS_TEMPLATE = "tracking.status.*"
TRACKING = "tracking"  # the durable pull consumer of SHIPMENTS
PORTAL = "portal"  # the queue group of the status subscribers
ACK_WAIT_S = 5.0  # a delivery not acknowledged by then is redelivered (after its backoff)
SHIPMENTS_MAX_AGE_S = 24 * 3600.0
DLQ_MAX_AGE_S = 7 * 24 * 3600.0
# A bound by count, not bytes: a stream's max_bytes is reserved against the server's whole
# JetStream store when the stream is made, so a few streams with a byte limit exhaust it.
MAX_STREAM_MESSAGES = 1_000_000
DUPLICATE_WINDOW_S = 120.0  # a re-published Nats-Msg-Id within it is stored once
STREAM_EXISTS_DIFFERENTLY = 10058  # JetStream: stream name already in use, other config
NOT_IN_STREAM_NAME = re.compile(r"[^A-Za-z0-9_]")


def stream_name(config: DemoConfig, name: str) -> str:
    """The full name of a demo stream: the topic prefix, made a valid stream name, then name."""
    return NOT_IN_STREAM_NAME.sub("_", config.topic_prefix) + name


def subject(config: DemoConfig, template: str, region: str | None = None) -> str:
    """The full subject of a template (its `*` the region, when given)."""
    return config.topic(template if region is None else template.replace("*", region))


def region_of(order_id: str) -> str:
    """The region an order ships from: a stable hash of its ID over REGIONS."""
    digest = hashlib.blake2b(order_id.encode("utf-8", "replace"), digest_size=8).digest()
    return REGIONS[int.from_bytes(digest, "big") % len(REGIONS)]


def redelivery_backoff_s(policy: RetryPolicy, ack_wait_s: float = ACK_WAIT_S) -> list[float]:
    """The consumer's redelivery backoff (seconds) after each delivery but the last that went
    unacknowledged: the ack wait plus the retry policy's backoff for that attempt.

    JetStream waits backoff[0] instead of the ack wait for the first ack, so every entry holds
    the whole ack wait: a slow delivery is never redelivered while it is still handled."""
    return [round(ack_wait_s + policy.backoff_ms(attempt) / 1000, 3)
            for attempt in range(1, policy.max_attempts)]


def stream_configs(config: DemoConfig) -> list[StreamConfig]:
    """SHIPMENTS and SHIPMENTS_DLQ: on file, limits retention, old messages discarded first."""
    def one(name: str, template: str, max_age_s: float) -> StreamConfig:
        return StreamConfig(name=stream_name(config, name), subjects=[subject(config, template)],
                            storage=StorageType.FILE, retention=RetentionPolicy.LIMITS,
                            discard=DiscardPolicy.OLD, max_age=max_age_s,
                            max_msgs=MAX_STREAM_MESSAGES, duplicate_window=DUPLICATE_WINDOW_S,
                            num_replicas=1)
    return [one(SHIPMENTS, SHIPMENTS_TEMPLATE, SHIPMENTS_MAX_AGE_S),
            one(SHIPMENTS_DLQ, SHIPMENTS_DLQ_SUBJECT, DLQ_MAX_AGE_S)]


def consumer_config(config: DemoConfig) -> ConsumerConfig:
    """The durable pull consumer `tracking`: explicit acks, max_attempts deliveries at most,
    redelivery backoff from the retry policy."""
    policy = RetryPolicy.of(config)
    backoff = redelivery_backoff_s(policy)
    return ConsumerConfig(name=TRACKING, durable_name=TRACKING, ack_policy=AckPolicy.EXPLICIT,
                          deliver_policy=DeliverPolicy.ALL,
                          ack_wait=backoff[0] if backoff else ACK_WAIT_S,
                          max_deliver=policy.max_attempts, backoff=backoff or None,
                          filter_subject=subject(config, SHIPMENTS_TEMPLATE))


async def ensure_jetstream(js: JetStreamContext, config: DemoConfig, timeout_s: float = 10.0
                           ) -> None:
    """Create, or update to this configuration, both streams and the tracking consumer
    (idempotent: every service that uses JetStream calls it when it connects)."""
    async with asyncio.timeout(timeout_s):
        for wanted in stream_configs(config):
            try:
                await js.add_stream(wanted)
            except APIError as exc:
                if exc.err_code != STREAM_EXISTS_DIFFERENTLY:
                    raise
                log.info("stream %s exists with another configuration; updating it",
                         wanted.name)
                await js.update_stream(wanted)
        await js.add_consumer(stream_name(config, SHIPMENTS), consumer_config(config))
