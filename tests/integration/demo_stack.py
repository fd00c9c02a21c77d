"""Run `flowscope services` for a test module, and read what the demo topics hold."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from demo_services import topics
from demo_services.config import DemoConfig

READY_LINE = "ready: "


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """count distinct free ports (all held open while choosing, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class DemoStack:
    """A running `flowscope services` with its own topics, ports and home."""

    env: dict[str, str]
    config: DemoConfig
    home: Path
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, home: Path, bootstrap: str, otlp_endpoint: str, prefix: str,
               **knobs: str) -> DemoStack:
        """Settings for a stack isolated from any other run."""
        env = dict(os.environ)
        uploads, orders, webhook = free_ports(3)
        env.update(FLOWSCOPE_HOME=str(home), KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                   FLOWSCOPE_DEMO_TOPIC_PREFIX=prefix,
                   FLOWSCOPE_DEMO_UPLOADS_PORT=str(uploads),
                   FLOWSCOPE_DEMO_ORDERS_PORT=str(orders),
                   FLOWSCOPE_DEMO_WEBHOOK_PORT=str(webhook),
                   OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint, OTEL_BSP_SCHEDULE_DELAY="200",
                   # no RabbitMQ, NATS or Artemis leg unless a knob names the broker or
                   # server (rabbitmq_url=..., nats_url=..., artemis_url=...)
                   FLOWSCOPE_DEMO_RABBITMQ_URL="", FLOWSCOPE_DEMO_NATS_URL="",
                   FLOWSCOPE_DEMO_ARTEMIS_URL="")
        env.update({f"FLOWSCOPE_DEMO_{k.upper()}": v for k, v in knobs.items()})
        return cls(env, DemoConfig.from_env(env), home)

    def start(self, timeout_s: float = 90.0, only: tuple[str, ...] = ()) -> None:
        """Start the services (only these, when given) and wait (bounded) for their ready
        line."""
        args = ["--only", ",".join(only)] if only else []
        self.proc = subprocess.Popen([sys.executable, "-m", "flowscope", "services", *args],
                                     env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line:
                self.output.append(line)
                if READY_LINE in line:
                    return
            elif self.proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        raise AssertionError(f"services not ready in {timeout_s}s: {''.join(self.output)}")

    def pids(self) -> dict[str, int]:
        """The pid of each running service."""
        state = json.loads((self.home / "services" / "services.json").read_text())
        return {name: entry["pid"] for name, entry in state.items()}

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM the supervisor; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def loadgen(self, *args: str, timeout_s: float = 120.0) -> dict[str, object]:
        """Run `flowscope loadgen --json` with args; its report."""
        done = subprocess.run([sys.executable, "-m", "flowscope", "loadgen", "--json", *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def headers_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, bytes]:
    """A record's headers as a dict (last value wins)."""
    return dict(record.headers or ())


async def read_topics(config: DemoConfig, names: list[str], timeout_s: float = 30.0
                      ) -> dict[str, list[ConsumerRecord[bytes, bytes]]]:
    """Every record currently in the named demo topics (up to their end offsets now)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=config.bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    found: dict[str, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
    try:
        tps = [TopicPartition(config.topic(n), p) for n in names
               for p in (consumer.partitions_for_topic(config.topic(n)) or
                         await _partitions(consumer, config.topic(n)))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        async with asyncio.timeout(timeout_s):
            while remaining:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    found[tp.topic.removeprefix(config.topic_prefix)].extend(records)
                    if records[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return found


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def wait_for_outcomes(config: DemoConfig, wanted: set[str], terminal: list[str],
                            timeout_s: float = 90.0
                            ) -> dict[str, list[ConsumerRecord[bytes, bytes]]]:
    """Read the terminal topics until every wanted correlation ID is in one (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await read_topics(config, terminal)
        seen = {headers_of(r).get("correlation-id", b"").decode()
                for records in found.values() for r in records}
        if wanted <= seen:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(wanted - seen)} of {len(wanted)} flows did not end "
                                 f"within {timeout_s}s")
        await asyncio.sleep(0.5)


FILE_TERMINALS = [topics.FILES_NOTIFIED, topics.FILES_DLQ]
ORDER_TERMINALS = [topics.ORDERS_COMPLETED, topics.ORDERS_CANCELLED]
