"""shipping: dispatches orders whose stock was reserved."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable

from demo_services import topics
from demo_services.faults import Simulation
from demo_services.runtime import Handler, Incoming, Service, Worker, main


def make_handler(service: Service) -> Handler:
    """inventory.reserved -> shipping.dispatched."""

    async def handle(incoming: Incoming) -> None:
        incoming.require("order_id")
        payload = incoming.payload
        simulation = Simulation.of(service.defaults, payload.get("simulate"))
        await asyncio.sleep(simulation.work_ms / 1000)
        tracking = str(uuid.uuid5(uuid.NAMESPACE_OID, str(payload["order_id"])))[:13]
        await service.send(topics.SHIPPING_DISPATCHED, {
            **payload, "type": "shipping.dispatched", "tracking": tracking,
            "dispatched_at": time.time()},
            key=str(payload["order_id"]), correlation_id=incoming.correlation_id)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """One consumer group over reserved orders."""
    return [Worker(service, "shipping", [topics.INVENTORY_RESERVED], make_handler(service),
                   topics.ORDERS_DLQ).run()]


if __name__ == "__main__":
    main("shipping", tasks)
