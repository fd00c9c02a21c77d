"""billing: issues the invoice of every completed order, from the Artemis queue `invoices`
(AMQP 1.0, settled delivery by delivery), and announces it on the multicast address
`billing.events`.

Runs only when Artemis is configured (FLOWSCOPE_DEMO_ARTEMIS_URL): orders then sends an invoice
request for each completed order, and the order's flow goes Kafka -> Artemis queue -> Artemis
multicast under one correlation ID and one trace. Issuing fails transiently at the rate
billing_failure (drawn from the seed): the delivery is settled as failed and the broker, not
billing, owns the retry, as a JMS application would leave it: it delivers it again after its
redelivery delay, and after max-delivery-attempts moves it to its dead-letter address (queue
`DLQ.invoices`). An invalid request is rejected, and dead-lettered at once. An issued invoice
goes out (accepted by the broker) on `billing.events`, then the request is accepted; when that
send fails the request is released, not counted as a failed delivery. A pause command for the
group `billing` detaches its receiver: the `invoices` backlog builds, and drains after.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from demo_services import addresses
from demo_services.artemis_consumer import QueueDelivery, QueueHandler, consume
from demo_services.artemis_link import ArtemisLink
from demo_services.faults import Simulation, draw
from demo_services.runtime import Service, TransientFailure, main

GROUP = "billing"  # what `flowscope loadgen --pause-group` names
FIELDS = ("order_id", "customer", "amount")


def billing_fails(seed: int, simulation: Simulation, correlation_id: str, attempt: int) -> bool:
    """Whether this attempt at issuing the invoice fails (transiently), drawn from the seed."""
    return draw(seed, "billing", correlation_id, attempt) < simulation.billing_failure


def invoice_id(order_id: str) -> str:
    """An order's invoice ID, the same on every try (the message ID of `invoice.issued`, so
    that Artemis stores a repeat once)."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"invoice:{order_id}"))


def invoice_of(payload: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The `invoice.issued` event of an invoice request."""
    order_id = str(payload["order_id"])
    return {"type": "invoice.issued", "invoice_id": invoice_id(order_id), "order_id": order_id,
            "customer": payload["customer"], "amount": payload["amount"],
            "attempts": attempt, "issued_at": time.time()}


def make_handler(service: Service, link: ArtemisLink) -> QueueHandler:
    """Issue one invoice: simulated work, then announced, or failed."""
    config = service.config

    async def handle(delivery: QueueDelivery) -> None:
        delivery.require(*FIELDS)
        simulation = Simulation.of(service.defaults, delivery.payload.get("simulate"))
        await asyncio.sleep(simulation.work_ms / 1000)
        if billing_fails(config.seed, simulation, delivery.correlation_id, delivery.attempt):
            raise TransientFailure("the invoicing system timed out")
        invoice = invoice_of(delivery.payload, delivery.attempt)
        await link.send(addresses.address(config, addresses.BILLING_EVENTS), invoice,
                        correlation_id=delivery.correlation_id,
                        message_id=invoice["invoice_id"], multicast=True)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """One consumer of the invoices queue."""
    invoices = addresses.address(service.config, addresses.INVOICES)
    return [consume(service, invoices, invoices, GROUP,
                    lambda link: make_handler(service, link), prefetch=4)]


if __name__ == "__main__":
    main("billing", tasks)
