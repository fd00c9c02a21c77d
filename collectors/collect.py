"""`flowscope collect`: span ingest (OTLP/HTTP and the spans topic), the store, forwarding
to Jaeger and retention, in one asyncio process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

import aiohttp
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from base.settings import Settings, redact_url
from collectors.flows.writer import FlowWriter
from collectors.forward import JaegerForwarder
from collectors.ingest import otlp_http
from collectors.ingest.artemis_dead_letters import COMPONENT as ARTEMIS_DEAD_LETTERS
from collectors.ingest.artemis_dead_letters import run_dead_letters
from collectors.ingest.jetstream_advisories import COMPONENT as ADVISORIES
from collectors.ingest.jetstream_advisories import run_advisories
from collectors.ingest.kafka_spans import COMPONENT as kafka_spans_component
from collectors.ingest.kafka_spans import consume_spans_topic
from collectors.ingest.otlp_publish import SpanPublisher
from collectors.ingest.pipeline import Pipeline
from collectors.ingest.tap import COMPONENT as tap_component
from collectors.ingest.tap import run_tap, topic_pattern
from collectors.lag.artemis import ArtemisPoller, JolokiaError
from collectors.lag.jetstream import JetStreamPoller, MonitoringError
from collectors.lag.poller import LagPoller
from collectors.lag.queues import ManagementError, QueuePoller
from collectors.supervise import Health, supervise
from store.contract import StoreUnavailable
from store.factory import flow_rules, open_store
from store.records import GroupLag, LagRow
from store.vocabulary import ACTIVEMQ, NATS, RABBITMQ, ComponentState, FlowFlag

log = logging.getLogger(__name__)
RETENTION_EVERY_S = 60.0
LAG_COMPONENT = "lag_poller"
QUEUES_COMPONENT = "queue_poller"
JETSTREAM_COMPONENT = "jetstream_poller"
ARTEMIS_COMPONENT = "artemis_poller"
MAINTENANCE = "maintenance"
FORWARDER = "forwarder"
# Work done once for every collector writing one store, by the collector that leads it (the
# store elects it: Store.lead); the spans topic and the tap are shared by Kafka consumer groups.
ONCE_PER_CLUSTER = (LAG_COMPONENT, QUEUES_COMPONENT, JETSTREAM_COMPONENT, ARTEMIS_COMPONENT,
                    ARTEMIS_DEAD_LETTERS, ADVISORIES)
RETENTION_ROLE = "retention"
LEAD_CHECK_S = 2.0  # how often a leader checks it still leads, and a standby whether to take over


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
                        queues_url: str | None = None,
                        nats: tuple[str, str | None] | None = None,
                        artemis: str | None = None,
                        on_ready: Callable[[str], None] | None = None,
                        stopping: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or, when given, until stopping is set). queues_url: the
    management API of a RabbitMQ whose queues' backlog to poll; nats: the monitoring and
    client URLs of a NATS server whose JetStream consumers' backlog to poll; artemis: the
    management API (Jolokia) of an ActiveMQ Artemis broker whose queues' backlog and dead
    letters to poll (None: none)."""
    collector = settings.collect
    store = open_store(settings)
    forwarder = None
    if settings.jaeger.external_otlp_endpoint:
        forwarder = JaegerForwarder(settings.jaeger.external_otlp_endpoint)
    rules = flow_rules(collector)
    pipeline = Pipeline(FlowWriter(store, rules, collector.bucket_s), forwarder, collector.limits)
    health = Health()
    if stopping is None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
    publisher = None
    if collector.otlp_to_kafka and kafka_spans:
        publisher = SpanPublisher(settings.kafka.bootstrap, collector.spans_topic)
    runner = web.AppRunner(otlp_http.build_app(pipeline, health, collector.max_body_bytes,
                                               publisher), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, collector.otlp_host, collector.otlp_port)
    tasks = []
    try:
        await site.start()
        health.ok(otlp_http.COMPONENT)
        if kafka_spans:
            await ensure_spans_topic(settings.kafka.bootstrap, collector.spans_topic)
        components = _components(settings, pipeline, health, stopping, kafka=kafka_spans,
                                 queues_url=queues_url, nats=nats, artemis=artemis)
        for name, run in components.items():
            tasks.append(asyncio.ensure_future(supervise(
                name, run, health=health, counters=pipeline.counters, stopping=stopping)))
        if on_ready is not None:
            on_ready(f"http://{collector.otlp_host}:{collector.otlp_port}")
        await stopping.wait()
    finally:
        stopping.set()
        await runner.cleanup()
        if publisher is not None:
            await publisher.stop()
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            task.cancel()
        try:
            await pipeline.flush_counters()
        except StoreUnavailable as exc:
            log.error("counters not saved at exit: %s", exc)
        store.close()


def _components(settings: Settings, pipeline: Pipeline, health: Health,
                stopping: asyncio.Event, *, kafka: bool, queues_url: str | None,
                nats: tuple[str, str | None] | None = None, artemis: str | None = None
                ) -> dict[str, Callable[[], Awaitable[None]]]:
    """The collector's background components, by name, each a coroutine to supervise."""
    collector = settings.collect
    forwarder = pipeline.forwarder
    rules = pipeline.writer.rules
    components: dict[str, Callable[[], Awaitable[None]]] = {}
    if forwarder is not None:
        components[FORWARDER] = lambda: forwarder.run(stopping)
    if kafka:
        components[kafka_spans_component] = lambda: consume_spans_topic(
            settings.kafka.bootstrap, collector.spans_topic, pipeline, health, stopping)
        if collector.tap:
            components[tap_component] = lambda: run_tap(
                settings.kafka.bootstrap,
                topic_pattern(collector.tap_topics, (collector.spans_topic,)), pipeline,
                health, stopping, offset_reset=collector.tap_from,
                keep_headers_of=lambda topic: rules.flag_of(topic) == FlowFlag.DEAD_LETTERED)
        components[LAG_COMPONENT] = lambda: poll_lag(
            settings.kafka.bootstrap, pipeline, health, stopping,
            interval_s=collector.lag_interval_s, window=collector.lag_window)
    if queues_url is not None:
        components[QUEUES_COMPONENT] = lambda: poll_backlog(
            QueuePoller(queues_url, window=collector.lag_window), pipeline, health, stopping,
            component=QUEUES_COMPONENT, system=RABBITMQ, failures=(ManagementError,),
            where=f"RabbitMQ management API {redact_url(queues_url)}",
            interval_s=collector.lag_interval_s)
    if nats is not None:
        monitoring_url, client_url = nats
        if client_url is not None:
            components[ADVISORIES] = lambda: run_advisories(client_url, pipeline, health,
                                                            stopping)
        components[JETSTREAM_COMPONENT] = lambda: poll_backlog(
            JetStreamPoller(monitoring_url, client_url, window=collector.lag_window), pipeline,
            health, stopping, component=JETSTREAM_COMPONENT, system=NATS,
            failures=(MonitoringError,), where=f"NATS monitoring {redact_url(monitoring_url)}",
            interval_s=collector.lag_interval_s)
    if artemis is not None:
        # The dead-letter queues are those the flow rules call dead letters (DLQ.* by default).
        def dead_letter(queue: str) -> bool:
            return rules.flag_of(queue) == FlowFlag.DEAD_LETTERED

        components[ARTEMIS_DEAD_LETTERS] = lambda: run_dead_letters(
            artemis, pipeline, health, stopping, is_dead_letter=dead_letter)
        components[ARTEMIS_COMPONENT] = lambda: poll_backlog(
            ArtemisPoller(artemis, window=collector.lag_window, dead_letter=dead_letter),
            pipeline, health, stopping,
            component=ARTEMIS_COMPONENT, system=ACTIVEMQ, failures=(JolokiaError,),
            where=f"Artemis management API {redact_url(artemis)}",
            interval_s=collector.lag_interval_s)
    components[MAINTENANCE] = lambda: _maintain(pipeline, health, stopping)
    for name in ONCE_PER_CLUSTER:
        if name in components:
            components[name] = partial(lead_then_run, name, components[name], pipeline,
                                       health, stopping)
    return components


async def lead_then_run(name: str, run: Callable[[], Awaitable[None]], pipeline: Pipeline,
                        health: Health, stopping: asyncio.Event, *,
                        check_s: float = LEAD_CHECK_S) -> None:
    """Run a component that must run once per cluster while this collector leads it, and
    stand by while another does: a standby takes over within check_s of the leader's death,
    and a leader that loses the role stops the component. A failure of the component comes
    out to its supervisor."""
    store = pipeline.store
    while not stopping.is_set():
        if not await asyncio.to_thread(store.lead, name):
            health.standby(name, "another collector of this store runs it")
            await _pause(stopping, check_s)
            continue
        log.info("%s: this collector leads it", name)
        task = asyncio.ensure_future(run())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=check_s)
                if not task.done() and not await asyncio.to_thread(store.lead, name):
                    log.warning("%s: another collector leads it now; standing by", name)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            task.cancel()
        if not task.cancelled():
            task.result()  # its failure, for the supervisor
            return


async def poll_lag(bootstrap: str, pipeline: Pipeline, health: Health, stopping: asyncio.Event,
                   *, interval_s: float, window: int) -> None:
    """Poll consumer lag every interval_s into the store; reconnect after broker trouble; a
    poll the store cannot take is counted and the next one tried."""
    delay = 1.0
    while not stopping.is_set():
        poller = LagPoller(bootstrap, window=window)
        try:
            await poller.start()
            delay = 1.0
            while not stopping.is_set():
                started = time.monotonic()
                rows, groups = await poller.poll()
                if poller.skipped_groups:
                    pipeline.count(f"{LAG_COMPONENT}_skipped_groups", poller.skipped_groups)
                    poller.skipped_groups = 0
                await _store_lag(pipeline, health, LAG_COMPONENT, rows, groups)
                await _pause(stopping, interval_s - (time.monotonic() - started))
        except (KafkaError, TimeoutError, OSError) as exc:
            pipeline.count(f"{LAG_COMPONENT}_reconnects")
            health.degraded(LAG_COMPONENT, f"broker: {type(exc).__name__}: {exc}; reconnecting")
            log.warning("lag polling on %s failed (%s); again in %.0fs", bootstrap,
                        type(exc).__name__, delay)
        finally:
            await poller.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        delay = min(delay * 2, 30.0)


class BacklogSource(Protocol):
    """A poller of one messaging system's backlog (RabbitMQ queues, JetStream consumers,
    Artemis queues)."""

    skipped: int  # entries of a poll left out (malformed in the answer); reset by the caller

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def poll(self) -> tuple[list[LagRow], list[GroupLag]]: ...


async def poll_backlog(poller: BacklogSource, pipeline: Pipeline, health: Health,
                       stopping: asyncio.Event, *, component: str, system: str, where: str,
                       failures: tuple[type[Exception], ...], interval_s: float) -> None:
    """Poll a system's backlog every interval_s into the store. An API that is down, refuses
    the credentials or answers nonsense degrades this component (logged, counted, tried again
    with backoff); Kafka's polling is another component and goes on."""
    await poller.start()
    delay = 1.0
    try:
        while not stopping.is_set():
            started = time.monotonic()
            try:
                rows, groups = await poller.poll()
                delay = 1.0
            except (aiohttp.ClientError, TimeoutError, OSError, *failures) as exc:
                pipeline.count(f"{component}_failures")
                reason = f"{type(exc).__name__}: {exc}"[:500]
                health.degraded(component, f"{where}: {reason}")
                log.warning("%s: polling %s failed (%s); again in %.0fs", component, where,
                            reason, delay)
                await _pause(stopping, delay)
                delay = min(delay * 2, 30.0)
                continue
            if poller.skipped:
                pipeline.count(f"{component}_skipped", poller.skipped)
                poller.skipped = 0
            # Everything of the system, but for a malformed entry (counted) or one without
            # statistics yet: an entry missing from the poll was deleted.
            await _store_lag(pipeline, health, component, rows, groups, complete=system)
            await _pause(stopping, interval_s - (time.monotonic() - started))
    finally:
        await poller.stop()


async def _store_lag(pipeline: Pipeline, health: Health, component: str,
                     rows: list[LagRow], groups: list[GroupLag], *,
                     complete: str | None = None) -> None:
    """Store one poll (complete: of every queue of that system, see Store.write_lag); a store
    that cannot take it degrades the component (counted, logged) and the next poll is
    tried."""
    try:
        await pipeline.exclusive(partial(pipeline.store.write_lag, complete=complete),
                                 rows, groups)
        health.ok(component)
    except StoreUnavailable as exc:
        pipeline.count(f"{component}_store_unavailable")
        health.degraded(component, f"store unavailable: {exc}")
        log.warning("%s: poll not stored: %s", component, exc)


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    """Wait this long, or until the collector stops."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), max(0.0, seconds))


async def _maintain(pipeline: Pipeline, health: Health, stopping: asyncio.Event) -> None:
    """Every second: flush counters and health into the store; every minute: retention.
    A store that cannot take them degrades this component; counters are kept until it can."""
    next_retention = 0.0
    store = pipeline.store
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 1.0)
        try:
            await pipeline.flush_counters()
            await pipeline.exclusive(store.write_health, health.snapshot(), time.time_ns())
            if time.monotonic() >= next_retention and \
                    await asyncio.to_thread(store.lead, RETENTION_ROLE):
                deleted = await pipeline.exclusive(store.apply_retention, time.time_ns())
                if deleted:
                    log.info("retention removed %d rows", deleted)
                next_retention = time.monotonic() + RETENTION_EVERY_S
            health.ok(MAINTENANCE)
            _forwarder_health(pipeline, health)
        except StoreUnavailable as exc:
            pipeline.count(f"{MAINTENANCE}_store_unavailable")
            if health.components[MAINTENANCE].state != ComponentState.DEGRADED:
                log.warning("maintenance: %s; counters kept until the store takes them", exc)
            health.degraded(MAINTENANCE, f"store unavailable: {exc}")


def _forwarder_health(pipeline: Pipeline, health: Health) -> None:
    """The forwarder is degraded while Jaeger does not take its batches (a forwarder that is
    down is the supervisor's to report)."""
    component = health.components.get(FORWARDER)
    if pipeline.forwarder is None or component is None or component.state == ComponentState.DOWN:
        return
    if pipeline.forwarder.problem:
        health.degraded(FORWARDER, pipeline.forwarder.problem)
    else:
        health.ok(FORWARDER)
