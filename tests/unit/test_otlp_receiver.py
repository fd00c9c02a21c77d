"""The OTLP/HTTP receiver in process, over loopback: a body that stalls or lies about its
length is answered 408 within the timeout, too many spans 413, a store that cannot write 503
with Retry-After, and /health stays quick while a large body is decoded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from base.settings import IngestLimits
from collectors.ingest.otlp_http import build_app
from collectors.ingest.pipeline import Pipeline
from collectors.supervise import Health
from store.vocabulary import FlowRules
from tests.otlp_factory import request, span
from tests.store_writer import open_writable


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[str, Pipeline, Health]]:
    store = open_writable(tmp_path / "s.db", FlowRules((), (), (), 60))
    pipeline = Pipeline(store.writer, None,
                        IngestLimits(max_spans_per_request=50, body_timeout_s=1))
    health = Health()
    runner = web.AppRunner(build_app(pipeline, health, 1 << 20))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", pipeline, health
    await runner.cleanup()
    store.close()


async def test_a_body_shorter_than_its_content_length_is_answered_408_in_time(
        receiver: tuple[str, Pipeline, Health]) -> None:
    url, pipeline, _ = receiver
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf"
                 b"\r\nContent-Length: 1000\r\n\r\n" + b"\x0a" * 10)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.split()[1] == b"408"
    assert time.monotonic() - started < 5
    assert pipeline.counters["rejected_bodies_timed_out"] == 1


async def test_too_many_spans_in_one_request_is_413_with_the_setting_named(
        receiver: tuple[str, Pipeline, Health]) -> None:
    url, pipeline, _ = receiver
    body = request({"svc": [span(name="x") for _ in range(51)]}).SerializeToString()
    async with ClientSession() as session, session.post(
            f"{url}/v1/traces", data=body,
            headers={"Content-Type": "application/x-protobuf"}) as answer:
        assert answer.status == 413
        assert "FLOWSCOPE_MAX_SPANS_PER_REQUEST" in await answer.text()
    assert pipeline.store.counters() == {}  # nothing of it was stored
    assert pipeline.counters["rejected_bodies_oversized"] == 1


async def test_a_store_that_cannot_write_is_503_with_retry_after_then_200(
        receiver: tuple[str, Pipeline, Health]) -> None:
    url, pipeline, health = receiver
    body = request({"svc": [span(name="x")]}).SerializeToString()
    pipeline.store.db.execute("PRAGMA query_only = 1")  # type: ignore[attr-defined]
    async with ClientSession() as session:
        async with session.post(f"{url}/v1/traces", data=body,
                                headers={"Content-Type": "application/x-protobuf"}) as answer:
            assert answer.status == 503
            assert answer.headers["Retry-After"] == "5"
        assert health.components["otlp_http"].state == "degraded"
        pipeline.store.db.execute("PRAGMA query_only = 0")  # type: ignore[attr-defined]
        async with session.post(f"{url}/v1/traces", data=body,
                                headers={"Content-Type": "application/x-protobuf"}) as answer:
            assert answer.status == 200
        assert health.components["otlp_http"].state == "ok"


async def test_health_answers_while_a_large_body_is_decoded(
        receiver: tuple[str, Pipeline, Health]) -> None:
    url, _, _ = receiver
    # about 1 MiB of spans with many attributes: decoded and normalised off the event loop
    big = request({"svc": [span(name="send t", kind="producer", attributes={
        f"a{i}": "v" * 40 for i in range(20)}) for _ in range(50)]}).SerializeToString()
    async with ClientSession() as session:
        posting = asyncio.create_task(session.post(
            f"{url}/v1/traces", data=big, headers={"Content-Type": "application/x-protobuf"}))
        async with session.get(f"{url}/health") as answer:
            assert answer.status == 200
            assert (await answer.json())["status"] == "ok"
        response = await posting
        assert response.status == 200
        response.release()
