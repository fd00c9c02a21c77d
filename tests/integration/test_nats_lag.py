"""JetStream consumer backlog against the real NATS server: what `flowscope collect` polls from
/jsz and `inspect lag --json` prints equals the server's own consumer info (JetStream API) at
the same moment; a consumer that stops goes ERR with a growing lag in seconds, and OK again
once it drains; a consumer deleted while polled is forgotten; a monitoring endpoint that is
gone degrades only the JetStream poller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats as nats_client
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from flowscope.infra.nats import NatsStatus
from tests.integration.collector_process import Collector
from tests.integration.demo_stack import free_port

Figures = dict[str, tuple[int, int, int, int, int]]  # consumer -> lag, ready, unacked, floor, end


def _collector(home: Path, bootstrap: str, jaeger: Any, server: NatsStatus,
               monitoring_url: str | None = None) -> Collector:
    collector = Collector.create(home, bootstrap, jaeger.otlp_http, jaeger.query,
                                 f"spans-{home.parent.name}")
    collector.env.update(FLOWSCOPE_NATS_URL=server.url,
                         FLOWSCOPE_NATS_MONITORING_URL=monitoring_url or server.monitoring_url,
                         FLOWSCOPE_LAG_INTERVAL="0.5", FLOWSCOPE_LAG_WINDOW="4")
    return collector


@pytest.fixture
def nats_collector(tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: object,
                   nats_server: NatsStatus) -> Iterator[Collector]:
    """A collector polling the server's consumers every half second."""
    collector = _collector(tmp_path / "home", kafka_bootstrap, jaeger_endpoints, nats_server)
    collector.start("--no-kafka", "--no-rabbitmq")
    yield collector
    collector.stop()


@pytest.fixture
async def jetstream(nats_server: NatsStatus) -> AsyncIterator[Any]:
    client = await nats_client.connect(nats_server.url, connect_timeout=5)
    try:
        yield client.jetstream(timeout=10)
    finally:
        await client.close()


@pytest.fixture
def stream_name(unique_name: str) -> str:
    return "T" + unique_name.replace("-", "_").upper()


def inspected(collector: Collector, stream: str) -> tuple[Figures, dict[str, dict[str, Any]]]:
    """The collector's latest rows of this stream's consumers, and its group rows of them."""
    result = collector.inspect("lag")
    rows = {r["group"]: r for r in result["partitions"]  # type: ignore[attr-defined]
            if r["system"] == "nats" and r["topic"] == stream}
    groups = {g["group"]: g for g in result["groups"]  # type: ignore[attr-defined]
              if g["system"] == "nats" and g["group"] in rows}
    return ({n: (r["lag"], r["ready"], r["unacknowledged"], r["committed"], r["end"])
             for n, r in rows.items()},
            {n: {"row": r, "group": groups.get(n)} for n, r in rows.items()})


async def server_figures(jetstream: Any, stream: str, names: set[str]) -> Figures:
    """The server's own figures of these consumers, from the JetStream API."""
    last = (await jetstream.stream_info(stream)).state.last_seq
    found = {}
    for name in names:
        info = await jetstream.consumer_info(stream, name)
        found[name] = (info.num_pending + info.num_ack_pending, info.num_pending,
                       info.num_ack_pending, info.ack_floor.stream_seq, last)
    return found


async def _wait(check, what: str, timeout_s: float = 45.0):  # type: ignore[no-untyped-def]
    """Await check() until it returns something true (bounded); that."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what} never held; last: {last}")


async def _make(jetstream: Any, stream: str, consumers: dict[str, str | None]) -> None:
    await jetstream.add_stream(name=stream, subjects=[f"{stream.lower()}.*"])
    for name, subject in consumers.items():
        await jetstream.add_consumer(stream, ConsumerConfig(
            durable_name=name, ack_policy=AckPolicy.EXPLICIT, ack_wait=120,
            filter_subject=subject))


async def _publish(jetstream: Any, subject: str, count: int) -> None:
    for number in range(count):
        await jetstream.publish(subject, str(number).encode())


async def test_inspect_lag_of_every_consumer_equals_the_servers_consumer_info(
        nats_collector: Collector, jetstream: Any, stream_name: str) -> None:
    stream = stream_name
    names = {"idle", "held", "other"}
    await _make(jetstream, stream, {"idle": None, "held": None,
                                    "other": f"{stream.lower()}.other"})
    try:
        await _publish(jetstream, f"{stream.lower()}.work", 10)
        await _publish(jetstream, f"{stream.lower()}.other", 2)
        # "held" takes 4 and acknowledges 2: 8 pending, 2 awaiting their ack.
        held = await jetstream.pull_subscribe_bind("held", stream)
        taken = await held.fetch(4, timeout=5)
        for message in taken[:2]:
            await message.ack_sync()

        async def equal() -> tuple[Figures, Figures] | None:
            ours, _ = await asyncio.to_thread(inspected, nats_collector, stream)
            theirs = await server_figures(jetstream, stream, names)
            return (ours, theirs) if ours == theirs else None

        ours, theirs = await _wait(equal, "inspect lag == the server's consumer info")
        assert ours == theirs
        assert theirs == {"idle": (12, 12, 0, 0, 12), "held": (10, 8, 2, 2, 12),
                          "other": (2, 2, 0, 0, 12)}
        _, rows = await asyncio.to_thread(inspected, nats_collector, stream)
        idle = rows["idle"]
        assert idle["row"]["partition"] is None
        assert idle["group"]["lag"] == 12
        # The first unacknowledged message's age is read from the stream by sequence.
        assert idle["row"]["lag_seconds"] is not None
        assert 0 < idle["row"]["lag_seconds"] < 60
    finally:
        await jetstream.delete_stream(stream)


async def test_a_consumer_that_stops_goes_err_then_ok_once_drained_and_deleted_is_forgotten(
        nats_collector: Collector, jetstream: Any, stream_name: str) -> None:
    stream = stream_name
    await _make(jetstream, stream, {"tracking": None})
    try:
        await _publish(jetstream, f"{stream.lower()}.work", 20)  # nobody fetches

        async def stopped() -> dict[str, Any] | None:
            row = (await asyncio.to_thread(inspected, nats_collector, stream))[1].get("tracking")
            group = row["group"] if row else None
            return row if group and group["status"] == "ERR" and group["lag"] == 20 else None

        first = await _wait(stopped, "ERR with 20 messages waiting")
        assert first["row"]["status"] in ("STALL", "STOP")

        async def older() -> dict[str, Any] | None:
            row = (await asyncio.to_thread(inspected, nats_collector, stream))[1].get("tracking")
            return row if row and row["group"]["lag_seconds"] > \
                first["group"]["lag_seconds"] + 0.5 else None

        later = await _wait(older, "lag_seconds growing while nobody consumes")
        assert later["group"]["status"] == "ERR"

        consumer = await jetstream.pull_subscribe_bind("tracking", stream)
        for message in await consumer.fetch(20, timeout=5):
            await message.ack_sync()

        async def drained() -> dict[str, Any] | None:
            row = (await asyncio.to_thread(inspected, nats_collector, stream))[1].get("tracking")
            return row if row and row["group"]["status"] == "OK" and \
                row["group"]["lag"] == 0 else None

        done = await _wait(drained, "OK once drained")
        assert done["row"]["lag_seconds"] == 0.0
        assert done["row"]["committed"] == done["row"]["end"] == 20

        await jetstream.delete_consumer(stream, "tracking")

        async def forgotten() -> bool:
            return "tracking" not in (await asyncio.to_thread(
                inspected, nats_collector, stream))[0]

        await _wait(forgotten, "the deleted consumer's row gone")
        health = nats_collector.wait_for_health(
            lambda h: h["components"].get("jetstream_poller", {}).get("state") == "ok")
        assert health["components"]["jetstream_poller"]["state"] == "ok"
    finally:
        await jetstream.delete_stream(stream)


def test_a_monitoring_endpoint_that_is_gone_degrades_only_the_jetstream_poller(
        tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: object,
        nats_server: NatsStatus) -> None:
    collector = _collector(tmp_path / "home", kafka_bootstrap, jaeger_endpoints, nats_server,
                           monitoring_url=f"http://127.0.0.1:{free_port()}")
    collector.start("--no-rabbitmq")
    try:
        health = collector.wait_for_health(
            lambda h: h["components"].get("jetstream_poller", {}).get("state") == "degraded")
        reason = health["components"]["jetstream_poller"]["reason"]
        assert "NATS monitoring http://127.0.0.1:" in reason
        assert "Connect" in reason
        # Kafka's lag polling is another component, and runs on.
        collector.wait_for_health(lambda h: h["components"]["lag_poller"]["state"] == "ok")
        counted = collector.wait_for(
            lambda c: c["counters"].get("jetstream_poller_failures", 0) >= 2, "counters")
        assert counted["counters"]["jetstream_poller_failures"] >= 2  # type: ignore[index]
    finally:
        assert collector.stop() == 0
