"""notifier: tells the uploader that a file was processed, by POSTing to its callback URL.

A callback that fails (no answer, or a non-2xx status) is retried through
`files.callback.retry` with backoff; after the last attempt the message goes to `files.dlq`.
A delivered callback ends the upload's flow with a `file.notified` message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import aiohttp

from demo_services import topics, web
from demo_services.retry import RetryPolicy
from demo_services.runtime import Handler, Incoming, Service, Worker, main


def make_handler(service: Service, session: aiohttp.ClientSession) -> Handler:
    """POST the result to the callback URL; retry or dead-letter on failure."""
    policy = RetryPolicy.of(service.config)

    async def handle(incoming: Incoming) -> None:
        incoming.require("file_id", "callback_url")
        payload = incoming.payload
        body = {"file_id": payload["file_id"], "name": payload.get("name"),
                "status": "processed", "checksum": payload.get("checksum"),
                "uploaded_at": payload.get("uploaded_at"),
                "correlation_id": incoming.correlation_id}
        headers = {"X-Correlation-ID": incoming.correlation_id,
                   "X-Delivery-Attempt": str(incoming.attempt)}
        status = await web.post_json(service, session, str(payload["callback_url"]),
                                     body=body, headers=headers)
        if not 200 <= status < 300:
            reason = f"callback answered HTTP {status}" if status else "callback got no answer"
            await service.retry(incoming, reason, topics.FILES_CALLBACK_RETRY, topics.FILES_DLQ,
                                policy)
            return
        await service.send(topics.FILES_NOTIFIED, {
            "type": "file.notified", "file_id": payload["file_id"],
            "callback_url": payload["callback_url"], "callback_attempts": incoming.attempt,
            "notified_at": time.time()},
            key=str(payload["file_id"]), correlation_id=incoming.correlation_id)

    return handle


async def _run(service: Service) -> None:
    async with aiohttp.ClientSession() as session:
        handler = make_handler(service, session)
        workers = [
            Worker(service, "notifier", [topics.FILES_PROCESSED], handler, topics.FILES_DLQ),
            Worker(service, "notifier-retry", [topics.FILES_CALLBACK_RETRY], handler,
                   topics.FILES_DLQ, honour_not_before=True),
        ]
        await asyncio.gather(*(w.run() for w in workers))


def tasks(service: Service) -> list[Awaitable[None]]:
    """Both consumer groups, sharing one HTTP client session."""
    return [_run(service)]


if __name__ == "__main__":
    main("notifier", tasks)
