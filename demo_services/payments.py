"""payments: charges placed orders, and refunds them when the saga compensates."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable

from demo_services import topics
from demo_services.faults import Simulation
from demo_services.runtime import Handler, Incoming, Service, Worker, main


def make_handler(service: Service) -> Handler:
    """order.placed -> payment.charged; inventory.failed -> payment.refunded."""

    async def handle(incoming: Incoming) -> None:
        incoming.require("order_id", "amount")
        payload = incoming.payload
        simulation = Simulation.of(service.defaults, payload.get("simulate"))
        await asyncio.sleep(simulation.work_ms / 1000)
        if incoming.record.topic == service.config.topic(topics.ORDERS_PLACED):
            out, extra = topics.PAYMENTS_CHARGED, {
                "type": "payment.charged", "charged_at": time.time(),
                "payment_id": str(uuid.uuid5(uuid.NAMESPACE_URL, str(payload["order_id"])))}
        else:
            out, extra = topics.PAYMENTS_REFUNDED, {
                "type": "payment.refunded", "refunded_at": time.time()}
        await service.send(out, {**payload, **extra}, key=str(payload["order_id"]),
                           correlation_id=incoming.correlation_id)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """One consumer group over placed orders and failed reservations."""
    return [Worker(service, "payments", [topics.ORDERS_PLACED, topics.INVENTORY_FAILED],
                   make_handler(service), topics.ORDERS_DLQ).run()]


if __name__ == "__main__":
    main("payments", tasks)
