"""The demo's Artemis leg and the collector through a restart of the broker mid-run: while the
broker is away the Artemis poller and the dead-letter reader say so on /health (and nothing
else stops); the services reconnect by themselves; every order placed before, during and
after the restart is invoiced, its request delivered to billing and the invoice to the ledger
(durable messages outlive the restart, a request that could not be sent is sent again when
orders handles its Kafka message again), each order one flow."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from base.settings import Settings
from demo_services import addresses
from flowscope.infra import artemis
from tests.integration.collector_process import Collector
from tests.integration.conftest import ArtemisBroker, run_flowscope
from tests.integration.demo_stack import DemoStack, free_ports
from tests.integration.test_demo_artemis import RUNNING, post_order

pytestmark = pytest.mark.timeout(300)
COMPONENTS = ("artemis_poller", "artemis_dead_letters")
KNOBS = {"billing_failure": "0", "work_ms": "5", "inventory_failure": "0", "seed": "5"}


@pytest.fixture
def own_broker(tmp_path: Path, settings: Settings,
               artemis_broker: ArtemisBroker) -> Iterator[dict[str, str]]:
    """The environment of a broker of its own (the session's distribution, new home and
    ports), started."""
    amqp, core, management = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_ARTEMIS_")}
    env.update(FLOWSCOPE_HOME=str(tmp_path / "artemis-home"),
               FLOWSCOPE_CACHE_DIR=str(settings.cache_dir), FLOWSCOPE_ARTEMIS_PORT=str(amqp),
               FLOWSCOPE_ARTEMIS_CORE_PORT=str(core),
               FLOWSCOPE_ARTEMIS_MANAGEMENT_PORT=str(management))
    started = run_flowscope(env, "artemis", "start")
    assert started.returncode == 0, started.stderr
    yield env
    run_flowscope(env, "artemis", "stop")


def _states(collector: Collector) -> dict[str, Any]:
    components = collector.health()["components"]
    return {name: components.get(name, {}).get("state") for name in COMPONENTS}


def test_the_demo_and_the_collector_ride_out_an_artemis_restart(
        tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: Any,
        own_broker: dict[str, str]) -> None:
    broker = artemis.status(Settings.from_env(own_broker))
    collector = Collector.create(tmp_path / "home", kafka_bootstrap, jaeger_endpoints.otlp_http,
                                 jaeger_endpoints.query, f"spans-{tmp_path.name}")
    collector.env.update(FLOWSCOPE_ARTEMIS_URL=broker.amqp_url,
                         FLOWSCOPE_ARTEMIS_MANAGEMENT_URL=broker.management_url,
                         FLOWSCOPE_LAG_INTERVAL="0.5")
    collector.start("--no-rabbitmq", "--no-nats")
    stack = DemoStack.create(tmp_path / "demo", kafka_bootstrap, collector.otlp_url,
                             f"ar{uuid.uuid4().hex[:8]}.", artemis_url=broker.amqp_url, **KNOBS)
    stack.start(only=RUNNING)
    config = stack.config
    invoices = addresses.address(config, addresses.INVOICES)
    ledger = addresses.subscription_queue(config, addresses.BILLING_EVENTS, addresses.LEDGER)
    run = uuid.uuid4().hex[:6]
    placed: list[str] = []

    def place(count: int) -> None:
        for _ in range(count):
            placed.append(f"restart-{run}-{len(placed):03d}")
            post_order(config, placed[-1])

    try:
        collector.wait_for_health(lambda h: all(
            h["components"].get(name, {}).get("state") == "ok" for name in COMPONENTS))
        place(5)
        assert run_flowscope(own_broker, "artemis", "stop").returncode == 0
        away = collector.wait_for_health(lambda h: all(
            h["components"].get(name, {}).get("state") == "degraded" for name in COMPONENTS))
        assert "Artemis management API" in away["components"]["artemis_poller"]["reason"]
        # Kafka's lag polling is another component, and runs on while Artemis is away.
        running = collector.wait_for_health(
            lambda h: h["components"]["lag_poller"]["state"] == "ok")
        assert running["components"]["artemis_poller"]["state"] == "degraded"
        place(5)  # their invoice requests cannot be sent until the broker is back

        assert run_flowscope(own_broker, "artemis", "start").returncode == 0
        collector.wait_for_health(lambda h: all(
            h["components"].get(name, {}).get("state") == "ok" for name in COMPONENTS),
            timeout_s=60)
        place(5)
        for correlation_id in placed:
            flow = collector.wait_for(lambda f: any(
                h["system"] == "activemq" and h["queue"] == ledger and h["consumer"] == "ledger"
                for h in f["hop_list"]), "flow", correlation_id, timeout_s=120)
            billed = [h for h in flow["hop_list"]  # type: ignore[attr-defined]
                      if h["queue"] == invoices and h["consumer"] == "billing"]
            assert billed, correlation_id
            assert flow["status"] == "completed"
        # The queues are polled again, and drained.
        lag = collector.wait_for(lambda r: any(
            row["system"] == "activemq" and row["group"] == invoices and row["lag"] == 0
            and row["consumers"] >= 1 for row in r["partitions"]), "lag", timeout_s=60)
        assert lag
        assert _states(collector) == dict.fromkeys(COMPONENTS, "ok")
    finally:
        assert stack.stop() == 0
        assert collector.stop() == 0
