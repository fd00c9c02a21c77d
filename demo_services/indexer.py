"""indexer: keeps a search index of rendered thumbnails, from `files.events.search` (one of
the two queues bound to the fanout exchange `files.events`; the auditor has the other).

It only counts what it indexes: the point is the fan-out on the flow map. An event it cannot
read is logged with where it came from, counted and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from demo_services import exchanges
from demo_services.amqp_consumer import Delivery, DeliveryHandler, subscribe
from demo_services.runtime import Service, main

log = logging.getLogger(__name__)
GROUP = "indexer"
REPORT_EVERY = 100


def make_handler(service: Service) -> DeliveryHandler:
    """Index one `thumbnail.rendered` event (count it; log every REPORT_EVERY)."""
    indexed: set[str] = set()

    async def handle(delivery: Delivery) -> None:
        delivery.require("file_id", "thumbnail")
        indexed.add(str(delivery.payload["file_id"]))
        if len(indexed) % REPORT_EVERY == 0:
            log.info("%s: %d files indexed", service.name, len(indexed))

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """One consumer of the search queue."""
    return [subscribe(service, exchanges.FILES_EVENTS_SEARCH, GROUP,
                      lambda _: make_handler(service), prefetch=16)]


if __name__ == "__main__":
    main("indexer", tasks)
