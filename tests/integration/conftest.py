"""Fixtures that start the real Kafka broker and the real Jaeger once per test session.

What the session started, it stops at the end; what was already running (or is external) is
left alone. A component that cannot be started is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from base.settings import Settings
from flowscope.infra import artemis, jaeger, kafka, nats, rabbitmq
from flowscope.infra.jaeger import JaegerStatus
from flowscope.infra.nats import NatsStatus
from flowscope.infra.rabbitmq import RabbitmqStatus
from tests.integration.demo_stack import free_ports


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration carries the integration marker."""
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings of this environment (KAFKA_BOOTSTRAP_SERVERS and FLOWSCOPE_* honoured)."""
    return Settings.from_env()


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: Settings) -> Iterator[str]:
    """Bootstrap address of a real broker: the external one, a running native one, or a new one."""
    already = settings.kafka.external_bootstrap is not None or kafka.status(settings).running
    current = kafka.start(settings)
    yield current.bootstrap
    if not already:
        kafka.stop(settings)


@pytest.fixture(scope="session")
def jaeger_endpoints(settings: Settings) -> Iterator[JaegerStatus]:
    """Endpoints of a real Jaeger: the external one, a running native one, or a new one."""
    already = settings.jaeger.external or jaeger.status(settings).running
    current = jaeger.start(settings)
    yield current
    if not already:
        jaeger.stop(settings)


@pytest.fixture(scope="session")
def rabbitmq_node(settings: Settings) -> Iterator[RabbitmqStatus]:
    """A real RabbitMQ: the external one, a running native node, or a new one (Debian's
    rabbitmq-server; a machine without it fails here with the apt-get command)."""
    already = settings.rabbitmq.external or rabbitmq.status(settings).running
    current = rabbitmq.start(settings)
    yield current
    if not already:
        rabbitmq.stop(settings)


@pytest.fixture(scope="session")
def nats_server(settings: Settings) -> Iterator[NatsStatus]:
    """A real NATS server with JetStream: the external one, a running native one, or a new
    one (built from the Go module proxy when it is not yet)."""
    already = settings.nats.external or nats.status(settings).running
    current = nats.start(settings)
    yield current
    if not already:
        nats.stop(settings)


@dataclass(frozen=True)
class ArtemisBroker:
    """The session's Artemis: its settings, and the environment that points `flowscope`
    children (and the services) at it."""

    settings: Settings
    env: dict[str, str]

    @property
    def amqp_url(self) -> str:
        """AMQP 1.0 URL, credentials included."""
        return self.settings.artemis.amqp_url

    @property
    def management_url(self) -> str:
        """Jolokia's base URL, credentials included."""
        return self.settings.artemis.management_url


@pytest.fixture(scope="session")
def artemis_broker(settings: Settings, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[ArtemisBroker]:
    """A real ActiveMQ Artemis: the external one (FLOWSCOPE_ARTEMIS_URL), or a native one of
    the session's own (a home under tmp, free ports, the shared cache), stopped at the end.
    A machine without Java or Maven fails here, it skips nothing."""
    if settings.artemis.external:
        artemis.start(settings)
        yield ArtemisBroker(settings, dict(os.environ))
        return
    amqp, core, management = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_ARTEMIS_")}
    env.update(FLOWSCOPE_HOME=str(tmp_path_factory.mktemp("artemis-home")),
               FLOWSCOPE_CACHE_DIR=str(settings.cache_dir), FLOWSCOPE_ARTEMIS_PORT=str(amqp),
               FLOWSCOPE_ARTEMIS_CORE_PORT=str(core),
               FLOWSCOPE_ARTEMIS_MANAGEMENT_PORT=str(management))
    own = Settings.from_env(env)
    try:
        artemis.start(own)
        yield ArtemisBroker(own, env)
    finally:
        artemis.stop(own)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A topic or group name no other test (or earlier run) uses."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-")
    return f"{base}-{uuid.uuid4().hex[:8]}"


async def create_topic(bootstrap: str, name: str, partitions: int = 1,
                       timeout_s: float = 30.0) -> str:
    """Create a topic and wait (bounded) until its partitions have leaders."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await asyncio.wait_for(
            admin.create_topics([NewTopic(name, partitions, replication_factor=1)]), timeout_s)
        async with asyncio.timeout(timeout_s):
            while True:
                described = await admin.describe_topics([name])
                found = described[0]["partitions"] if described else []
                if len(found) == partitions and all(p["leader"] >= 0 for p in found):
                    return name
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


def run_flowscope(env: dict[str, str], *args: str, timeout_s: float = 180
                  ) -> subprocess.CompletedProcess[str]:
    """Run the `flowscope` command line in a child process."""
    return subprocess.run([sys.executable, "-m", "flowscope", *args], env=env, text=True,
                          capture_output=True, timeout=timeout_s, check=False)


@pytest.fixture
def own_broker_env(tmp_path: Path, settings: Settings) -> Iterator[dict[str, str]]:
    """An environment for a second native broker: its own home and ports, the shared cache."""
    broker, controller = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update(FLOWSCOPE_HOME=str(tmp_path / "home"), FLOWSCOPE_CACHE_DIR=str(settings.cache_dir),
               FLOWSCOPE_KAFKA_PORT=str(broker), FLOWSCOPE_KAFKA_CONTROLLER_PORT=str(controller))
    yield env
    run_flowscope(env, "kafka", "stop")
