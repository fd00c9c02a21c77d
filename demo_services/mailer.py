"""mailer: emails every issued invoice to its customer, from its own queue on the multicast
address `billing.events` (the ledger has the other).

It only counts what it would send: the point is the fan-out on the flow map. An event it cannot
read is rejected: the broker dead-letters it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from demo_services import addresses
from demo_services.artemis_consumer import QueueDelivery, QueueHandler, consume
from demo_services.runtime import Service, main

log = logging.getLogger(__name__)
GROUP = "mailer"
REPORT_EVERY = 100


def make_handler(service: Service) -> QueueHandler:
    """Email one invoice (count it; log every REPORT_EVERY)."""
    sent = 0

    async def handle(delivery: QueueDelivery) -> None:
        nonlocal sent
        delivery.require("invoice_id", "customer")
        sent += 1
        if sent % REPORT_EVERY == 0:
            log.info("%s: %d invoices emailed", service.name, sent)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """One consumer of the mailer's queue on billing.events."""
    config = service.config
    return [consume(service, addresses.address(config, addresses.BILLING_EVENTS),
                    addresses.subscription_queue(config, addresses.BILLING_EVENTS,
                                                 addresses.MAILER),
                    GROUP, lambda _: make_handler(service), prefetch=16, multicast=True)]


if __name__ == "__main__":
    main("mailer", tasks)
