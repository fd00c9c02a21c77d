"""The demo services recover by themselves when their broker restarts under load: every flow
started before, during and after the restart ends, and a producer left in a fatal state is
replaced. The test runs its own broker: the one the other tests share is never restarted."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.integration.conftest import run_flowscope
from tests.integration.demo_stack import (
    FILE_TERMINALS,
    ORDER_TERMINALS,
    DemoStack,
    read_topics,
    wait_for_outcomes,
)

# Longer than the services' producer request timeout (15 s): records a producer holds for a
# partition it believes leaderless fail after that long, and used to break the producer.
OUTAGE_S = 18.0
# A broker in controlled shutdown answers for about 100 ms that its partitions have no leader,
# and a producer that asks then keeps that answer through the outage: the records it holds
# expire. Uploads sent every few milliseconds through the shutdown make the uploads producer
# ask in time (8 stops of 8 here, on a busy machine), but it stays a race. A producer that
# missed it goes on trying the stopped broker (aiokafka logs each try), which ends that stop
# early: the broker is started and stopped again.
MAX_STOPS = 4
SHUTDOWN_BEGINS = b"Beginning controlled shutdown"
SHUTDOWN_ENDS = b"Stopping socket server request processors"
STREAM_EVERY_S = 0.005
WARM_CONNECTIONS = 12
MISSED = "uploads WARNING aiokafka.producer.sender: Got error produce response: NodeNotReadyError"
EXPIRED = "LeaderNotAvailableError"
RATE = "5"
KNOBS = {"backoff_base_ms": "100", "backoff_max_ms": "1000", "work_ms": "5"}
REPLACED = "producer replaced"


def port_refuses(bootstrap: str) -> bool:
    """True when nothing accepts TCP connections at host:port any more."""
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except OSError:
        return True


def wait_until(condition: object, what: str, timeout_s: float) -> None:
    """Poll condition() until it is true; fail naming what when timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not within {timeout_s}s"
        time.sleep(0.2)


def terminal_count(stack: DemoStack) -> int:
    """How many messages the terminal topics hold now."""
    found = asyncio.run(read_topics(stack.config, FILE_TERMINALS + ORDER_TERMINALS))
    return sum(len(records) for records in found.values())


def start_loadgen(stack: DemoStack, seed: int, duration_s: float) -> subprocess.Popen[str]:
    """`flowscope loadgen --json` in the background."""
    return subprocess.Popen([sys.executable, "-m", "flowscope", "loadgen", "--json",
                             "--rate", RATE, "--duration", str(duration_s), "--seed", str(seed)],
                            env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def report_of(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, list[dict[str, str]]]:
    """The JSON report of a finished loadgen (it exits with 1 when a request failed)."""
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode in (0, 1), err
    return json.loads(out)  # type: ignore[no-any-return]


async def upload(session: aiohttp.ClientSession, stack: DemoStack, correlation_id: str) -> str:
    """POST one upload; its answer as `HTTP <status> <body>`, or the client's error."""
    body = {"name": f"{correlation_id}.pdf", "size": 1000,
            "callback_url": f"{stack.config.url('webhook')}/callbacks/{correlation_id}"}
    try:
        async with session.post(f"{stack.config.url('uploads')}/files", json=body,
                                headers={"X-Correlation-ID": correlation_id},
                                timeout=aiohttp.ClientTimeout(total=90)) as answer:
            return f"HTTP {answer.status} {await answer.text()}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__} {exc}"


async def shutdown_stream(stack: DemoStack, server_log: Path, armed: threading.Event,
                          down: threading.Event) -> dict[str, str]:
    """Uploads that open WARM_CONNECTIONS connections, then one every STREAM_EVERY_S while the
    broker shuts down (as its log tells), and one when it is down; each correlation ID's
    answer."""
    sent: dict[str, asyncio.Future[str]] = {}
    async with aiohttp.ClientSession() as session:
        def send() -> None:
            correlation_id = f"stream-{uuid.uuid4().hex[:12]}"
            sent[correlation_id] = asyncio.ensure_future(upload(session, stack, correlation_id))

        for _ in range(WARM_CONNECTIONS):
            send()
        await asyncio.gather(*sent.values())
        with server_log.open("rb") as log:
            log.seek(0, 2)
            armed.set()
            seen = b""
            while SHUTDOWN_BEGINS not in seen and not down.is_set():
                await asyncio.sleep(0.002)  # polling the log's growth, bounded by down
                seen = seen[-200:] + log.read()
            while SHUTDOWN_ENDS not in seen and not down.is_set():
                send()
                await asyncio.sleep(STREAM_EVERY_S)  # the stream's pace
                seen = seen[-200:] + log.read()
        await asyncio.to_thread(down.wait, 60)
        send()
        await asyncio.gather(*sent.values())
    return {i: answer.result() for i, answer in sent.items()}


@dataclass
class Outages:
    """Stops and starts the test's own broker while the services work."""

    broker_env: dict[str, str]
    stack: DemoStack
    bootstrap: str
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(MAX_STOPS))
    streams: list[Future[dict[str, str]]] = field(default_factory=list)
    downs: list[threading.Event] = field(default_factory=list)

    def stop_for(self, seconds: float) -> bool:
        """Stop the broker during a stream of uploads and keep it down for seconds (less when the
        uploads producer missed the shutdown), then start it; True when records held by the
        uploads producer expired meanwhile, waiting for a leader."""
        uploads_log = self.stack.home / "services" / "uploads.log"
        server_log = Path(self.broker_env["FLOWSCOPE_HOME"]) / "kafka" / "logs" / "server.log"
        armed, down = threading.Event(), threading.Event()
        self.downs.append(down)
        self.streams.append(self.pool.submit(
            asyncio.run, shutdown_stream(self.stack, server_log, armed, down)))
        assert armed.wait(30), "the stream's first uploads were not answered within 30s"
        logged = uploads_log.stat().st_size
        stopped = run_flowscope(self.broker_env, "kafka", "stop", timeout_s=60)
        assert stopped.returncode == 0, stopped.stderr
        wait_until(lambda: port_refuses(self.bootstrap), "the broker down", 30)
        down.set()
        ends = time.monotonic() + seconds
        while time.monotonic() < ends and MISSED not in since(uploads_log, logged):
            time.sleep(0.2)  # the outage itself: a bounded poll for a missed shutdown
        expired = EXPIRED in since(uploads_log, logged)
        started = run_flowscope(self.broker_env, "kafka", "start", timeout_s=90)
        assert started.returncode == 0, started.stderr
        return expired

    def answers(self, timeout_s: float) -> dict[str, str]:
        """Every streamed upload's answer (they come once the broker is back)."""
        return {k: v for stream in self.streams for k, v in stream.result(timeout_s).items()}

    def close(self) -> None:
        """Let the streams finish; their threads end with their uploads' last answers."""
        for down in self.downs:
            down.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


def since(log: Path, offset: int) -> str:
    """What a log file gained after offset."""
    with log.open() as text:
        text.seek(offset)
        return text.read()


def test_every_flow_ends_when_the_broker_restarts_under_load(
        own_broker_env: dict[str, str], tmp_path: Path) -> None:
    started = run_flowscope(own_broker_env, "kafka", "start")
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    stack = DemoStack.create(tmp_path / "stack", bootstrap, "http://127.0.0.1:9",
                             f"restart{uuid.uuid4().hex[:6]}.", **KNOBS)
    stack.env["OTEL_TRACES_EXPORTER"] = "none"  # spans are made, not exported
    stack.start()
    outages = Outages(own_broker_env, stack, bootstrap)
    loads: list[subprocess.Popen[str]] = []
    try:
        # Load before, during and after the outage; a second load once the broker is back.
        loads.append(start_loadgen(stack, seed=1, duration_s=40))
        wait_until(lambda: terminal_count(stack) >= 10, "flows ending before the stop", 30)
        stops, expired = 1, outages.stop_for(OUTAGE_S)
        while not expired and stops < MAX_STOPS:
            stops += 1
            expired = outages.stop_for(OUTAGE_S)
        loads.append(start_loadgen(stack, seed=2, duration_s=10))
        through, after = report_of(loads[0], 90), report_of(loads[1], 60)
        answers = outages.answers(timeout_s=120)
        health = json.loads(urllib.request.urlopen(f"{stack.config.url('uploads')}/health",
                                                   timeout=10).read())
        print(f"{stops} stop(s), expired: {expired}; through the restarts: "
              f"{len(through['uploads']) + len(through['orders'])} accepted, "
              f"{Counter(e.split(': ', 1)[1][:12] for e in through['errors'])}; "
              f"streamed: {Counter(a.split(' ', 2)[1] for a in answers.values())}; after: "
              f"{len(after['uploads']) + len(after['orders'])} accepted, "
              f"{Counter(e.split(': ', 1)[1][:12] for e in after['errors'])}; "
              f"uploads health {health}")
        # Once the broker is back, every request is accepted.
        assert after["errors"] == []
        # While it is away, a request is accepted late, or refused with a 503 and its reason
        # (or outlasts the load generator's 30 s patience), never failed otherwise.
        assert [e for e in through["errors"] if not re.search(r": (HTTP 503|TimeoutError)", e)
                ] == []
        refused = {c: a for c, a in answers.items() if not a.startswith("HTTP 202")}
        assert [a for a in refused.values() if not a.startswith(
            "HTTP 503 {\"error\": \"the message could not be written to Kafka: ")] == []
        uploads = {u["correlation_id"] for r in (through, after) for u in r["uploads"]}
        uploads |= set(answers) - set(refused)
        orders = {o["correlation_id"] for r in (through, after) for o in r["orders"]}
        asyncio.run(wait_for_outcomes(stack.config, uploads, FILE_TERMINALS, timeout_s=60))
        asyncio.run(wait_for_outcomes(stack.config, orders, ORDER_TERMINALS, timeout_s=60))
        # The stops are a race for the state that broke producers (records expiring while a
        # partition had no leader); nearly every run wins it. Where it was won, the producer
        # must have been replaced; every flow ending is asserted either way.
        if expired:
            assert REPLACED in (stack.home / "services" / "uploads.log").read_text()
            assert health["producer_replacements"] >= 1
        restarts = {name: entry["restarts"] for name, entry in json.loads(
            (stack.home / "services" / "services.json").read_text()).items()}
        assert set(restarts.values()) == {0}, restarts
    finally:
        outages.close()
        for proc in loads:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        assert stack.stop() == 0
