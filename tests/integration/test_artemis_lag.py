"""Artemis queue backlog against the real broker: what `flowscope collect` polls from Jolokia
and `inspect lag --json` prints equals the broker's own queue statistics at the same moment; a
queue whose consumer stops goes ERR with a growing lag in seconds, and OK again once drained;
a management API that refuses the credentials degrades only the Artemis poller, and says so
without the password."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from proton import Message
from proton.utils import BlockingConnection
from yarl import URL

from flowscope.infra.jolokia import jolokia_request
from tests.integration.collector_process import Collector
from tests.integration.conftest import ArtemisBroker

T = TypeVar("T")
# queue -> lag, ready, delivering, consumers, committed, end
Figures = dict[str, tuple[int, int, int, int, int, int]]
STATISTICS = ("MessageCount", "DeliveringCount", "ScheduledCount", "ConsumerCount",
              "MessagesAcknowledged",
              "MessagesKilled", "MessagesExpired")


def _collector(home: Path, bootstrap: str, jaeger: Any, broker: ArtemisBroker,
               management_url: str | None = None) -> Collector:
    collector = Collector.create(home, bootstrap, jaeger.otlp_http, jaeger.query,
                                 f"spans-{home.parent.name}")
    collector.env.update(FLOWSCOPE_ARTEMIS_URL=broker.amqp_url,
                         FLOWSCOPE_ARTEMIS_MANAGEMENT_URL=management_url or broker.management_url,
                         FLOWSCOPE_LAG_INTERVAL="0.5", FLOWSCOPE_LAG_WINDOW="4")
    return collector


@pytest.fixture
def artemis_collector(tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: object,
                      artemis_broker: ArtemisBroker) -> Iterator[Collector]:
    """A collector polling the broker's queues every half second."""
    collector = _collector(tmp_path / "home", kafka_bootstrap, jaeger_endpoints, artemis_broker)
    collector.start("--no-kafka", "--no-rabbitmq", "--no-nats")
    yield collector
    collector.stop()


@pytest.fixture
def connection(artemis_broker: ArtemisBroker) -> Iterator[BlockingConnection]:
    opened = BlockingConnection(artemis_broker.amqp_url, timeout=10, allowed_mechs="PLAIN")
    yield opened
    with contextlib.suppress(Exception):
        opened.close()


def _send(connection: BlockingConnection, queue: str, count: int) -> None:
    sender = connection.create_sender(queue)
    for number in range(count):
        sender.send(Message(body=str(number), durable=True, creation_time=time.time()))
    sender.close()


def _flush(connection: BlockingConnection, unique_name: str) -> None:
    """Have the broker take what this connection settled: a blocking connection does its I/O
    only inside its calls, and a send returns once the broker accepted it, after every frame
    before it."""
    _send(connection, f"{unique_name}.flush", 1)


def inspected(collector: Collector, queues: set[str]) -> tuple[Figures, dict[str, Any]]:
    """The collector's latest rows of these queues, and its group rows of them."""
    result = collector.inspect("lag")
    rows = {r["group"]: r for r in result["partitions"]  # type: ignore[attr-defined]
            if r["system"] == "activemq" and r["group"] in queues}
    groups = {g["group"]: g for g in result["groups"]  # type: ignore[attr-defined]
              if g["system"] == "activemq" and g["group"] in rows}
    return ({n: (r["lag"], r["ready"], r["unacknowledged"], r["consumers"], r["committed"],
                 r["end"]) for n, r in rows.items()},
            {n: {"row": r, "group": groups.get(n)} for n, r in rows.items()})


def broker_figures(management_url: str, queues: set[str]) -> Figures:
    """The broker's own statistics of these queues, read from Jolokia queue by queue."""
    found = {}
    for queue in queues:
        mbean = ("org.apache.activemq.artemis:broker=*,component=addresses,address=*,"
                 f'subcomponent=queues,routing-type=*,queue="{queue}"')
        code, answer = jolokia_request(management_url, {"type": "read", "mbean": mbean,
                                                        "attribute": list(STATISTICS)}, 5)
        assert code == 200, (code, answer)
        assert isinstance(answer, dict)
        (stats,) = answer["value"].values()
        gone = stats["MessagesAcknowledged"] + stats["MessagesKilled"] + \
            stats["MessagesExpired"]
        found[queue] = (stats["MessageCount"],
                        stats["MessageCount"] - stats["DeliveringCount"] - stats["ScheduledCount"],
                        stats["DeliveringCount"], stats["ConsumerCount"], gone,
                        gone + stats["MessageCount"])
    return found


def _wait(check: Callable[[], T | None], what: str, timeout_s: float = 45.0) -> T:
    """Call check() until it returns something true (bounded); that."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} never held; last: {last}")


def test_inspect_lag_of_every_queue_equals_the_brokers_statistics(
        artemis_collector: Collector, artemis_broker: ArtemisBroker,
        connection: BlockingConnection, unique_name: str) -> None:
    idle, held = f"{unique_name}.idle", f"{unique_name}.held"
    _send(connection, idle, 10)
    _send(connection, held, 10)
    # A consumer takes messages of "held" and settles two: the rest it holds are delivering.
    receiver = connection.create_receiver(held, credit=4)
    for _ in range(2):
        receiver.receive(timeout=10)
        receiver.accept()
    receiver.receive(timeout=10)  # held, unsettled
    _flush(connection, unique_name)
    names = {idle, held}

    def equal() -> tuple[Figures, Figures] | None:
        # The broker's figures read before and after ours: equal while nothing moves.
        before = broker_figures(artemis_broker.management_url, names)
        ours, _ = inspected(artemis_collector, names)
        after = broker_figures(artemis_broker.management_url, names)
        return (ours, before) if ours == before == after else None

    ours, theirs = _wait(equal, "inspect lag == the broker's queue statistics")
    assert ours == theirs
    assert theirs[idle] == (10, 10, 0, 0, 0, 10)
    lag, ready, delivering, consumers, committed, end = theirs[held]
    assert (lag, committed, end, consumers) == (8, 2, 10, 1)
    assert delivering >= 1
    assert ready == lag - delivering
    _, rows = inspected(artemis_collector, names)
    assert rows[idle]["row"]["topic"] == idle  # an anycast queue's address has its name
    assert rows[idle]["row"]["partition"] is None
    assert rows[idle]["group"]["lag"] == 10
    # The head message's age, from the creation time the producer gave it.
    assert 0 < rows[idle]["row"]["lag_seconds"] < 120


def test_a_queue_whose_consumer_stops_goes_err_then_ok_once_drained(
        artemis_collector: Collector, connection: BlockingConnection, unique_name: str
        ) -> None:
    queue = f"{unique_name}.work"
    _send(connection, queue, 20)  # nobody consumes

    def row() -> dict[str, Any] | None:
        return inspected(artemis_collector, {queue})[1].get(queue)

    def stopped() -> dict[str, Any] | None:
        found = row()
        group = found["group"] if found else None
        return found if group and group["status"] == "ERR" and group["lag"] == 20 else None

    first = _wait(stopped, "ERR with 20 messages waiting")
    assert first["row"]["status"] == "STOP"
    assert first["row"]["consumers"] == 0

    def older() -> dict[str, Any] | None:
        found = row()
        return found if found and found["group"]["lag_seconds"] > \
            first["group"]["lag_seconds"] + 0.5 else None

    later = _wait(older, "lag_seconds growing while nobody consumes")
    assert later["group"]["status"] == "ERR"

    receiver = connection.create_receiver(queue, credit=20)
    for _ in range(20):
        receiver.receive(timeout=10)
        receiver.accept()
    _flush(connection, unique_name)

    def drained() -> dict[str, Any] | None:
        found = row()
        return found if found and found["group"]["status"] == "OK" and \
            found["group"]["lag"] == 0 else None

    done = _wait(drained, "OK once drained")
    assert done["row"]["lag_seconds"] == 0.0
    assert done["row"]["committed"] == done["row"]["end"] == 20
    health = artemis_collector.wait_for_health(
        lambda h: h["components"].get("artemis_poller", {}).get("state") == "ok")
    assert health["components"]["artemis_poller"]["state"] == "ok"


def test_refused_credentials_degrade_only_the_artemis_poller_without_the_password(
        tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: object,
        artemis_broker: ArtemisBroker) -> None:
    wrong = str(URL(artemis_broker.management_url).with_password("not-the-secret-7f3a"))
    collector = _collector(tmp_path / "home", kafka_bootstrap, jaeger_endpoints,
                           artemis_broker, management_url=wrong)
    collector.start("--no-rabbitmq", "--no-nats")
    try:
        health = collector.wait_for_health(
            lambda h: h["components"].get("artemis_poller", {}).get("state") == "degraded")
        reason = health["components"]["artemis_poller"]["reason"]
        assert "refused the credentials (HTTP 403)" in reason
        assert "not-the-secret-7f3a" not in reason
        # Kafka's lag polling is another component, and runs on.
        collector.wait_for_health(lambda h: h["components"]["lag_poller"]["state"] == "ok")
        counted = collector.wait_for(
            lambda c: c["counters"].get("artemis_poller_failures", 0) >= 2, "counters")
        assert counted["counters"]["artemis_poller_failures"] >= 2  # type: ignore[index]
        assert "not-the-secret-7f3a" not in "".join(collector.output)
    finally:
        assert collector.stop() == 0
