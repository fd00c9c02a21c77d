"""The OTLP/HTTP receiver: POST /v1/traces, protobuf or JSON, plain or gzip.

Any OpenTelemetry SDK or Collector sends here once OTEL_EXPORTER_OTLP_ENDPOINT points at it.
A malformed body gets 400 with the reason; an oversized one, or one with too many spans, 413;
one not received in time 408; when the store cannot take spans, or too many bodies are in
flight, 503 with Retry-After, which OTLP senders retry. Every rejection is counted. Bodies are
decoded in worker threads, so that a large one never stalls /health or the consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiokafka.errors import KafkaError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from collectors.ingest.decode import BadPayload, decode_request, decompress, is_json
from collectors.ingest.otlp_publish import SpanPublisher
from collectors.ingest.pipeline import Pipeline
from collectors.metrics import render_prometheus
from collectors.normalize import NormalizeReport, count_spans
from collectors.supervise import Health
from store.contract import StoreUnavailable, WriteResult
from store.vocabulary import ComponentState

log = logging.getLogger(__name__)
COMPONENT = "otlp_http"
PUBLISH_TIMEOUT_S = 30.0  # Kafka taking a request, in the spans-topic mode
REJECTED = {413: "rejected_bodies_oversized", 400: "rejected_bodies_malformed",
            408: "rejected_bodies_timed_out", 503: "rejected_bodies_unavailable",
            500: "rejected_bodies_failed"}


def build_app(pipeline: Pipeline, health: Health, max_body_bytes: int,
              publisher: SpanPublisher | None = None) -> web.Application:
    """The receiver's aiohttp application (with a publisher: it publishes to the spans topic
    instead of storing)."""
    receiver = Receiver(pipeline, health, max_body_bytes, publisher)
    # auto_decompress off: gzip is inflated here, with the size limit applied to the result.
    app = web.Application(client_max_size=max_body_bytes + 1024,
                          handler_args={"auto_decompress": False})
    app.router.add_post("/v1/traces", receiver.post_traces)
    app.router.add_get("/health", receiver.health_report)
    app.router.add_get("/metrics", receiver.metrics)
    return app


class Receiver:
    """The handlers of /v1/traces, /health and /metrics."""

    def __init__(self, pipeline: Pipeline, health: Health, max_body_bytes: int,
                 publisher: SpanPublisher | None = None) -> None:
        self.pipeline, self.health, self.max_body_bytes = pipeline, health, max_body_bytes
        self.publisher = publisher
        self.limits = pipeline.limits
        self.budget = ByteBudget(max(self.limits.max_inflight_bytes, max_body_bytes))

    async def post_traces(self, request: web.Request) -> web.Response:
        """POST /v1/traces: one OTLP export request."""
        content_type = request.headers.get("Content-Type", "application/x-protobuf")
        encoding = request.headers.get("Content-Encoding", "")
        length = request.content_length
        try:
            if length is not None and length > self.max_body_bytes:
                raise Rejection(413, f"body of {length} bytes exceeds the limit of "
                                f"{self.max_body_bytes}")
            # A body of unknown length, or one that inflates, may grow to the limit.
            size = self.max_body_bytes if length is None or encoding.strip() else length
            async with self.budget.hold(size, self.limits.body_timeout_s):
                export, body = await self._decode(request, content_type, encoding)
                spans = count_spans(export)
                if spans > self.limits.max_spans_per_request:
                    raise Rejection(413, f"{spans} spans in one request; the limit is "
                                    f"{self.limits.max_spans_per_request} "
                                    "(FLOWSCOPE_MAX_SPANS_PER_REQUEST): send smaller batches")
                if self.publisher is not None:
                    await self._publish(self.publisher, export, spans)
                    self.health.ok(COMPONENT)
                    return _answer(content_type, 0, {})
                result, report = await self._store(export,
                                                   None if is_json(content_type) else body)
        except Rejection as rejection:
            return _reject(self.pipeline, rejection.status, rejection.reason, content_type,
                           retry_after=rejection.status == 503)
        self.health.ok(COMPONENT)
        rejected = report.spans - result.written - result.duplicates
        return _answer(content_type, rejected, report.problems)

    async def _decode(self, request: web.Request, content_type: str, encoding: str
                      ) -> tuple[ExportTraceServiceRequest, bytes]:
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                raw = await _read_body(request, self.max_body_bytes)
        except TimeoutError:
            raise Rejection(408, f"body not received within {self.limits.body_timeout_s:g}s"
                            ) from None
        if raw is None:
            raise Rejection(413, f"body exceeds the limit of {self.max_body_bytes} bytes")
        try:
            body = await asyncio.to_thread(decompress, raw, encoding, self.max_body_bytes)
            return await asyncio.to_thread(decode_request, body, content_type), body
        except OverflowError as exc:
            raise Rejection(413, str(exc)) from None
        except BadPayload as exc:
            raise Rejection(400, str(exc)) from None

    async def _publish(self, publisher: SpanPublisher, export: ExportTraceServiceRequest,
                       spans: int) -> None:
        """Hand the request to the spans topic; 503 (the sender retries) when Kafka does not
        take all of it."""
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await publisher.publish(export)
        except (KafkaError, TimeoutError, OSError) as exc:
            reason = f"Kafka {publisher.bootstrap} did not take the spans: {type(exc).__name__}"
            self.health.degraded(COMPONENT, f"{reason}: {exc}")
            raise Rejection(503, reason) from None
        self.pipeline.count("spans_published", spans)

    async def _store(self, export: ExportTraceServiceRequest, body: bytes | None
                     ) -> tuple[WriteResult, NormalizeReport]:
        try:
            return await self.pipeline.ingest(export, body, "otlp_http")
        except StoreUnavailable as exc:
            self.health.degraded(COMPONENT, f"store unavailable: {exc}")
            raise Rejection(503, f"the store cannot take spans now: {exc}") from None
        except Exception:
            self.pipeline.count(f"{COMPONENT}_failures")
            log.exception("an OTLP body of %d spans could not be stored", count_spans(export))
            raise Rejection(500, "the collector failed on this body (see its log)") from None

    async def health_report(self, _: web.Request) -> web.Response:
        """GET /health: every component's state; 503 while one is down."""
        return web.json_response(self.health.snapshot(),
                                 status=503 if self.health.status == ComponentState.DOWN else 200)

    async def metrics(self, _: web.Request) -> web.Response:
        """GET /metrics: lag, counters and component states in the Prometheus text format."""
        rows, groups = await self.pipeline.exclusive(self.pipeline.store.lag)
        counters = await self.pipeline.exclusive(self.pipeline.store.counters)
        return web.Response(text=render_prometheus(rows, groups, counters,
                                                   self.health.components.values()),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})


class Rejection(Exception):
    """A body answered with an HTTP error: its status and the reason the sender reads."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class ByteBudget:
    """Bytes of request bodies being received and decoded at once: a body waits (bounded)
    for its share, so that many large bodies cannot exhaust memory together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int, timeout_s: float) -> AsyncIterator[None]:
        """Hold `size` bytes (at most the whole budget) while the block runs; a 503
        Rejection when they are not free within timeout_s."""
        size = min(size, self.limit)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(
                    lambda: self.used + size <= self.limit), timeout_s)
            except TimeoutError:
                raise Rejection(503, "the collector is busy with other bodies; try again"
                                ) from None
            self.used += size
        try:
            yield
        finally:
            async with self._changed:
                self.used -= size
                self._changed.notify_all()


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
    if is_json(content_type):
        body = {} if not rejected else {"partialSuccess": {
            "rejectedSpans": str(rejected),
            "errorMessage": response.partial_success.error_message}}
        return web.json_response(body)
    return web.Response(body=response.SerializeToString(), content_type="application/x-protobuf")


def _reject(pipeline: Pipeline, status: int, reason: str, content_type: str, *,
            retry_after: bool = False) -> web.Response:
    pipeline.count(REJECTED.get(status, f"rejected_bodies_{status}"))
    log.warning("rejected an OTLP body (%d): %s", status, reason)
    # OTLP/HTTP senders retry 503 (and 429), after Retry-After when given; not 4xx.
    headers = {"Retry-After": "5"} if retry_after else None
    if is_json(content_type):
        return web.Response(status=status, text=json.dumps({"error": reason}),
                            content_type="application/json", headers=headers)
    return web.Response(status=status, text=reason, content_type="text/plain", headers=headers)
