"""`flowscope collect`: span ingest (OTLP/HTTP and the spans topic), the store, forwarding
to Jaeger and retention, in one asyncio process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from collectors.flows.assembler import DEAD_LETTERED
from collectors.forward import JaegerForwarder
from collectors.ingest import otlp_http
from collectors.ingest.kafka_spans import consume_spans_topic
from collectors.ingest.pipeline import Pipeline
from collectors.ingest.tap import run_tap, topic_pattern
from collectors.lag.poller import LagPoller
from collectors.store.factory import flow_rules, open_store
from collectors.store.sqlite import SqliteStore
from flowscope.settings import Settings

log = logging.getLogger(__name__)
RETENTION_EVERY_S = 60.0


async def ensure_spans_topic(bootstrap: str, topic: str) -> None:
    """Create the spans topic when it is missing (best effort: the consumer retries)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        if topic not in await asyncio.wait_for(admin.list_topics(), 10):
            await asyncio.wait_for(admin.create_topics([NewTopic(topic, 3, 1)]), 10)
    except (KafkaError, TimeoutError, OSError) as exc:
        if not isinstance(exc, TopicAlreadyExistsError):
            log.warning("could not check the spans topic %s on %s: %s", topic, bootstrap, exc)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def run_collector(settings: Settings, *, kafka_spans: bool = True,
                        on_ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM."""
    collector = settings.collect
    store = open_store(settings)
    forwarder = None
    if settings.jaeger.external_otlp_endpoint:
        forwarder = JaegerForwarder(settings.jaeger.external_otlp_endpoint)
    pipeline = Pipeline(store, forwarder)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    runner = web.AppRunner(otlp_http.build_app(pipeline, collector.max_body_bytes),
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, collector.otlp_host, collector.otlp_port)
    tasks = []
    try:
        await site.start()
        if forwarder is not None:
            tasks.append(asyncio.ensure_future(forwarder.run(stopping)))
        if kafka_spans:
            await ensure_spans_topic(settings.kafka.bootstrap, collector.spans_topic)
            tasks.append(asyncio.ensure_future(consume_spans_topic(
                settings.kafka.bootstrap, collector.spans_topic, pipeline, stopping)))
            if collector.tap:
                rules = flow_rules(collector)
                tasks.append(asyncio.ensure_future(run_tap(
                    settings.kafka.bootstrap,
                    topic_pattern(collector.tap_topics, (collector.spans_topic,)), pipeline,
                    stopping, offset_reset=collector.tap_from,
                    keep_headers_of=lambda topic: rules.flag_of(topic) == DEAD_LETTERED)))
            tasks.append(asyncio.ensure_future(poll_lag(
                settings.kafka.bootstrap, pipeline, store, stopping,
                interval_s=collector.lag_interval_s, window=collector.lag_window)))
        tasks.append(asyncio.ensure_future(_maintain(pipeline, store, stopping)))
        if on_ready is not None:
            on_ready(f"http://{collector.otlp_host}:{collector.otlp_port}")
        await stopping.wait()
    finally:
        stopping.set()
        await runner.cleanup()
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            task.cancel()
        await pipeline.flush_counters()
        store.close()


async def poll_lag(bootstrap: str, pipeline: Pipeline, store: SqliteStore,
                   stopping: asyncio.Event, *, interval_s: float, window: int) -> None:
    """Poll consumer lag every interval_s into the store; reconnect after broker trouble."""
    delay = 1.0
    while not stopping.is_set():
        poller = LagPoller(bootstrap, window=window)
        try:
            await poller.start()
            delay = 1.0
            while not stopping.is_set():
                started = time.monotonic()
                rows, groups = await poller.poll()
                await pipeline.exclusive(store.write_lag, rows, groups)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(),
                                           max(0.0, interval_s - (time.monotonic() - started)))
        except (KafkaError, TimeoutError, OSError) as exc:
            pipeline.count("lag_poll_failures")
            log.warning("lag polling on %s failed (%s); again in %.0fs", bootstrap,
                        type(exc).__name__, delay)
        finally:
            await poller.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        delay = min(delay * 2, 30.0)


async def _maintain(pipeline: Pipeline, store: SqliteStore, stopping: asyncio.Event) -> None:
    """Flush counters every second; apply retention every minute."""
    next_retention = 0.0
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 1.0)
        await pipeline.flush_counters()
        if time.monotonic() >= next_retention:
            deleted = await pipeline.exclusive(store.apply_retention, time.time_ns())
            if deleted:
                log.info("retention removed %d rows", deleted)
            next_retention = time.monotonic() + RETENTION_EVERY_S
