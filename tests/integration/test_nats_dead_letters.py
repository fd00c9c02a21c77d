"""JetStream's dead letters against the real server: a message that reaches its consumer's
max-deliver limit, and one its subscriber terminates, are recorded from the server's own
advisories, with their reason, subject and headers: their flows are dead-lettered and the
retries page lists them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats as nats_client
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from base.settings import Settings
from flowscope.infra.nats import NatsStatus
from store.factory import open_store
from tests.integration.collector_process import Collector

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def nats_collector(tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: Any,
                   nats_server: NatsStatus) -> Iterator[Collector]:
    collector = Collector.create(tmp_path / "home", kafka_bootstrap, jaeger_endpoints.otlp_http,
                                 jaeger_endpoints.query, f"spans-{tmp_path.name}")
    collector.env.update(FLOWSCOPE_NATS_URL=nats_server.url,
                         FLOWSCOPE_NATS_MONITORING_URL=nats_server.monitoring_url)
    collector.start("--no-kafka", "--no-rabbitmq")
    yield collector
    collector.stop()


@pytest.fixture
async def client(nats_server: NatsStatus) -> AsyncIterator[Any]:
    connection = await nats_client.connect(nats_server.url, connect_timeout=5)
    try:
        yield connection
    finally:
        await connection.close()


async def test_max_deliveries_and_terminated_messages_are_dead_letters_of_their_flows(
        nats_collector: Collector, client: Any, unique_name: str) -> None:
    stream = "D" + unique_name.replace("-", "_").upper()
    subject = f"{stream.lower()}.orders"
    jetstream = client.jetstream(timeout=10)
    health = nats_collector.wait_for_health(
        lambda h: h["components"].get("jetstream_advisories", {}).get("state") == "ok")
    assert health["components"]["jetstream_advisories"]["state"] == "ok"
    await jetstream.add_stream(name=stream, subjects=[f"{stream.lower()}.*"])
    try:
        await jetstream.add_consumer(stream, ConsumerConfig(
            durable_name="billing", ack_policy=AckPolicy.EXPLICIT, max_deliver=2, ack_wait=30))
        for flow in ("flow-exhausted", "flow-terminated"):
            await jetstream.publish(subject, b'{"order": 1}', headers={
                "correlation-id": f"{unique_name}-{flow}", "traceparent": TRACEPARENT,
                "x-note": "<b>text only</b>"})
        consumer = await jetstream.pull_subscribe_bind("billing", stream)
        first, second = await consumer.fetch(2, timeout=5)
        await first.nak()  # delivery 1 of 2
        await second.term()  # given up by its subscriber
        [again] = await consumer.fetch(1, timeout=5)
        assert again.metadata.num_delivered == 2
        await again.nak()  # delivery 2 of 2
        # The server gives it up when it would deliver it again: to the next pull request.
        with pytest.raises(nats_client.errors.TimeoutError):
            await consumer.fetch(1, timeout=2)

        for flow in ("flow-exhausted", "flow-terminated"):
            found = await asyncio.to_thread(
                nats_collector.wait_for, lambda f: f.get("status") == "dead-lettered", "flow",
                f"{unique_name}-{flow}")
            assert found["status"] == "dead-lettered"

        settings = Settings.from_env(nats_collector.env)
        store = open_store(settings, readonly=True)
        try:
            letters = store.dead_letters(time.time_ns() - 600 * 10**9)
        finally:
            store.close()
        ours = {letter.correlation_id: letter for letter in letters
                if (letter.correlation_id or "").startswith(unique_name)}
        exhausted = ours[f"{unique_name}-flow-exhausted"]
        terminated = ours[f"{unique_name}-flow-terminated"]
        assert exhausted.topic == \
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.billing"
        assert terminated.topic == \
            f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.billing"
        assert (exhausted.offset, terminated.offset) == (1, 2)  # stream sequences
        headers = dict(exhausted.headers)
        assert headers["dlq-reason"] == "max deliveries reached (2)"
        assert (headers["nats-consumer"], headers["nats-subject"]) == ("billing", subject)
        assert headers["x-note"] == "<b>text only</b>"  # kept as text; the page shows text
        assert exhausted.flow_id == f"{unique_name}-flow-exhausted"
        assert dict(terminated.headers)["dlq-reason"]
    finally:
        await jetstream.delete_stream(stream)
