"""portal: the customer portal's live tracking status, from core NATS.

It subscribes to `tracking.status.*` in the queue group `portal` (several portals would share
the updates) and keeps the latest status of each order. Core NATS keeps nothing: an update
published while no portal listens is gone, so this hop never has a backlog; nothing is
acknowledged. An update it cannot read is logged, counted and dropped.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

from demo_services import subjects
from demo_services.nats_consumer import CoreHandler, CoreMessage, CoreSubscriber
from demo_services.nats_link import NatsLink
from demo_services.runtime import Service, main

log = logging.getLogger(__name__)
KEEP_ORDERS = 100_000
REPORT_EVERY = 100


def make_handler(service: Service) -> CoreHandler:
    """Record one order's latest status (log every REPORT_EVERY updates)."""
    latest: OrderedDict[str, dict[str, Any]] = OrderedDict()
    updates = 0

    async def handle(message: CoreMessage) -> None:
        nonlocal updates
        message.require("order_id", "status")
        order_id = str(message.payload["order_id"])
        latest[order_id] = {"status": message.payload["status"],
                            "region": message.payload.get("region"),
                            "updated_at": message.payload.get("updated_at")}
        latest.move_to_end(order_id)
        while len(latest) > KEEP_ORDERS:
            latest.popitem(last=False)
        updates += 1
        if updates % REPORT_EVERY == 0:
            log.info("%s: %d status updates, %d orders followed", service.name, updates,
                     len(latest))

    return handle


async def listen(service: Service) -> None:
    """The status subscription, on a link of its own."""
    config = service.config
    if not config.nats_url:
        raise ValueError(f"{service.name} subscribes to NATS: set FLOWSCOPE_DEMO_NATS_URL")
    link = NatsLink(config, service.name, service.tracer)
    template = subjects.subject(config, subjects.STATUS_TEMPLATE)
    try:
        await CoreSubscriber(service, link, template, template, subjects.PORTAL,
                             make_handler(service)).run()
    finally:
        await link.close()


def tasks(service: Service) -> list[Awaitable[None]]:
    """One subscriber of the live status subjects."""
    return [listen(service)]


if __name__ == "__main__":
    main("portal", tasks)
