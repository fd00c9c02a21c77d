"""ledger: books the revenue of every issued invoice, from its own queue on the multicast
address `billing.events` (the mailer has the other).

It books each invoice once (a repeated delivery is recognised by its invoice ID) and keeps the
total; the point is the fan-out on the flow map. An event it cannot read is rejected: the
broker dead-letters it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable

from demo_services import addresses
from demo_services.artemis_consumer import QueueDelivery, QueueHandler, consume
from demo_services.runtime import BadMessage, Service, main

log = logging.getLogger(__name__)
GROUP = "ledger"
KEEP_INVOICES = 100_000
REPORT_EVERY = 100


def make_handler(service: Service) -> QueueHandler:
    """Book one invoice (log the total every REPORT_EVERY)."""
    booked: OrderedDict[str, float] = OrderedDict()
    total = 0.0

    async def handle(delivery: QueueDelivery) -> None:
        nonlocal total
        delivery.require("invoice_id", "amount")
        amount = delivery.payload["amount"]
        if not isinstance(amount, int | float) or isinstance(amount, bool):
            raise BadMessage(f"amount {str(amount)[:40]!r} is not a number")
        invoice = str(delivery.payload["invoice_id"])
        if invoice in booked:
            return
        booked[invoice] = float(amount)
        total += float(amount)
        while len(booked) > KEEP_INVOICES:
            booked.popitem(last=False)
        if len(booked) % REPORT_EVERY == 0:
            log.info("%s: %d invoices booked, %.2f in all", service.name, len(booked), total)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """One consumer of the ledger's queue on billing.events."""
    config = service.config
    return [consume(service, addresses.address(config, addresses.BILLING_EVENTS),
                    addresses.subscription_queue(config, addresses.BILLING_EVENTS,
                                                 addresses.LEDGER),
                    GROUP, lambda _: make_handler(service), prefetch=16, multicast=True)]


if __name__ == "__main__":
    main("ledger", tasks)
