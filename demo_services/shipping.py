"""shipping: dispatches orders whose stock was reserved.

With NATS (FLOWSCOPE_DEMO_NATS_URL) each dispatch is also published to JetStream, on
`shipments.<region>.dispatched`, for the tracking service; first, so that a Kafka send that
fails (and the message handled again) publishes the same Nats-Msg-Id again, which the stream
stores once, while the reverse order would repeat `shipping.dispatched` on Kafka for every
retry during a NATS outage.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from demo_services import subjects, topics
from demo_services.faults import Simulation
from demo_services.nats_link import NatsLink, stay_connected
from demo_services.runtime import Handler, Incoming, Service, Worker, main


def shipment_of(payload: dict[str, Any], tracking: str, dispatched_at: float) -> dict[str, Any]:
    """The JetStream event of a dispatched order (its simulation knobs travel on)."""
    order_id = str(payload["order_id"])
    return {"type": "shipment.dispatched", "order_id": order_id, "tracking": tracking,
            "region": subjects.region_of(order_id), "dispatched_at": dispatched_at,
            "simulate": payload.get("simulate") or {}}


def shipment_id(order_id: str) -> str:
    """The Nats-Msg-Id of an order's shipment: the same on every try."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"shipment:{order_id}"))


def make_handler(service: Service, link: NatsLink | None = None) -> Handler:
    """inventory.reserved -> shipments.<region>.dispatched (with NATS), shipping.dispatched."""
    config = service.config

    async def handle(incoming: Incoming) -> None:
        incoming.require("order_id")
        payload = incoming.payload
        simulation = Simulation.of(service.defaults, payload.get("simulate"))
        await asyncio.sleep(simulation.work_ms / 1000)
        order_id = str(payload["order_id"])
        tracking = str(uuid.uuid5(uuid.NAMESPACE_OID, order_id))[:13]
        dispatched_at = time.time()
        if link is not None:
            shipment = shipment_of(payload, tracking, dispatched_at)
            await link.publish(
                subjects.subject(config, subjects.SHIPMENTS_TEMPLATE, shipment["region"]),
                shipment, template=subjects.subject(config, subjects.SHIPMENTS_TEMPLATE),
                correlation_id=incoming.correlation_id, message_id=shipment_id(order_id))
        await service.send(topics.SHIPPING_DISPATCHED, {
            **payload, "type": "shipping.dispatched", "tracking": tracking,
            "dispatched_at": dispatched_at},
            key=order_id, correlation_id=incoming.correlation_id)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """One consumer group over reserved orders; with NATS, the link it publishes on."""
    if not service.config.nats_url:
        return [Worker(service, "shipping", [topics.INVENTORY_RESERVED], make_handler(service),
                       topics.ORDERS_DLQ).run()]
    link = NatsLink(service.config, service.name, service.tracer)
    return [Worker(service, "shipping", [topics.INVENTORY_RESERVED],
                   make_handler(service, link), topics.ORDERS_DLQ).run(),
            stay_connected(link, service.stopping)]


if __name__ == "__main__":
    main("shipping", tasks)
