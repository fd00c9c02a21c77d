"""Queue backlog against the real RabbitMQ: what `flowscope collect` polls from the management
API and `inspect lag --json` prints equals what `rabbitmqctl list_queues` says at the same
moment; a queue whose consumers stop goes ERR with a growing lag in seconds, and OK again once
it drains."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from base.settings import Settings
from flowscope.infra import rabbitmq
from flowscope.infra.rabbitmq import RabbitmqStatus
from tests.integration.collector_process import Collector
from tests.integration.demo_stack import free_port

Lag = dict[str, tuple[int, int, int]]  # queue -> (ready, unacknowledged, consumers)


def rabbitmqctl_queues(settings: Settings, names: set[str]) -> Lag:
    """`rabbitmqctl list_queues name messages_ready messages_unacknowledged consumers` of the
    native node, for these queues."""
    paths = rabbitmq.RabbitmqPaths.of(settings)
    node = rabbitmq.node_name(settings)
    done = subprocess.run(
        [str(paths.ctl), "-n", node, "list_queues", "--quiet", "--no-table-headers", "name",
         "messages_ready", "messages_unacknowledged", "consumers"],
        env=rabbitmq.node_environment(settings.rabbitmq, paths, node),
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    found = {}
    for line in done.stdout.splitlines():  # tab-separated, in the order asked
        name, ready, unacknowledged, consumers = line.split("\t")
        if name in names:
            found[name] = (int(ready), int(unacknowledged), int(consumers))
    return found


def inspected_queues(collector: Collector, names: set[str]) -> tuple[Lag, dict[str, dict]]:  # type: ignore[type-arg]
    """The collector's latest rows of these queues, and its group rows of them."""
    result = collector.inspect("lag")
    rows = {r["group"]: r for r in result["partitions"]  # type: ignore[attr-defined]
            if r["system"] == "rabbitmq" and r["group"] in names}
    groups = {g["group"]: g for g in result["groups"]  # type: ignore[attr-defined]
              if g["system"] == "rabbitmq" and g["group"] in names}
    return {n: (r["ready"], r["unacknowledged"], r["consumers"]) for n, r in rows.items()}, \
        {**{n: {"row": r} for n, r in rows.items()},
         **{n: {"row": rows.get(n), "group": g} for n, g in groups.items()}}


@pytest.fixture
def native_node(rabbitmq_node: RabbitmqStatus, settings: Settings) -> RabbitmqStatus:
    if settings.rabbitmq.external:
        pytest.skip("rabbitmqctl compares against the native node only")
    return rabbitmq_node


@pytest.fixture
def queue_collector(tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: object,
                    native_node: RabbitmqStatus, unique_name: str) -> Iterator[Collector]:
    """A collector polling the node's queues every half second."""
    jaeger = jaeger_endpoints
    collector = Collector.create(tmp_path / "home", kafka_bootstrap,
                                 jaeger.otlp_http, jaeger.query,  # type: ignore[attr-defined]
                                 f"spans-{unique_name}")
    collector.env.update(FLOWSCOPE_RABBITMQ_URL=native_node.amqp_url,
                         FLOWSCOPE_RABBITMQ_MANAGEMENT_URL=native_node.management_url,
                         FLOWSCOPE_LAG_INTERVAL="0.5", FLOWSCOPE_LAG_WINDOW="4")
    collector.start("--no-kafka")
    yield collector
    collector.stop()


@pytest.fixture
async def connection(native_node: RabbitmqStatus
                     ) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    opened = await aio_pika.connect(native_node.amqp_url, timeout=30)
    try:
        yield opened
    finally:
        await opened.close()


async def _publish(exchange: aio_pika.abc.AbstractExchange, key: str, count: int) -> None:
    for i in range(count):
        await exchange.publish(aio_pika.Message(f"m{i}".encode(), message_id=f"{key}-{i}",
                                                timestamp=time.time()), key)


async def _wait(check, what: str, timeout_s: float = 45.0):  # type: ignore[no-untyped-def]
    """Call check() until it returns something true (bounded); that."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what} never held; last: {last}")


async def test_inspect_lag_of_every_queue_equals_rabbitmqctl(
        queue_collector: Collector, connection: aio_pika.abc.AbstractConnection,
        settings: Settings, unique_name: str) -> None:
    channel = await connection.channel()
    exchange = await channel.declare_exchange(f"{unique_name}.x", aio_pika.ExchangeType.DIRECT,
                                              auto_delete=True)
    names = {f"{unique_name}.{n}" for n in ("idle", "held", "empty")}
    queues = {}
    for name in sorted(names):
        queues[name] = await channel.declare_queue(name, auto_delete=False)
        await queues[name].bind(exchange, name)
    await _publish(exchange, f"{unique_name}.idle", 7)
    await _publish(exchange, f"{unique_name}.held", 5)
    # A consumer holding 2 of the 5 unacknowledged (prefetch 2, never acks).
    consumer_channel = await connection.channel()
    await consumer_channel.set_qos(prefetch_count=2)
    held = await consumer_channel.get_queue(f"{unique_name}.held")
    async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        """Never acknowledges: the message stays unacknowledged."""

    await held.consume(keep)
    try:
        def equal() -> tuple[Lag, Lag] | None:
            ours, _ = inspected_queues(queue_collector, names)
            theirs = rabbitmqctl_queues(settings, names)
            return (ours, theirs) if ours == theirs and len(ours) == len(names) else None

        ours, theirs = await _wait(equal, "inspect lag == rabbitmqctl list_queues")
        assert ours == theirs
        assert theirs == {f"{unique_name}.idle": (7, 0, 0), f"{unique_name}.held": (3, 2, 1),
                          f"{unique_name}.empty": (0, 0, 0)}
        _, rows = inspected_queues(queue_collector, names)
        idle = rows[f"{unique_name}.idle"]
        assert idle["row"]["lag"] == 7
        assert idle["row"]["topic"] == f"{unique_name}.x"  # the exchange that feeds it
        assert (idle["row"]["partition"], idle["row"]["committed"], idle["row"]["end"]) == \
            (None, None, None)
        assert idle["group"]["status"] == "ERR"  # a backlog and no consumer
        assert rows[f"{unique_name}.empty"]["group"]["status"] == "OK"
    finally:
        await consumer_channel.close()
        for queue in queues.values():
            await queue.delete(if_unused=False, if_empty=False)


async def test_a_queue_whose_consumers_stop_goes_err_then_ok_once_drained(
        queue_collector: Collector, connection: aio_pika.abc.AbstractConnection,
        unique_name: str) -> None:
    channel = await connection.channel()
    name = f"{unique_name}.work"
    queue = await channel.declare_queue(name)
    exchange = channel.default_exchange
    try:
        await _publish(exchange, name, 20)  # no consumer yet: the backlog waits

        def stopped() -> dict | None:  # type: ignore[type-arg]
            _, rows = inspected_queues(queue_collector, {name})
            row = rows.get(name, {})
            group = row.get("group")
            return row if group and group["status"] == "ERR" and group["lag"] == 20 else None

        first = await _wait(stopped, "ERR with 20 messages waiting")
        assert first["row"]["status"] == "STOP"

        def older() -> dict | None:  # type: ignore[type-arg]
            row = inspected_queues(queue_collector, {name})[1].get(name)
            return row if row and row["group"]["lag_seconds"] > \
                first["group"]["lag_seconds"] + 0.5 else None

        later = await _wait(older, "lag_seconds growing while nobody consumes")
        assert later["group"]["status"] == "ERR"

        async def ack(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()

        await queue.consume(ack)

        def drained() -> dict | None:  # type: ignore[type-arg]
            row = inspected_queues(queue_collector, {name})[1].get(name)
            return row if row and row["group"]["status"] == "OK" and \
                row["group"]["lag"] == 0 else None

        done = await _wait(drained, "OK once drained")
        assert done["row"]["lag_seconds"] == 0.0
        assert done["row"]["consumers"] == 1
    finally:
        await queue.delete(if_unused=False, if_empty=False)


@pytest.mark.parametrize("trouble", ["refused credentials", "nobody listening"])
def test_a_management_api_that_refuses_or_is_gone_degrades_only_the_queue_poller(
        tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: object,
        native_node: RabbitmqStatus, trouble: str) -> None:
    port = native_node.management_url.rsplit(":", 1)[1].rstrip("/")
    url = (f"http://guest:wrong@127.0.0.1:{port}" if trouble == "refused credentials"
           else f"http://guest:guest@127.0.0.1:{free_port()}")
    jaeger = jaeger_endpoints
    collector = Collector.create(tmp_path / "home", kafka_bootstrap,
                                 jaeger.otlp_http, jaeger.query,  # type: ignore[attr-defined]
                                 f"spans-{tmp_path.name}")
    collector.env.update(FLOWSCOPE_RABBITMQ_URL=native_node.amqp_url,
                         FLOWSCOPE_RABBITMQ_MANAGEMENT_URL=url, FLOWSCOPE_LAG_INTERVAL="0.5")
    collector.start()
    try:
        health = collector.wait_for_health(
            lambda h: h["components"].get("queue_poller", {}).get("state") == "degraded")
        reason = health["components"]["queue_poller"]["reason"]
        assert ("401" in reason) if trouble == "refused credentials" else \
            ("ClientConnectorError" in reason or "Connect" in reason)
        assert "wrong" not in reason  # the password is never shown
        # Kafka's lag polling is another component, and runs on.
        collector.wait_for_health(lambda h: h["components"]["lag_poller"]["state"] == "ok")
        counted = collector.wait_for(
            lambda c: c["counters"].get("queue_poller_failures", 0) >= 2, "counters")
        assert counted["counters"]["queue_poller_failures"] >= 2  # type: ignore[index]
    finally:
        assert collector.stop() == 0
