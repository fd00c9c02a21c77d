"""RabbitMQ restarting under the demo: uploads sent before, during and after the restart all end
(nothing acknowledged is lost: the processor does not commit its Kafka offset before the
broker confirmed the job, the thumbnailer acknowledges only what it handled), the services
reconnect by themselves, and the collector's queue poller says the broker was away and comes
back to ok."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from base.settings import Settings
from demo_services import topics
from flowscope.infra import rabbitmq
from flowscope.infra.jaeger import JaegerStatus
from tests.integration.collector_process import Collector
from tests.integration.demo_stack import DemoStack, free_ports, wait_for_outcomes
from tests.integration.test_demo_rabbitmq import post_upload

pytestmark = pytest.mark.timeout(300)
RUNNING = ("webhook", "uploads", "processor", "notifier", "thumbnailer", "indexer", "auditor")
KNOBS = {"thumbnail_failure": "0", "transient_failure": "0", "permanent_failure": "0",
         "callback_failure": "0", "work_ms": "5", "backoff_base_ms": "100",
         "backoff_max_ms": "1000"}


@pytest.fixture
def own_node(tmp_path: Path) -> Iterator[Settings]:
    """A RabbitMQ node of this test's own (it is restarted: nobody else may use it)."""
    amqp, management, dist, epmd = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_RABBITMQ_")}
    env.update(FLOWSCOPE_HOME=str(tmp_path / "node"), FLOWSCOPE_RABBITMQ_PORT=str(amqp),
               FLOWSCOPE_RABBITMQ_MANAGEMENT_PORT=str(management),
               FLOWSCOPE_RABBITMQ_DIST_PORT=str(dist), FLOWSCOPE_RABBITMQ_EPMD_PORT=str(epmd))
    settings = Settings.from_env(env)
    rabbitmq.start(settings)
    try:
        yield settings
    finally:
        rabbitmq.stop(settings)


def _post(stack: DemoStack, count: int, label: str) -> set[str]:
    flows = {f"restart-{label}-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)}
    for flow in flows:
        post_upload(stack.config, flow)
    return flows


def test_uploads_survive_a_rabbitmq_restart_and_the_collector_says_it_was_away(
        tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: JaegerStatus,
        own_node: Settings) -> None:
    node = rabbitmq.status(own_node)
    collector = Collector.create(tmp_path / "collector", kafka_bootstrap,
                                 jaeger_endpoints.otlp_http, jaeger_endpoints.query,
                                 f"spans-{uuid.uuid4().hex[:8]}")
    collector.env.update(FLOWSCOPE_RABBITMQ_URL=node.amqp_url,
                         FLOWSCOPE_RABBITMQ_MANAGEMENT_URL=node.management_url,
                         FLOWSCOPE_LAG_INTERVAL="0.5")
    collector.start("--no-kafka")
    stack = DemoStack.create(tmp_path / "demo", kafka_bootstrap, collector.otlp_url,
                             f"rr{uuid.uuid4().hex[:6]}.", rabbitmq_url=node.amqp_url, **KNOBS)
    stack.start(only=RUNNING)
    try:
        before = _post(stack, 10, "before")
        asyncio.run(wait_for_outcomes(stack.config, before, [topics.FILES_NOTIFIED], 60))
        rabbitmq.stop(own_node)
        away = collector.wait_for_health(
            lambda h: h["components"]["queue_poller"]["state"] == "degraded", timeout_s=30)
        assert "RabbitMQ management API" in away["components"]["queue_poller"]["reason"]
        during = _post(stack, 10, "during")  # accepted into Kafka; the jobs wait for the node
        rabbitmq.start(own_node)
        after = _post(stack, 10, "after")
        asyncio.run(wait_for_outcomes(stack.config, during | after, [topics.FILES_NOTIFIED],
                                      120))
        collector.wait_for_health(
            lambda h: h["components"]["queue_poller"]["state"] == "ok", timeout_s=60)
        # The services reconnected by themselves: every one still runs, none restarted.
        assert set(stack.pids()) >= set(RUNNING)
    finally:
        assert stack.stop() == 0
        assert collector.stop() == 0
