"""auditor: keeps an audit trail of rendered thumbnails, from `files.events.audit` (one of
the two queues bound to the fanout exchange `files.events`; the indexer has the other).

It only counts what it records, by event type: the point is the fan-out on the flow map. An
event it cannot read is logged with where it came from, counted and dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable

from demo_services import exchanges
from demo_services.amqp_consumer import Delivery, DeliveryHandler, subscribe
from demo_services.runtime import Service, main

log = logging.getLogger(__name__)
GROUP = "auditor"
REPORT_EVERY = 100


def make_handler(service: Service) -> DeliveryHandler:
    """Record one event in the audit trail (count it by type; log every REPORT_EVERY)."""
    recorded: Counter[str] = Counter()

    async def handle(delivery: Delivery) -> None:
        delivery.require("type", "file_id")
        recorded[str(delivery.payload["type"])] += 1
        if recorded.total() % REPORT_EVERY == 0:
            log.info("%s: %d events audited (%s)", service.name, recorded.total(),
                     dict(recorded))

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """One consumer of the audit queue."""
    return [subscribe(service, exchanges.FILES_EVENTS_AUDIT, GROUP,
                      lambda _: make_handler(service), prefetch=16)]


if __name__ == "__main__":
    main("auditor", tasks)
