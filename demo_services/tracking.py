"""tracking: follows each dispatched shipment, from the JetStream stream `SHIPMENTS` through
its durable pull consumer `tracking`, and announces its live status on core NATS.

Runs only when NATS is configured (FLOWSCOPE_DEMO_NATS_URL): shipping then publishes each
dispatched order on `shipments.<region>.dispatched`, and the order's flow goes Kafka -> NATS
JetStream -> core NATS under one correlation ID and one trace. A lookup at the carrier that
fails (transiently, drawn from the seed) is negatively acknowledged with backoff and the server
delivers it again; at its max_attempts-th delivery, or when the shipment is invalid, it is
published to `shipments.dlq` (stream `SHIPMENTS_DLQ`) with the reason in `dlq-reason` and
terminated. A shipment followed is acknowledged, then its status goes out on
`tracking.status.<region>` (core NATS: the portal gets it if it listens now; nobody keeps it).
A pause command for the group `tracking` stops the fetching: the consumer's pending messages
build on the server, and drain when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from demo_services import instrumentation as inst
from demo_services import subjects
from demo_services.faults import Simulation, draw
from demo_services.nats_consumer import PullConsumer, StreamDelivery, StreamHandler
from demo_services.nats_link import NatsLink
from demo_services.producer import SendFailed
from demo_services.runtime import BadMessage, Service, TransientFailure, main

log = logging.getLogger(__name__)
FIELDS = ("order_id", "tracking", "region")
GROUP = "tracking"  # what `flowscope loadgen --pause-group` names


def tracking_fails(seed: int, simulation: Simulation, correlation_id: str, attempt: int) -> bool:
    """Whether this attempt at looking the shipment up fails (transiently), drawn from the
    seed."""
    return draw(seed, "tracking", correlation_id, attempt) < simulation.tracking_failure


def status_of(payload: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The live status of a shipment the carrier has picked up."""
    return {"type": "tracking.status", "order_id": payload["order_id"],
            "tracking": payload["tracking"], "region": payload["region"],
            "status": "in_transit", "attempts": attempt, "updated_at": time.time()}


def make_handler(service: Service, link: NatsLink) -> StreamHandler:
    """Follow one shipment: simulated work, then acknowledged and announced, or failed."""
    config = service.config

    async def handle(delivery: StreamDelivery) -> None:
        delivery.require(*FIELDS)
        payload = delivery.payload
        region = payload["region"]
        if region not in subjects.REGIONS:
            raise BadMessage(f"unknown region {str(region)[:40]!r}")
        simulation = Simulation.of(service.defaults, payload.get("simulate"))
        await asyncio.sleep(simulation.work_ms / 1000)
        if tracking_fails(config.seed, simulation, delivery.correlation_id, delivery.attempt):
            raise TransientFailure("the carrier's tracking API timed out")
        if not await delivery.ack():
            return  # it comes again; its status goes out then
        try:
            await link.publish_core(subjects.subject(config, subjects.STATUS_TEMPLATE, region),
                                    status_of(payload, delivery.attempt),
                                    template=subjects.subject(config, subjects.STATUS_TEMPLATE),
                                    correlation_id=delivery.correlation_id)
        except SendFailed as exc:  # core NATS keeps nothing: the update is lost, and said so
            inst.mark_error(delivery.span, exc.error_type, exc.reason)
            log.warning("%s: status of %s not announced: %s", service.name,
                        delivery.correlation_id, exc.reason)

    return handle


async def follow_shipments(service: Service) -> None:
    """The durable pull consumer of the shipments stream, on a link of its own."""
    config = service.config
    if not config.nats_url:
        raise ValueError(f"{service.name} consumes NATS: set FLOWSCOPE_DEMO_NATS_URL")
    link = NatsLink(config, service.name, service.tracer)
    try:
        await PullConsumer(
            service, link, subjects.stream_name(config, subjects.SHIPMENTS), subjects.TRACKING,
            subjects.subject(config, subjects.SHIPMENTS_TEMPLATE), GROUP,
            make_handler(service, link),
            subjects.subject(config, subjects.SHIPMENTS_DLQ_SUBJECT)).run()
    finally:
        await link.close()


def tasks(service: Service) -> list[Awaitable[None]]:
    """One pull consumer of the shipments stream."""
    return [follow_shipments(service)]


if __name__ == "__main__":
    main("tracking", tasks)
