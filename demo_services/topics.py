"""The demo system's topics, and their creation."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from demo_services.config import DemoConfig

log = logging.getLogger(__name__)

# File pipeline: upload -> process (retry, dead letter) -> notify by webhook (retry).
FILES_UPLOADED = "files.uploaded"
FILES_RETRY = "files.uploaded.retry"
FILES_PROCESSED = "files.processed"
FILES_CALLBACK_RETRY = "files.callback.retry"
FILES_NOTIFIED = "files.notified"
FILES_DLQ = "files.dlq"
# Order saga (choreography): placed -> charged -> reserved -> dispatched -> completed,
# or reservation failed -> refunded -> cancelled.
ORDERS_PLACED = "orders.placed"
PAYMENTS_CHARGED = "payments.charged"
INVENTORY_RESERVED = "inventory.reserved"
INVENTORY_FAILED = "inventory.failed"
SHIPPING_DISPATCHED = "shipping.dispatched"
PAYMENTS_REFUNDED = "payments.refunded"
ORDERS_COMPLETED = "orders.completed"
ORDERS_CANCELLED = "orders.cancelled"
ORDERS_DLQ = "orders.dlq"
# Commands to the services themselves (pause a consumer group), from the load generator.
CONTROL = "demo.control"

# Dead-letter and control topics keep one partition: their order is the story.
SINGLE_PARTITION = {FILES_DLQ, ORDERS_DLQ, CONTROL}
ALL_TOPICS = [FILES_UPLOADED, FILES_RETRY, FILES_PROCESSED, FILES_CALLBACK_RETRY, FILES_NOTIFIED,
              FILES_DLQ, ORDERS_PLACED, PAYMENTS_CHARGED, INVENTORY_RESERVED, INVENTORY_FAILED,
              SHIPPING_DISPATCHED, PAYMENTS_REFUNDED, ORDERS_COMPLETED, ORDERS_CANCELLED,
              ORDERS_DLQ, CONTROL]


async def ensure_topics(config: DemoConfig, timeout_s: float = 30.0) -> list[str]:
    """Create every demo topic that does not exist yet; return the full names."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.bootstrap)
    await admin.start()
    try:
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
        wanted = [NewTopic(config.topic(name), 1 if name in SINGLE_PARTITION else config.partitions,
                           replication_factor=1)
                  for name in ALL_TOPICS if config.topic(name) not in existing]
        if wanted:
            try:
                await asyncio.wait_for(admin.create_topics(wanted), timeout_s)
            except TopicAlreadyExistsError:
                log.info("topics created concurrently by another process")
        return [config.topic(name) for name in ALL_TOPICS]
    finally:
        await admin.close()
