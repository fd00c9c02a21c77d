"""CPU cost of JetStream polling: every 1 s over 200 durable consumers.

Makes --consumers durable consumers over --streams streams (a few messages in each stream, so
that every consumer has a backlog and an age), then runs the collector's JetStreamPoller in
this process once a second and reports the CPU time it used per second of wall time (the share
of one core), in two cases measured in alternating polls of one run:

- standing: the backlogs stand still, so each first unacknowledged message's age is known from
  an earlier poll (the poller reads it once per ack-floor move);
- moving: every consumer's ack floor moved since the last poll (the remembered ages are
  dropped first), so every poll reads 200 message times from the streams: the worst case.

Alongside, the server's own CPU share while polled and while left alone.

    .venv/bin/python bench/jetstream_polling.py [--seconds 30] [--consumers 200] [--streams 20]

Starts the native NATS server when none runs (and stops it after); FLOWSCOPE_HOME and
FLOWSCOPE_NATS_* choose it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats as nats_client
from nats.js.api import AckPolicy, ConsumerConfig

from base.settings import Settings
from bench.queue_polling import broker_cpu_s
from collectors.lag.jetstream import JetStreamPoller
from flowscope.infra import nats


async def prepare(url: str, prefix: str, streams: int, consumers: int) -> list[str]:
    """streams streams of 3 messages each, consumers durable consumers spread over them."""
    client = await nats_client.connect(url, connect_timeout=5)
    names = [f"{prefix}_{i}" for i in range(streams)]
    try:
        jetstream = client.jetstream(timeout=10)
        for name in names:
            await jetstream.add_stream(name=name, subjects=[f"{name.lower()}.*"])
            for number in range(3):
                await jetstream.publish(f"{name.lower()}.x", str(number).encode())
        for number in range(consumers):
            await jetstream.add_consumer(names[number % streams], ConsumerConfig(
                durable_name=f"c{number}", ack_policy=AckPolicy.EXPLICIT))
    finally:
        await client.close()
    return names


async def cleanup(url: str, names: list[str]) -> None:
    client = await nats_client.connect(url, connect_timeout=5)
    try:
        jetstream = client.jetstream(timeout=10)
        for name in names:
            await jetstream.delete_stream(name)
    finally:
        await client.close()


async def measure(status: nats.NatsStatus, seconds: float
                  ) -> tuple[dict[str, list[float]], list[float], list[float], int]:
    """Per case, each poll's share of a core; the server's share while polled and while left
    alone; and the rows of the last poll."""
    poller = JetStreamPoller(status.monitoring_url, status.url, timeout_s=30)
    await poller.start()
    shares: dict[str, list[float]] = {"standing": [], "moving": []}
    rows = 0
    try:
        await poller.poll()  # warm-up: the HTTP session and the client connection
        wall, server = time.monotonic(), broker_cpu_s(status.pid)
        end = wall + seconds
        case = 0
        while time.monotonic() < end:
            name = ("standing", "moving")[case % 2]
            if name == "moving":
                poller.times.clear()
            started, cpu = time.monotonic(), time.process_time()
            found, _ = await poller.poll()
            rows = len(found)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
            shares[name].append((time.process_time() - cpu) / (time.monotonic() - started))
            case += 1
        polled = (broker_cpu_s(status.pid) - server) / (time.monotonic() - wall)
        wall, server = time.monotonic(), broker_cpu_s(status.pid)
        await asyncio.sleep(min(seconds, 10.0))
        idle = (broker_cpu_s(status.pid) - server) / (time.monotonic() - wall)
        if poller.failed_reads:
            print(f"warning: {poller.failed_reads} message ages could not be read")
    finally:
        await poller.stop()
    return shares, [polled], [idle], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--consumers", type=int, default=200)
    parser.add_argument("--streams", type=int, default=20)
    args = parser.parse_args()
    settings = Settings.from_env()
    started_here = not settings.nats.external and not nats.status(settings).running
    server = nats.start(settings)
    prefix = f"BENCH_{uuid.uuid4().hex[:6].upper()}"
    try:
        began = time.monotonic()
        names = asyncio.run(prepare(server.url, prefix, args.streams, args.consumers))
        print(f"prepared {args.consumers} consumers over {len(names)} streams in "
              f"{time.monotonic() - began:.0f}s", flush=True)
        shares, polled, idle, rows = asyncio.run(measure(server, args.seconds))
        asyncio.run(cleanup(server.url, names))
    finally:
        if started_here:
            nats.stop(settings)
    for case, found in shares.items():
        print(f"JetStream polling every 1 s, {rows} consumers per poll, {case}: median "
              f"{statistics.median(found) * 100:.1f} % of one core, max "
              f"{max(found) * 100:.1f} % over {len(found)} polls (target < 5 %)")
    if server.pid is not None:
        print(f"the server meanwhile: {polled[0] * 100:.1f} % of one core while polled, "
              f"{idle[0] * 100:.1f} % left alone")


if __name__ == "__main__":
    main()
