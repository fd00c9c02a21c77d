"""The load generator: drives both flows (file uploads and orders) at a steady rate.

Each flow gets a correlation ID drawn from the seed, so a seed replays the same flows and, with
the services' deterministic failure draws, the same retries, dead letters and compensations.
Failure probabilities and work time given here travel with each request (`simulate`) and
override the services' defaults; a pause command on the control topic stops a consumer group
for a while, to build lag on purpose and watch it drain.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TextIO

import aiohttp
from aiokafka import AIOKafkaProducer

from demo_services import topics
from demo_services.config import DemoConfig

SKUS = ["sku-apple", "sku-pear", "sku-fig", "sku-kiwi", "sku-plum", "sku-lime"]
MAX_IN_FLIGHT = 64


@dataclass(frozen=True)
class LoadPlan:
    """What to send: how fast, how long, with which failures and pauses."""

    rate: float
    duration_s: float
    seed: int = 0
    transient_failure: float | None = None
    permanent_failure: float | None = None
    callback_failure: float | None = None
    inventory_failure: float | None = None
    work_ms: int | None = None
    pause_group: str | None = None
    pause_after_s: float = 0.0
    pause_for_s: float = 0.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0:
            raise ValueError("rate and duration must be positive")
        for name in ("transient_failure", "permanent_failure", "callback_failure",
                     "inventory_failure"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability between 0 and 1")

    @property
    def simulate(self) -> dict[str, float | int]:
        """The overrides each request carries (only the knobs that were given)."""
        names = ("transient_failure", "permanent_failure", "callback_failure",
                 "inventory_failure", "work_ms")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class LoadReport:
    """What was sent and what the APIs answered."""

    uploads: list[dict[str, str]] = field(default_factory=list)
    orders: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    paused: str | None = None
    elapsed_s: float = 0.0

    def as_json(self) -> dict[str, object]:
        """The report as printed by `flowscope loadgen --json`."""
        return {"uploads": self.uploads, "orders": self.orders, "errors": self.errors,
                "paused": self.paused, "elapsed_s": round(self.elapsed_s, 3)}


def flow_requests(plan: LoadPlan, config: DemoConfig, count: int
                  ) -> list[tuple[str, str, dict[str, object]]]:
    """The (kind, correlation ID, body) of every flow the plan sends, in order."""
    rng = random.Random(plan.seed)
    webhook = config.url("webhook")
    requests = []
    for i in range(count):
        correlation_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if i % 2 == 0:
            body: dict[str, object] = {
                "name": f"scan-{i:05d}.pdf", "size": rng.randint(1_000, 5_000_000),
                "callback_url": f"{webhook}/callbacks/{correlation_id}"}
            kind = "upload"
        else:
            items = [{"sku": rng.choice(SKUS), "quantity": rng.randint(1, 3)}
                     for _ in range(rng.randint(1, 3))]
            body = {"customer": f"customer-{rng.randint(1, 500)}", "items": items,
                    "amount": round(rng.uniform(5, 500), 2)}
            kind = "order"
        if plan.simulate:
            body["simulate"] = plan.simulate
        requests.append((kind, correlation_id, body))
    return requests


async def send_pause(config: DemoConfig, group: str, seconds: float) -> None:
    """Tell the services to pause a consumer group (a message on the control topic)."""
    producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap)
    await producer.start()
    try:
        command = {"command": "pause", "group": group, "seconds": seconds}
        await producer.send_and_wait(config.topic(topics.CONTROL), json.dumps(command).encode())
    finally:
        await producer.stop()


async def run_load(config: DemoConfig, plan: LoadPlan, progress: TextIO | None = sys.stderr
                   ) -> LoadReport:
    """Send the plan's flows on schedule (no drift), at most MAX_IN_FLIGHT at once."""
    report = LoadReport()
    count = max(1, round(plan.rate * plan.duration_s))
    requests = flow_requests(plan, config, count)
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    started = time.monotonic()

    async def send_one(session: aiohttp.ClientSession, kind: str, correlation_id: str,
                       body: dict[str, object]) -> None:
        url = f"{config.url('uploads')}/files" if kind == "upload" else \
            f"{config.url('orders')}/orders"
        async with gate:
            try:
                async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=30),
                                        headers={"X-Correlation-ID": correlation_id}) as answer:
                    data = await answer.json(content_type=None)
                    if answer.status != 202:
                        report.errors.append(f"{kind} {correlation_id}: HTTP {answer.status}")
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                report.errors.append(f"{kind} {correlation_id}: {type(exc).__name__} {exc}")
                return
        (report.uploads if kind == "upload" else report.orders).append(data)

    async with aiohttp.ClientSession() as session:
        pending = []
        next_report = 5.0
        for i, (kind, correlation_id, body) in enumerate(requests):
            due = started + i / plan.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if plan.pause_group and report.paused is None and \
                    time.monotonic() - started >= plan.pause_after_s:
                await send_pause(config, plan.pause_group, plan.pause_for_s)
                report.paused = plan.pause_group
            pending.append(asyncio.ensure_future(send_one(session, kind, correlation_id, body)))
            if progress is not None and time.monotonic() - started >= next_report:
                print(f"[loadgen {time.monotonic() - started:5.1f}s] sent {i + 1}/{count} flows, "
                      f"{len(report.errors)} errors", file=progress, flush=True)
                next_report += 5.0
        await asyncio.gather(*pending)
    report.elapsed_s = time.monotonic() - started
    if progress is not None:
        print(f"[loadgen {report.elapsed_s:5.1f}s] done: {len(report.uploads)} uploads and "
              f"{len(report.orders)} orders accepted, {len(report.errors)} errors",
              file=progress, flush=True)
    return report
