"""processor: a consumer group that processes uploaded files, with retries and a dead letter.

Transient failures go to `files.uploaded.retry` with the next attempt number and a not-before
time in headers (exponential backoff); after the last attempt, or on a permanent failure
(a corrupt file), the message goes to `files.dlq` with the reason in its headers.

With RabbitMQ configured, a processed file becomes a thumbnail job on the exchange
`thumbnails` (key `render`) instead of a `files.processed` message: the thumbnailer sends that
once the thumbnail is rendered. The upload's offset is committed only after the broker
confirmed the job; while it cannot, the upload is handled again after a backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable

from demo_services import exchanges, topics
from demo_services.amqp import AmqpLink
from demo_services.faults import Simulation, draw
from demo_services.retry import RetryPolicy
from demo_services.runtime import (
    Handler,
    Incoming,
    PermanentFailure,
    Service,
    TransientFailure,
    Worker,
    main,
)

FIELDS = ("file_id", "name", "size", "callback_url")


def outcome(seed: int, simulation: Simulation, correlation_id: str, attempt: int) -> str:
    """What processing does with this attempt: 'processed', 'transient' or 'permanent'."""
    if draw(seed, "permanent", correlation_id) < simulation.permanent_failure:
        return "permanent"
    if draw(seed, "transient", correlation_id, attempt) < simulation.transient_failure:
        return "transient"
    return "processed"


def make_handler(service: Service, link: AmqpLink | None = None) -> Handler:
    """Process one upload: simulated work, then processed (a thumbnail job when link is
    given), retried or dead-lettered."""
    policy = RetryPolicy.of(service.config)

    async def handle(incoming: Incoming) -> None:
        incoming.require(*FIELDS)
        payload = incoming.payload
        simulation = Simulation.of(service.defaults, payload.get("simulate"))
        await asyncio.sleep(simulation.work_ms / 1000)
        try:
            result = outcome(service.config.seed, simulation, incoming.correlation_id,
                             incoming.attempt)
            if result == "permanent":
                raise PermanentFailure(f"file {payload['name']!r} is corrupt")
            if result == "transient":
                raise TransientFailure("storage timed out")
        except TransientFailure as exc:
            await service.retry(incoming, f"transient failure: {exc}", topics.FILES_RETRY,
                                topics.FILES_DLQ, policy)
            return
        checksum = hashlib.sha256(f"{payload['file_id']}:{payload['size']}".encode()).hexdigest()
        processed = {**payload, "type": "file.processed", "checksum": checksum,
                     "attempts": incoming.attempt, "processed_at": time.time()}
        if link is not None:
            await link.publish(exchanges.THUMBNAILS, exchanges.RENDER,
                               {**processed, "type": "thumbnail.requested"},
                               correlation_id=incoming.correlation_id)
            return
        await service.send(topics.FILES_PROCESSED, processed, key=str(payload["file_id"]),
                           correlation_id=incoming.correlation_id)

    return handle


def workers(service: Service, handler: Handler) -> list[Worker]:
    """The main consumer group, and the retry consumer that honours not-before times."""
    return [Worker(service, "processor", [topics.FILES_UPLOADED], handler, topics.FILES_DLQ),
            Worker(service, "processor-retry", [topics.FILES_RETRY], handler, topics.FILES_DLQ,
                   honour_not_before=True)]


async def _run_with_rabbitmq(service: Service) -> None:
    link = AmqpLink(service.config, service.name, service.tracer)
    try:
        await asyncio.gather(*(w.run() for w in workers(service, make_handler(service, link))))
    finally:
        await link.close()


def tasks(service: Service) -> list[Awaitable[None]]:
    """Both consumer groups; with RabbitMQ configured, sharing one link to it."""
    if service.config.rabbitmq_url:
        return [_run_with_rabbitmq(service)]
    return [worker.run() for worker in workers(service, make_handler(service))]


if __name__ == "__main__":
    main("processor", tasks)
