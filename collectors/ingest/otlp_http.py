"""The OTLP/HTTP receiver: POST /v1/traces, protobuf or JSON, plain or gzip.

Any OpenTelemetry SDK or Collector sends here once OTEL_EXPORTER_OTLP_ENDPOINT points at it.
A malformed body gets 400 with the reason, an oversized one 413; both are counted.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from collectors.ingest.decode import BadPayload, decode_request, decompress
from collectors.ingest.pipeline import Pipeline
from collectors.metrics import render_prometheus

log = logging.getLogger(__name__)


def build_app(pipeline: Pipeline, max_body_bytes: int) -> web.Application:
    """The receiver's aiohttp application."""

    async def post_traces(request: web.Request) -> web.Response:
        content_type = request.headers.get("Content-Type", "application/x-protobuf")
        if request.content_length is not None and request.content_length > max_body_bytes:
            return _reject(pipeline, 413, f"body of {request.content_length} bytes exceeds "
                           f"the limit of {max_body_bytes}", content_type)
        try:
            raw = await _read_body(request, max_body_bytes)
            if raw is None:
                return _reject(pipeline, 413, f"body exceeds the limit of {max_body_bytes} "
                               "bytes", content_type)
            body = decompress(raw, request.headers.get("Content-Encoding", ""), max_body_bytes)
            export = decode_request(body, content_type)
        except OverflowError as exc:
            return _reject(pipeline, 413, str(exc), content_type)
        except BadPayload as exc:
            return _reject(pipeline, 400, str(exc), content_type)
        is_protobuf = not content_type.startswith("application/json")
        result, report = await pipeline.ingest(export, body if is_protobuf else None, "otlp_http")
        rejected = report.spans - result.written - result.duplicates
        return _answer(content_type, rejected, report.problems)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(_: web.Request) -> web.Response:
        rows, groups = await pipeline.exclusive(pipeline.store.lag)
        counters = await pipeline.exclusive(pipeline.store.counters)
        return web.Response(text=render_prometheus(rows, groups, counters),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    # auto_decompress off: gzip is inflated here, with the size limit applied to the result.
    app = web.Application(client_max_size=max_body_bytes + 1024,
                          handler_args={"auto_decompress": False})
    app.router.add_post("/v1/traces", post_traces)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, however it was chunked on the wire; None past limit bytes."""
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(content_type: str, rejected: int, problems: dict[str, int]) -> web.Response:
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = "; ".join(
            f"{count} {reason}" for reason, count in problems.items())
    if content_type.startswith("application/json"):
        body = {} if not rejected else {"partialSuccess": {
            "rejectedSpans": str(rejected),
            "errorMessage": response.partial_success.error_message}}
        return web.json_response(body)
    return web.Response(body=response.SerializeToString(), content_type="application/x-protobuf")


def _reject(pipeline: Pipeline, status: int, reason: str, content_type: str) -> web.Response:
    pipeline.count("rejected_bodies_oversized" if status == 413 else "rejected_bodies_malformed")
    log.warning("rejected an OTLP body (%d): %s", status, reason)
    if content_type.startswith("application/json"):
        return web.Response(status=status, text=json.dumps({"error": reason}),
                            content_type="application/json")
    return web.Response(status=status, text=reason, content_type="text/plain")
