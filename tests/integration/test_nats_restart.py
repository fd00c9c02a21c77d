"""The collector through a restart of the NATS server: while the server is away the JetStream
poller and the advisories subscription say so on /health (and nothing else stops); when it is
back both recover by themselves, the stream still holds its messages (JetStream's store is on
disk), the consumer's backlog is polled again, and a message given up after the restart is
still recorded as a dead letter."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats as nats_client
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from base.settings import Settings
from flowscope.infra import nats
from tests.integration.collector_process import Collector
from tests.integration.conftest import run_flowscope
from tests.integration.demo_stack import free_ports

pytestmark = pytest.mark.timeout(180)
COMPONENTS = ("jetstream_poller", "jetstream_advisories")


@pytest.fixture
def own_server(tmp_path: Path, settings: Settings,
               nats_server: nats.NatsStatus) -> Iterator[dict[str, str]]:
    """The environment of a NATS server of its own (the session's build, new home and ports),
    started."""
    client, monitoring = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_NATS_")}
    env.update(FLOWSCOPE_HOME=str(tmp_path / "nats-home"), FLOWSCOPE_NATS_PORT=str(client),
               FLOWSCOPE_NATS_MONITORING_PORT=str(monitoring),
               FLOWSCOPE_CACHE_DIR=str(settings.cache_dir))
    started = run_flowscope(env, "nats", "start")
    assert started.returncode == 0, started.stderr
    yield env
    run_flowscope(env, "nats", "stop")


async def _publish(url: str, stream: str, count: int, terminate: int = 0) -> None:
    """count messages into the stream (made when missing) with its consumer; then fetch and
    terminate `terminate` of them."""
    client = await nats_client.connect(url, connect_timeout=5)
    try:
        jetstream = client.jetstream(timeout=10)
        await jetstream.add_stream(name=stream, subjects=[f"{stream.lower()}.*"])
        await jetstream.add_consumer(stream, ConsumerConfig(durable_name="worker",
                                                            ack_policy=AckPolicy.EXPLICIT))
        for number in range(count):
            await jetstream.publish(f"{stream.lower()}.x", b"{}",
                                    headers={"correlation-id": f"restart-{stream}-{number}"})
        if terminate:
            consumer = await jetstream.pull_subscribe_bind("worker", stream)
            for message in await consumer.fetch(terminate, timeout=5):
                await message.term()
    finally:
        await client.close()


def _states(collector: Collector) -> dict[str, Any]:
    components = collector.health()["components"]
    return {name: components.get(name, {}).get("state") for name in COMPONENTS}


def test_the_collector_rides_out_a_nats_restart(
        tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: Any,
        own_server: dict[str, str]) -> None:
    server = nats.status(Settings.from_env(own_server))
    collector = Collector.create(tmp_path / "home", kafka_bootstrap, jaeger_endpoints.otlp_http,
                                 jaeger_endpoints.query, f"spans-{tmp_path.name}")
    collector.env.update(FLOWSCOPE_NATS_URL=server.url,
                         FLOWSCOPE_NATS_MONITORING_URL=server.monitoring_url,
                         FLOWSCOPE_LAG_INTERVAL="0.5")
    collector.start("--no-rabbitmq")
    try:
        collector.wait_for_health(lambda h: all(
            h["components"].get(name, {}).get("state") == "ok" for name in COMPONENTS))
        asyncio.run(_publish(server.url, "RESTART", 5))

        def backlog(result: dict[str, Any]) -> bool:
            return any(r["system"] == "nats" and r["topic"] == "RESTART" and r["lag"] == 5
                       for r in result["partitions"])

        collector.wait_for(backlog, "lag")
        assert run_flowscope(own_server, "nats", "stop").returncode == 0
        away = collector.wait_for_health(lambda h: all(
            h["components"].get(name, {}).get("state") == "degraded" for name in COMPONENTS))
        assert "NATS" in away["components"]["jetstream_poller"]["reason"]
        # Kafka's lag polling is another component, and runs on while NATS is away.
        running = collector.wait_for_health(
            lambda h: h["components"]["lag_poller"]["state"] == "ok")
        assert running["components"]["jetstream_poller"]["state"] == "degraded"

        assert run_flowscope(own_server, "nats", "start").returncode == 0
        collector.wait_for_health(lambda h: all(
            h["components"].get(name, {}).get("state") == "ok" for name in COMPONENTS),
            timeout_s=60)
        # The stream kept its messages through the restart: the backlog is polled again.
        collector.wait_for(backlog, "lag")
        asyncio.run(_publish(server.url, "RESTART", 0, terminate=1))
        flow = collector.wait_for(lambda f: f.get("status") == "dead-lettered", "flow",
                                  "restart-RESTART-0")
        assert flow["status"] == "dead-lettered"
        assert _states(collector) == dict.fromkeys(COMPONENTS, "ok")
    finally:
        assert collector.stop() == 0
