"""Spans written by a client Flowscope did not write: the official
opentelemetry-instrumentation-aio-pika, in a virtual environment of its own, publishing to and
consuming from the real RabbitMQ. The collector makes service -> exchange -> queue -> service
of them, with every message's hop matched (its time in the queue known)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from base.settings import Settings
from flowscope.infra.jaeger import JaegerStatus
from flowscope.infra.rabbitmq import RabbitmqStatus
from tests.integration.collector_process import Collector

# What the client's environment holds: the instrumentation and its aio-pika, nothing else.
OFFICIAL = ("aio-pika==10.2.1", "opentelemetry-instrumentation-aio-pika==0.66b1",
            "opentelemetry-sdk==1.45.1", "opentelemetry-exporter-otlp-proto-http==1.45.1")
SCRIPT = Path(__file__).with_name("official_aio_pika_client.py")


@pytest.fixture(scope="session")
def official_python(settings: Settings) -> Path:
    """The Python of a virtual environment holding only OFFICIAL (made once, cached)."""
    home = settings.cache_dir / "venvs" / "official-aio-pika"
    python = home / "bin" / "python"
    stamp = home / "installed.txt"
    if stamp.exists() and stamp.read_text() == "\n".join(OFFICIAL) and python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True,
                   timeout=120)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *OFFICIAL],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"pip could not install {OFFICIAL}: {done.stderr}"
    stamp.write_text("\n".join(OFFICIAL))
    return python


@pytest.fixture
def collector(tmp_path: Path, kafka_bootstrap: str, jaeger_endpoints: JaegerStatus
              ) -> Iterator[Collector]:
    running = Collector.create(tmp_path / "home", kafka_bootstrap, jaeger_endpoints.otlp_http,
                               jaeger_endpoints.query, f"spans-{uuid.uuid4().hex[:8]}")
    running.start("--no-kafka", "--no-rabbitmq")
    yield running
    assert running.stop() == 0


def test_official_aio_pika_spans_become_exchange_and_queue_edges(
        collector: Collector, rabbitmq_node: RabbitmqStatus, official_python: Path,
        unique_name: str) -> None:
    queue = f"jobs-{unique_name}"
    for role, service in (("publish", "shop-publisher"), ("consume", "shop-worker")):
        done = subprocess.run([str(official_python), str(SCRIPT), role, rabbitmq_node.amqp_url,
                               queue, "6", collector.otlp_url, service], capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
    exchange, node = "rabbitmq:exchange:amq.default", f"rabbitmq:queue:{queue}"

    def complete(result: dict) -> bool:  # type: ignore[type-arg]
        edges = {(e["source"], e["target"]): e["count"] for e in result["edges"]}
        return edges.get(("shop-publisher", exchange)) == 6 and \
            edges.get((exchange, node)) == 6 and edges.get((node, "shop-worker")) == 6

    result = collector.wait_for(complete, "topology", "--since", "1h")
    nodes = {n["id"]: n for n in result["nodes"]}  # type: ignore[attr-defined]
    assert nodes[node] == {"id": node, "kind": "queue", "system": "rabbitmq", "name": queue}
    assert nodes[exchange]["kind"] == "exchange"
    edges = {(e["source"], e["target"]): e for e in result["edges"]}  # type: ignore[attr-defined]
    assert edges[(node, "shop-worker")]["p50_ms"] is not None  # time in the queue: matched
    flow = collector.inspect("flow", f"official-{queue}-3")
    assert [(h["system"], h["topic"], h["queue"], h["producer"], h["consumer"])
            for h in flow["hop_list"]] == [  # type: ignore[attr-defined]
        ("rabbitmq", "amq.default", queue, "shop-publisher", "shop-worker")]
    asyncio.run(_delete_queue(rabbitmq_node.amqp_url, queue))


async def _delete_queue(url: str, queue: str) -> None:
    connection = await aio_pika.connect(url, timeout=30)
    async with connection:
        await (await connection.channel()).queue_delete(queue)
