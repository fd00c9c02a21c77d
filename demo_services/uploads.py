"""uploads: an HTTP API that accepts a file and queues it for processing (202 at once).

POST /files {"name": str, "size": int, "callback_url": "http(s)://...", "simulate": {...}?}
answers 202 {"correlation_id", "file_id", "status": "queued"} once the `file.uploaded` message
is acknowledged by Kafka (503 with the reason when it cannot be written); processing happens
later, elsewhere. An X-Correlation-ID request header, when it is a sensible ID, becomes the
flow's correlation ID.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable

from aiohttp import web

from demo_services import topics
from demo_services import web as http
from demo_services.runtime import Service, main

MAX_NAME = 255


def validate_upload(body: dict[str, object]) -> list[str]:
    """What is wrong with an upload request, one message per problem (empty when valid)."""
    problems = []
    name, size, callback = body.get("name"), body.get("size"), body.get("callback_url")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        problems.append(f"'name' must be a non-empty string of at most {MAX_NAME} characters")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problems.append("'size' must be a non-negative integer (bytes)")
    if not isinstance(callback, str) or not re.match(r"^https?://[^\s/]+", callback):
        problems.append("'callback_url' must be an http:// or https:// URL")
    if "simulate" in body and not isinstance(body["simulate"], dict):
        problems.append("'simulate' must be an object")
    return problems


def build_app(service: Service) -> web.Application:
    """The uploads HTTP application."""
    app = http.traced_app(service)

    async def post_file(request: web.Request) -> web.Response:
        body, correlation_id = await http.accept_request(request, validate_upload)
        file_id = str(uuid.uuid4())
        message = {"type": "file.uploaded", "file_id": file_id, "name": body["name"],
                   "size": body["size"], "callback_url": body["callback_url"],
                   "uploaded_at": time.time(), "simulate": body.get("simulate") or {}}
        await http.send_or_503(service, topics.FILES_UPLOADED, message, key=file_id,
                               correlation_id=correlation_id)
        return web.json_response({"correlation_id": correlation_id, "file_id": file_id,
                                  "status": "queued"}, status=202)

    app.router.add_post("/files", post_file)
    return app


def tasks(service: Service) -> list[Awaitable[None]]:
    """The HTTP server."""
    return [http.serve(service, build_app(service), service.config.uploads_port)]


if __name__ == "__main__":
    main("uploads", tasks)
