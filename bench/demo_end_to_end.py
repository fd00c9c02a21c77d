"""End-to-end capacity of the demo services, and upload-to-callback latency.

Runs `flowscope services` (all eight services, one process each) against the native Kafka,
with tracing exported to the native Jaeger ("on") or switched off (OTEL_SDK_DISABLED, "off"),
or with tracing on and the uploads' RabbitMQ leg (the thumbnailer, indexer and auditor too, on
the native RabbitMQ node: "rabbitmq"), or with tracing on and the orders' NATS leg (tracking and
portal too, on the native NATS server: "nats"), and drives both flows with `flowscope loadgen`
at rising rates, without simulated failures and with 1 ms of simulated work. A rate is
sustained when every flow of the step reached its terminal topic within 5 s of the last request
(with NATS, and the tracking consumer has nothing pending or unacknowledged by then) and the
load generator reached 90 % of the rate.
Then, at a quarter of the highest sustained rate, it reports the p50/p95 time from the upload
being accepted to the webhook receiving the callback.

    .venv/bin/python bench/demo_end_to_end.py [--rates 40,80,160,240,320,480] [--step-seconds 10]
                                              [--variants on,off,rabbitmq,nats]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats as nats_client

from base.settings import Settings
from bench.infra import running_infra
from demo_services import subjects
from flowscope.infra import nats, rabbitmq
from tests.integration.demo_stack import (
    FILE_TERMINALS,
    ORDER_TERMINALS,
    DemoStack,
    headers_of,
    read_topics,
)

NO_FAILURES = ["--transient-failure", "0", "--permanent-failure", "0", "--callback-failure",
               "0", "--inventory-failure", "0", "--work-ms", "1"]
SLACK_S = 5.0


def run_step(stack: DemoStack, rate: float, seconds: float, seed: int) -> dict[str, float]:
    """Drive one rate; how many flows ended and how long after the last request the last did."""
    started = time.time()
    report = stack.loadgen("--rate", str(rate), "--duration", str(seconds), "--seed", str(seed),
                           *NO_FAILURES, timeout_s=seconds * 4 + 60)
    sent_done = time.time()
    flows = report["uploads"] + report["orders"]  # type: ignore[operator]
    wanted = {f["correlation_id"] for f in flows}
    deadline = sent_done + SLACK_S
    ended: dict[str, float] = {}
    while True:
        found = asyncio.run(read_topics(stack.config, FILE_TERMINALS + ORDER_TERMINALS))
        for records in found.values():
            for record in records:
                cid = headers_of(record).get("correlation-id", b"").decode()
                if cid in wanted:
                    ended[cid] = record.timestamp / 1000
        if len(ended) == len(wanted) or time.time() > deadline:
            break
        time.sleep(0.5)
    last = max(ended.values(), default=sent_done)
    tracked = not stack.config.nats_url or tracking_drained(stack, deadline)
    if len(ended) < len(wanted):
        drain(stack, wanted - set(ended), timeout_s=300)
    return {"rate": rate, "flows": len(wanted), "ended": len(ended),
            "achieved_rate": len(wanted) / (sent_done - started),
            "drain_s": last - sent_done, "tracked": float(tracked),
            "sustained": float(len(ended) == len(wanted) and tracked
                               and len(wanted) / (sent_done - started) >= 0.9 * rate)}


def tracking_drained(stack: DemoStack, deadline: float) -> bool:
    """True when the tracking consumer has nothing pending or unacknowledged by deadline (at
    least one look)."""

    async def backlog() -> int:
        client = await nats_client.connect(stack.config.nats_url, connect_timeout=5)
        try:
            info = await client.jetstream(timeout=5).consumer_info(
                subjects.stream_name(stack.config, subjects.SHIPMENTS), subjects.TRACKING)
            return int(info.num_pending + info.num_ack_pending)
        finally:
            await client.close()

    while True:
        with contextlib.suppress(Exception):
            if asyncio.run(backlog()) == 0:
                return True
        if time.time() > deadline:
            return False
        time.sleep(0.5)


def drain(stack: DemoStack, pending: set[str], timeout_s: float) -> None:
    """Wait (bounded) until an overloaded step's flows have ended, so the next step starts clean."""
    deadline = time.time() + timeout_s
    while pending and time.time() < deadline:
        time.sleep(1.0)
        found = asyncio.run(read_topics(stack.config, FILE_TERMINALS + ORDER_TERMINALS))
        pending -= {headers_of(r).get("correlation-id", b"").decode()
                    for records in found.values() for r in records}


def callback_latencies(stack: DemoStack, since: float) -> list[float]:
    """Seconds from upload accepted to callback received, for callbacks after since."""
    with urllib.request.urlopen(f"{stack.config.url('webhook')}/callbacks", timeout=10) as answer:
        received = json.load(answer)
    return [c["received_at"] - c["body"]["uploaded_at"] for c in received
            if c["body"].get("uploaded_at") and c["body"]["uploaded_at"] >= since]


def measure(variant: str, bootstrap: str, otlp: str, rates: list[float], seconds: float,
            *, amqp_url: str = "", nats_url: str = "") -> None:
    with tempfile.TemporaryDirectory() as home:
        prefix = f"bench-{variant}-{int(time.time())}."
        knobs = {"rabbitmq_url": amqp_url, "thumbnail_failure": "0"} if amqp_url else {}
        if nats_url:
            knobs.update(nats_url=nats_url, tracking_failure="0")
        stack = DemoStack.create(Path(home), bootstrap, otlp, prefix, **knobs)
        if variant == "off":
            stack.env["OTEL_SDK_DISABLED"] = "true"
        stack.start()
        try:
            best = 0.0
            for i, rate in enumerate(rates):
                step = run_step(stack, rate, seconds, seed=i)
                print(f"{variant}: rate {rate:5.0f}/s -> achieved "
                      f"{step['achieved_rate']:6.1f}/s, {step['ended']:.0f}/{step['flows']:.0f} "
                      f"flows ended, last {step['drain_s']:+.1f}s after the last request"
                      + ("" if step["tracked"] else "; the tracking consumer still behind"),
                      flush=True)
                if not step["sustained"]:
                    break
                best = rate
            if best == 0:
                print(f"{variant}: no rate sustained (the lowest asked was "
                      f"{rates[0]:.0f} flows/s)", flush=True)
                return
            quarter = best / 4
            since = time.time()
            run_step(stack, quarter, seconds * 2, seed=99)
            latencies = sorted(callback_latencies(stack, since))
            p50 = statistics.median(latencies)
            p95 = latencies[int(0.95 * (len(latencies) - 1))]
            print(f"{variant}: highest sustained rate {best:.0f} flows/s; at "
                  f"{quarter:.1f} flows/s upload->callback p50 {p50 * 1000:.0f} ms, "
                  f"p95 {p95 * 1000:.0f} ms ({len(latencies)} uploads)", flush=True)
        finally:
            stack.stop()
            if nats_url:
                asyncio.run(delete_streams(stack))


async def delete_streams(stack: DemoStack) -> None:
    """Delete the run's JetStream streams (their names have its prefix)."""
    client = await nats_client.connect(stack.config.nats_url, connect_timeout=5)
    try:
        for name in (subjects.SHIPMENTS, subjects.SHIPMENTS_DLQ):
            with contextlib.suppress(Exception):
                await client.jetstream(timeout=10).delete_stream(
                    subjects.stream_name(stack.config, name))
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="40,80,160,240,320,480")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--variants", default="on,off")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    settings = Settings.from_env()
    variants = args.variants.split(",")
    with running_infra(settings) as (bootstrap, otlp):
        node_started = "rabbitmq" in variants and not settings.rabbitmq.external and \
            not rabbitmq.status(settings).running
        amqp = rabbitmq.start(settings).amqp_url if "rabbitmq" in variants else ""
        server_started = "nats" in variants and not settings.nats.external and \
            not nats.status(settings).running
        nats_url = nats.start(settings).url if "nats" in variants else ""
        try:
            for variant in variants:
                measure(variant, bootstrap, otlp, rates, args.step_seconds,
                        amqp_url=amqp if variant == "rabbitmq" else "",
                        nats_url=nats_url if variant == "nats" else "")
        finally:
            if node_started:
                rabbitmq.stop(settings)
            if server_started:
                nats.stop(settings)


if __name__ == "__main__":
    main()
