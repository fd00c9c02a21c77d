"""The demo services' HTTP side: a traced aiohttp server and a traced JSON client."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from demo_services import instrumentation as inst
from demo_services.producer import SendFailed
from demo_services.runtime import Service, new_correlation_id

log = logging.getLogger(__name__)
ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def traced_app(service: Service) -> web.Application:
    """An aiohttp application whose every request runs in a SERVER span."""

    @web.middleware
    async def tracing(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        if request.path == "/health":
            return await handler(request)
        route = request.match_info.route.resource
        template = route.canonical if route is not None else request.path
        with inst.http_server_span(service.tracer, request.method, template, request.path,
                                   request.headers) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                inst.set_http_status(span, exc.status, server=True)
                raise
            inst.set_http_status(span, response.status, server=True)
            return response

    async def health(_: web.Request) -> web.Response:
        replacements = service.producer.replacements if service.producer is not None else 0
        return web.json_response({"status": "ok", "service": service.name,
                                  "producer_replacements": replacements})

    app = web.Application(middlewares=[tracing], client_max_size=1024 * 1024)
    app.router.add_get("/health", health)
    return app


async def serve(service: Service, app: web.Application, port: int) -> None:
    """Serve app on the configured host and port until the service stops."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, service.config.host, port)
    await site.start()
    log.info("%s listening on http://%s:%d", service.name, service.config.host, port)
    try:
        await service.stopping.wait()
    finally:
        await runner.cleanup()


def correlation_id_of(request: web.Request) -> str:
    """The caller's X-Correlation-ID when it is a sensible ID, else a new one."""
    given = request.headers.get("X-Correlation-ID", "")
    return given if ID_PATTERN.match(given) else new_correlation_id()


async def accept_request(request: web.Request,
                         validate: Callable[[dict[str, Any]], list[str]]
                         ) -> tuple[dict[str, Any], str]:
    """The request's valid JSON body and the flow's correlation ID; a 400 naming every
    problem otherwise."""
    body = await read_json_object(request)
    problems = validate(body)
    if problems:
        raise json_error(400, "; ".join(problems))
    return body, correlation_id_of(request)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or a 400 with a clear message."""
    try:
        body = await request.json()
    except ValueError:
        raise json_error(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise json_error(400, "the body must be a JSON object")
    return body


async def send_or_503(service: Service, topic: str, payload: dict[str, Any], *, key: str,
                      correlation_id: str) -> None:
    """Send the message that starts a flow, once more when the producer that failed was just
    replaced; a 503 naming the reason when it cannot be sent."""
    try:
        await service.send(topic, payload, key=key, correlation_id=correlation_id)
        return
    except SendFailed as exc:
        if not exc.replaced:
            raise _unavailable(correlation_id, exc.reason) from None
        first = exc.reason
    try:
        await service.send(topic, payload, key=key, correlation_id=correlation_id)
    except SendFailed as exc:
        raise _unavailable(correlation_id, f"{exc.reason} (on a new producer, after {first})"
                           ) from None


def _unavailable(correlation_id: str, reason: str) -> web.HTTPException:
    log.warning("%s: answering 503, the message was not written: %s", correlation_id, reason)
    return json_error(503, f"the message could not be written to Kafka: {reason}")


def json_error(status: int, message: str) -> web.HTTPException:
    """An HTTP error whose body is {"error": message}."""
    kinds = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 413: web.HTTPRequestEntityTooLarge,
             503: web.HTTPServiceUnavailable}
    error_class = kinds.get(status, web.HTTPInternalServerError)
    return error_class(text=json.dumps({"error": message}), content_type="application/json")


async def post_json(service: Service, session: aiohttp.ClientSession, url: str, *,
                    body: dict[str, Any], headers: dict[str, str], timeout_s: float = 5.0
                    ) -> int:
    """POST body as JSON in a CLIENT span; the HTTP status, or 0 when no answer came."""
    headers = dict(headers)
    with inst.http_client_span(service.tracer, "POST", url, headers) as span:
        try:
            async with session.post(url, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                inst.set_http_status(span, response.status, server=False)
                return response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            inst.mark_error(span, type(exc).__name__, str(exc) or type(exc).__name__)
            return 0
