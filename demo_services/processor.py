"""processor: a consumer group that processes uploaded files, with retries and a dead letter.

Transient failures go to `files.uploaded.retry` with the next attempt number and a not-before
time in headers (exponential backoff); after the last attempt, or on a permanent failure
(a corrupt file), the message goes to `files.dlq` with the reason in its headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable

from demo_services import topics
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


def make_handler(service: Service) -> Handler:
    """Process one upload: simulated work, then processed, retried or dead-lettered."""
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
        await service.send(topics.FILES_PROCESSED, {
            **payload, "type": "file.processed", "checksum": checksum,
            "attempts": incoming.attempt, "processed_at": time.time()},
            key=str(payload["file_id"]), correlation_id=incoming.correlation_id)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """The main consumer group, and the retry consumer that honours not-before times."""
    handler = make_handler(service)
    return [
        Worker(service, "processor", [topics.FILES_UPLOADED], handler, topics.FILES_DLQ).run(),
        Worker(service, "processor-retry", [topics.FILES_RETRY], handler, topics.FILES_DLQ,
               honour_not_before=True).run(),
    ]


if __name__ == "__main__":
    main("processor", tasks)
