"""thumbnailer: renders a thumbnail of each processed file, from the RabbitMQ work queue
`thumbnails.jobs` (two competing consumers), then reports the file processed on Kafka.

Runs only when RabbitMQ is configured (FLOWSCOPE_DEMO_RABBITMQ_URL): the processor then
publishes a job per file instead of `files.processed`, and the upload's flow goes Kafka ->
RabbitMQ -> Kafka under one correlation ID and one trace. A render that fails (transiently,
drawn from the seed) is published to `thumbnails.retry` with the next attempt number and its
backoff as the message's expiration: it waits in `thumbnails.delay` until the broker
dead-letters it back to `thumbnails.jobs`. After the last attempt, or when the job is invalid,
it goes to `thumbnails.dlq` with the reason in `x-dead-letter-reason`. A rendered thumbnail
is sent on as `files.processed` (Kafka, for the notifier) and announced as
`thumbnail.rendered` on the fanout `files.events` (the indexer's and the auditor's queues).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from demo_services import amqp_tracing as tracing
from demo_services import exchanges, topics
from demo_services import instrumentation as inst
from demo_services.amqp import AmqpLink
from demo_services.amqp_consumer import DeadLetter, Delivery, DeliveryHandler, subscribe
from demo_services.faults import Simulation, draw
from demo_services.retry import RetryPolicy
from demo_services.runtime import Service, TransientFailure, main

FIELDS = ("file_id", "name", "size", "callback_url")
GROUP = "thumbnailer"  # what `flowscope loadgen --pause-group` names
CONSUMERS = 2
SIZE_PX = 256


def render_fails(seed: int, simulation: Simulation, correlation_id: str, attempt: int) -> bool:
    """Whether this attempt at rendering fails (transiently), drawn from the seed."""
    return draw(seed, "thumbnail", correlation_id, attempt) < simulation.thumbnail_failure


def backoff_after(failed_attempt: int, policy: RetryPolicy) -> int | None:
    """How long (ms) a job waits in the delay queue after failed_attempt failed; None when
    the attempts are spent and it is dead-lettered."""
    if failed_attempt >= policy.max_attempts:
        return None
    return policy.backoff_ms(failed_attempt)


def retry_headers(headers: dict[str, Any], failed_attempt: int, reason: str) -> dict[str, Any]:
    """The headers of a job's next attempt: the original's, the attempt number and reason."""
    out = {name: value for name, value in headers.items() if not name.startswith("retry-")}
    out[inst.RETRY_ATTEMPT_HEADER] = str(failed_attempt + 1)
    out[inst.RETRY_REASON_HEADER] = reason[:500]
    return out


def thumbnail_of(payload: dict[str, Any], attempt: int) -> dict[str, Any]:
    """What rendering a file produced."""
    return {"path": f"thumbnails/{payload['file_id']}.png", "width": SIZE_PX,
            "height": SIZE_PX, "attempts": attempt, "rendered_at": time.time()}


def make_handler(service: Service, link: AmqpLink) -> DeliveryHandler:
    """Render one job: simulated work, then processed, retried or dead-lettered."""
    policy = RetryPolicy.of(service.config)

    async def handle(delivery: Delivery) -> None:
        delivery.require(*FIELDS)
        payload = delivery.payload
        simulation = Simulation.of(service.defaults, payload.get("simulate"))
        await asyncio.sleep(simulation.work_ms / 1000)
        if render_fails(service.config.seed, simulation, delivery.correlation_id,
                        delivery.attempt):
            await _retry(delivery, "transient failure: the renderer timed out")
            return
        thumbnail = thumbnail_of(payload, delivery.attempt)
        await service.send(topics.FILES_PROCESSED,
                           {**payload, "type": "file.processed", "thumbnail": thumbnail},
                           key=str(payload["file_id"]), correlation_id=delivery.correlation_id)
        await link.publish(exchanges.FILES_EVENTS, "", {
            "type": "thumbnail.rendered", "file_id": payload["file_id"],
            "name": payload["name"], "thumbnail": thumbnail},
            correlation_id=delivery.correlation_id)

    async def _retry(delivery: Delivery, reason: str) -> None:
        tracing.fail_span(delivery.span, TransientFailure(reason), "TransientFailure")
        backoff_ms = backoff_after(delivery.attempt, policy)
        if backoff_ms is None:
            raise DeadLetter(f"gave up after {delivery.attempt} attempts: {reason}")
        await link.publish(exchanges.THUMBNAILS_RETRY, exchanges.RENDER, delivery.message.body,
                           correlation_id=delivery.correlation_id,
                           headers=retry_headers(delivery.headers, delivery.attempt, reason),
                           expiration_ms=backoff_ms)

    return handle


def tasks(service: Service) -> list[Awaitable[None]]:
    """Two competing consumers of the jobs queue, each with the configured prefetch."""
    return [subscribe(service, exchanges.THUMBNAILS_JOBS, GROUP,
                      lambda link: make_handler(service, link), consumers=CONSUMERS,
                      prefetch=service.config.thumbnail_prefetch,
                      dead_letters=exchanges.THUMBNAILS_DLQ)]


if __name__ == "__main__":
    main("thumbnailer", tasks)
