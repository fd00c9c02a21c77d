"""webhook: the receiver the demo uses as callback target; it fails now and then, on purpose.

POST /callbacks/{anything} records the callback (or answers 503, drawn from the seed, the
correlation ID and the delivery attempt); GET /callbacks lists what was received.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable

from aiohttp import web

from demo_services import web as http
from demo_services.faults import draw
from demo_services.runtime import Service, main

KEEP = 50_000


def build_app(service: Service) -> web.Application:
    """The webhook receiver application."""
    app = http.traced_app(service)
    received: deque[dict[str, object]] = deque(maxlen=KEEP)

    async def post_callback(request: web.Request) -> web.Response:
        body = await http.read_json_object(request)
        correlation_id = request.headers.get("X-Correlation-ID", "")
        attempt = request.headers.get("X-Delivery-Attempt", "1")
        if draw(service.config.seed, "callback", correlation_id, attempt) < \
                service.config.callback_failure:
            raise http.json_error(503, "receiver temporarily unavailable")
        received.append({"correlation_id": correlation_id, "attempt": attempt,
                         "path": request.path, "body": body, "received_at": time.time()})
        return web.json_response({"status": "received"})

    async def list_callbacks(_: web.Request) -> web.Response:
        return web.json_response(list(received))

    app.router.add_post("/callbacks/{name:.*}", post_callback)
    app.router.add_get("/callbacks", list_callbacks)
    return app


def tasks(service: Service) -> list[Awaitable[None]]:
    """The HTTP server."""
    return [http.serve(service, build_app(service), service.config.webhook_port)]


if __name__ == "__main__":
    main("webhook", tasks)
