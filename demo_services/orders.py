"""orders: an HTTP API that places orders, and the saga's bookkeeper.

POST /orders {"customer": str, "items": [{"sku": str, "quantity": int}], "amount": number}
answers 202 once `order.placed` is written (503 with the reason when it cannot be). The
service then follows its orders through the choreography: it records payments (it shares
`payments.charged` with inventory: pub/sub), and ends each saga in exactly one terminal state:
`orders.completed` once shipping dispatched, or `orders.cancelled` once the payment was
refunded (compensation after a failed reservation).

With Artemis (FLOWSCOPE_DEMO_ARTEMIS_URL) a completed order is also invoiced: an invoice request
goes to the Artemis queue `invoices` for billing, first, so that a Kafka send that fails (and
the message handled again) sends the same request ID again, which Artemis stores once.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from demo_services import addresses, topics
from demo_services import web as http
from demo_services.artemis_link import ArtemisLink, stay_connected
from demo_services.runtime import Handler, Incoming, Service, Worker, main

KEEP_ORDERS = 100_000


def validate_order(body: dict[str, object]) -> list[str]:
    """What is wrong with an order request, one message per problem (empty when valid)."""
    problems = []
    customer, items, amount = body.get("customer"), body.get("items"), body.get("amount")
    if not isinstance(customer, str) or not customer.strip() or len(customer) > 200:
        problems.append("'customer' must be a non-empty string of at most 200 characters")
    if not isinstance(items, list) or not items or not all(
            isinstance(i, dict) and isinstance(i.get("sku"), str)
            and isinstance(i.get("quantity"), int) and i["quantity"] > 0 for i in items):
        problems.append("'items' must be a non-empty list of {\"sku\": str, \"quantity\": int > 0}")
    if not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0:
        problems.append("'amount' must be a positive number")
    if "simulate" in body and not isinstance(body["simulate"], dict):
        problems.append("'simulate' must be an object")
    return problems


def build_app(service: Service) -> web.Application:
    """The orders HTTP application."""
    app = http.traced_app(service)

    async def post_order(request: web.Request) -> web.Response:
        body, correlation_id = await http.accept_request(request, validate_order)
        order_id = str(uuid.uuid4())
        await http.send_or_503(service, topics.ORDERS_PLACED, {
            "type": "order.placed", "order_id": order_id, "customer": body["customer"],
            "items": body["items"], "amount": body["amount"], "placed_at": time.time(),
            "simulate": body.get("simulate") or {}},
            key=order_id, correlation_id=correlation_id)
        return web.json_response({"correlation_id": correlation_id, "order_id": order_id,
                                  "status": "placed"}, status=202)

    app.router.add_post("/orders", post_order)
    return app


def invoice_request_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The invoice request of a completed order (its simulation knobs travel on)."""
    return {"type": "invoice.requested", "order_id": str(payload["order_id"]),
            "customer": payload.get("customer"), "amount": payload.get("amount"),
            "requested_at": time.time(), "simulate": payload.get("simulate") or {}}


def invoice_request_id(order_id: str) -> str:
    """The message ID (and _AMQ_DUPL_ID) of an order's invoice request: the same on every try."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"invoice-request:{order_id}"))


def make_handler(service: Service, link: ArtemisLink | None = None) -> Handler:
    """Follow the saga: note payments, end it as completed (invoiced, with Artemis) or
    cancelled."""
    paid: OrderedDict[str, float] = OrderedDict()

    async def handle(incoming: Incoming) -> None:
        incoming.require("order_id")
        payload, topic = incoming.payload, incoming.record.topic
        order_id = str(payload["order_id"])
        if topic == service.config.topic(topics.PAYMENTS_CHARGED):
            paid[order_id] = time.time()
            while len(paid) > KEEP_ORDERS:
                paid.popitem(last=False)
            return
        if topic == service.config.topic(topics.SHIPPING_DISPATCHED):
            outcome, state = topics.ORDERS_COMPLETED, "completed"
            if link is not None:
                await link.send(addresses.address(service.config, addresses.INVOICES),
                                invoice_request_of(payload),
                                correlation_id=incoming.correlation_id,
                                message_id=invoice_request_id(order_id))
        else:
            outcome, state = topics.ORDERS_CANCELLED, "compensated"
        await service.send(outcome, {
            **payload, "type": f"order.{outcome.rsplit('.', 1)[-1]}", "saga_state": state,
            "ended_at": time.time()}, key=order_id, correlation_id=incoming.correlation_id)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """The HTTP API and the saga consumer group; with Artemis, the link it invoices on."""
    link = ArtemisLink(service.config, service.name, service.tracer) \
        if service.config.artemis_url else None
    running = [
        http.serve(service, build_app(service), service.config.orders_port),
        Worker(service, "orders", [topics.PAYMENTS_CHARGED, topics.SHIPPING_DISPATCHED,
                                   topics.PAYMENTS_REFUNDED],
               make_handler(service, link), topics.ORDERS_DLQ).run(),
    ]
    return running if link is None else [*running, stay_connected(link, service.stopping)]


if __name__ == "__main__":
    main("orders", tasks)
