"""inventory: reserves stock for paid orders; a failed reservation starts the compensation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from demo_services import topics
from demo_services.faults import Simulation, draw
from demo_services.runtime import Handler, Incoming, Service, Worker, main


def reservation_fails(seed: int, simulation: Simulation, correlation_id: str) -> bool:
    """Whether the stock for this order runs out (drawn from the seed and the order's flow)."""
    return draw(seed, "inventory", correlation_id) < simulation.inventory_failure


def make_handler(service: Service) -> Handler:
    """payment.charged -> inventory.reserved, or inventory.failed."""

    async def handle(incoming: Incoming) -> None:
        incoming.require("order_id", "items")
        payload = incoming.payload
        simulation = Simulation.of(service.defaults, payload.get("simulate"))
        await asyncio.sleep(simulation.work_ms / 1000)
        if reservation_fails(service.config.seed, simulation, incoming.correlation_id):
            items = payload["items"] if isinstance(payload["items"], list) else []
            sku = items[0].get("sku") if items and isinstance(items[0], dict) else "?"
            out, extra = topics.INVENTORY_FAILED, {
                "type": "inventory.failed", "reason": f"out of stock: {sku}"}
        else:
            out, extra = topics.INVENTORY_RESERVED, {
                "type": "inventory.reserved", "reserved_at": time.time()}
        await service.send(out, {**payload, **extra}, key=str(payload["order_id"]),
                           correlation_id=incoming.correlation_id)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """One consumer group over charged payments (shared with orders: pub/sub)."""
    return [Worker(service, "inventory", [topics.PAYMENTS_CHARGED], make_handler(service),
                   topics.ORDERS_DLQ).run()]


if __name__ == "__main__":
    main("inventory", tasks)
