"""The demo system's RabbitMQ exchanges and queues, and their declaration.

Thumbnails (a work queue with competing consumers, retries through a delay queue and a dead
letter): the processor publishes a job to the direct exchange `thumbnails` (key `render`),
bound to `thumbnails.jobs`. A failed render is published to `thumbnails.retry`, whose queue
`thumbnails.delay` has no consumer: each message expires after its backoff (its `expiration`)
and the broker dead-letters it back to `thumbnails`/`render`, so it returns to
`thumbnails.jobs`. Spent or invalid jobs go to the fanout `thumbnails.dlq`, bound to the
queue of that name. A rendered thumbnail is announced on the fanout `files.events`, bound to
`files.events.search` (the indexer) and `files.events.audit` (the auditor).

Every name takes the configuration's topic prefix, as the Kafka topics do.
"""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange

from demo_services.config import DemoConfig

THUMBNAILS = "thumbnails"
RENDER = "render"
THUMBNAILS_JOBS = "thumbnails.jobs"
THUMBNAILS_RETRY = "thumbnails.retry"
THUMBNAILS_DELAY = "thumbnails.delay"
THUMBNAILS_DLQ = "thumbnails.dlq"
FILES_EVENTS = "files.events"
FILES_EVENTS_SEARCH = "files.events.search"
FILES_EVENTS_AUDIT = "files.events.audit"


@dataclass(frozen=True)
class Binding:
    """A durable queue bound to an exchange with a routing key ('' for a fanout)."""

    queue: str
    exchange: str
    routing_key: str = ""
    dead_letter_to: tuple[str, str] | None = None  # (exchange, routing key) of expired messages


EXCHANGES = {THUMBNAILS: ExchangeType.DIRECT, THUMBNAILS_RETRY: ExchangeType.DIRECT,
             THUMBNAILS_DLQ: ExchangeType.FANOUT, FILES_EVENTS: ExchangeType.FANOUT}
BINDINGS = (
    Binding(THUMBNAILS_JOBS, THUMBNAILS, RENDER),
    Binding(THUMBNAILS_DELAY, THUMBNAILS_RETRY, RENDER, dead_letter_to=(THUMBNAILS, RENDER)),
    Binding(THUMBNAILS_DLQ, THUMBNAILS_DLQ),
    Binding(FILES_EVENTS_SEARCH, FILES_EVENTS),
    Binding(FILES_EVENTS_AUDIT, FILES_EVENTS),
)


def queue_arguments(config: DemoConfig, binding: Binding) -> dict[str, str]:
    """The x-arguments a queue is declared with (the delay queue's dead-letter target)."""
    if binding.dead_letter_to is None:
        return {}
    exchange, key = binding.dead_letter_to
    return {"x-dead-letter-exchange": config.topic(exchange), "x-dead-letter-routing-key": key}


async def declare_topology(channel: AbstractChannel, config: DemoConfig
                           ) -> dict[str, AbstractExchange]:
    """Declare every exchange, queue and binding (idempotent); the exchanges by short name.

    On a robust channel the declarations are replayed after a reconnection."""
    exchanges = {name: await channel.declare_exchange(config.topic(name), kind, durable=True)
                 for name, kind in EXCHANGES.items()}
    for binding in BINDINGS:
        queue = await channel.declare_queue(config.topic(binding.queue), durable=True,
                                            arguments=queue_arguments(config, binding) or None)
        await queue.bind(exchanges[binding.exchange], binding.routing_key)
    return exchanges
