"""CPU cost of queue polling: every 1 s over 200 RabbitMQ queues.

Declares --queues queues (bound to a direct exchange, a few messages with a timestamp in each,
so that every queue has a backlog and an age), then runs the collector's QueuePoller in this
process once a second and reports the CPU time it used per second of wall time (the share of
one core). Alongside, the broker's own CPU share (its beam.smp process) while polled and while
left alone, measured in alternating rounds.

    .venv/bin/python bench/queue_polling.py [--seconds 30] [--queues 200] [--rounds 3]

Starts the native RabbitMQ node when none runs (and stops it after); FLOWSCOPE_HOME and
FLOWSCOPE_RABBITMQ_* choose it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika

from base.settings import Settings
from collectors.lag.queues import QueuePoller
from flowscope.infra import rabbitmq

TICKS = os.sysconf("SC_CLK_TCK")


def broker_cpu_s(pid: int | None) -> float:
    """CPU seconds the broker's VM has used so far (0 when not known: an external broker)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def prepare(url: str, prefix: str, count: int) -> list[str]:
    """count queues with 3 messages each, bound to one exchange."""
    connection = await aio_pika.connect(url, timeout=30)
    names = [f"{prefix}.{i}" for i in range(count)]
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(prefix, aio_pika.ExchangeType.DIRECT)
        for name in names:
            queue = await channel.declare_queue(name)
            await queue.bind(exchange, name)
            for i in range(3):
                await exchange.publish(aio_pika.Message(f"m{i}".encode(),
                                                        timestamp=time.time()), name)
    return names


async def cleanup(url: str, prefix: str, names: list[str]) -> None:
    connection = await aio_pika.connect(url, timeout=30)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
        await channel.exchange_delete(prefix)


async def measure(management_url: str, pid: int | None, seconds: float, rounds: int
                  ) -> tuple[list[float], list[float], list[float], int]:
    """Per poll, the poller's share of a core; per round, the broker's share while polled and
    while left alone; and the rows of the last poll."""
    poller = QueuePoller(management_url, timeout_s=30)
    await poller.start()
    shares: list[float] = []
    polled: list[float] = []
    idle: list[float] = []
    rows = 0
    try:
        await poller.poll()  # warm-up: the session's connection
        for _ in range(rounds):
            wall, broker = time.monotonic(), broker_cpu_s(pid)
            end = wall + seconds
            while time.monotonic() < end:
                started, cpu = time.monotonic(), time.process_time()
                found, _ = await poller.poll()
                rows = len(found)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
                shares.append((time.process_time() - cpu) / (time.monotonic() - started))
            polled.append((broker_cpu_s(pid) - broker) / (time.monotonic() - wall))
            wall, broker = time.monotonic(), broker_cpu_s(pid)
            await asyncio.sleep(seconds)
            idle.append((broker_cpu_s(pid) - broker) / (time.monotonic() - wall))
    finally:
        await poller.stop()
    return shares, polled, idle, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = Settings.from_env()
    started_here = not settings.rabbitmq.external and not rabbitmq.status(settings).running
    node = rabbitmq.start(settings)
    prefix = f"bench-queues-{uuid.uuid4().hex[:6]}"
    try:
        began = time.monotonic()
        names = asyncio.run(prepare(node.amqp_url, prefix, args.queues))
        print(f"prepared {len(names)} queues in {time.monotonic() - began:.0f}s", flush=True)
        shares, polled, idle, rows = asyncio.run(
            measure(node.management_url, node.pid, args.seconds, args.rounds))
        asyncio.run(cleanup(node.amqp_url, prefix, names))
    finally:
        if started_here:
            rabbitmq.stop(settings)
    print(f"queue polling every 1 s, {rows} queues per poll (every queue of the broker): "
          f"median {statistics.median(shares) * 100:.1f} % of one core, max "
          f"{max(shares) * 100:.1f} % over {len(shares)} polls (target < 5 %)")
    if node.pid is not None:
        print(f"the broker meanwhile: median {statistics.median(polled) * 100:.1f} % of one core "
              f"while polled, {statistics.median(idle) * 100:.1f} % left alone "
              f"({args.rounds} alternating rounds of {args.seconds:.0f} s)")


if __name__ == "__main__":
    main()
