"""The commands that run Flowscope's processes: `collect`, `services`, `loadgen` and `demo`.

Apart from the command line (cli.py) because they bring the collector's and the demo's
dependencies (aiohttp, aiokafka, OpenTelemetry: about half a second to import), which
`flowscope inspect` and the infrastructure commands do not need.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import random
from dataclasses import replace

from base.errors import FlowscopeError
from base.settings import Settings, redact_url, store_label
from collectors.collect import run_collector
from demo_services.loadgen import LoadPlan, run_load
from flowscope.demo import run_demo
from flowscope.infra import artemis, nats, rabbitmq
from flowscope.scenario import FAILURE_KNOBS, DemoOptions
from flowscope.services import SERVICES, demo_config, run_services
from store.contract import StoreError


def services(settings: Settings, args: argparse.Namespace) -> int:
    names = tuple(args.only.split(",")) if args.only else SERVICES
    unknown = sorted(set(names) - set(SERVICES))
    if unknown:
        raise FlowscopeError("services", f"unknown service(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(SERVICES)}")
    return run_services(settings, names)


def loadgen(settings: Settings, args: argparse.Namespace) -> int:
    try:
        plan = LoadPlan(rate=args.rate, duration_s=args.duration, seed=args.seed,
                        transient_failure=args.transient_failure,
                        permanent_failure=args.permanent_failure,
                        callback_failure=args.callback_failure,
                        inventory_failure=args.inventory_failure, work_ms=args.work_ms,
                        pause_group=args.pause_group, pause_after_s=args.pause_after,
                        pause_for_s=args.pause_for)
    except ValueError as exc:
        raise FlowscopeError("loadgen", str(exc)) from None
    report = asyncio.run(run_load(demo_config(settings), plan))
    if args.json:
        print(json.dumps(report.as_json()))
    return 0 if not report.errors else 1


def _rabbitmq_to_poll(settings: Settings) -> str | None:
    """The management API whose queues the collector polls: the configured broker's, else
    the native node's when it runs (`flowscope rabbitmq start`); None when there is none."""
    if settings.rabbitmq.external:
        return settings.rabbitmq.management_url
    current = rabbitmq.status(settings)
    return current.management_url if current.running else None


def _nats_to_poll(settings: Settings) -> tuple[str, str] | None:
    """(monitoring URL, client URL) of the NATS server whose JetStream consumers the collector
    polls: the configured server's, else the native one's when it runs (`flowscope nats
    start`); None when there is none."""
    if settings.nats.external:
        return settings.nats.monitoring_url, settings.nats.url
    current = nats.status(settings)
    return (current.monitoring_url, current.url) if current.running else None


def _artemis_to_poll(settings: Settings) -> str | None:
    """The management API (Jolokia) of the Artemis broker whose queues the collector polls:
    the configured broker's, else the native one's when it runs (`flowscope artemis start`);
    None when there is none."""
    if settings.artemis.external:
        return settings.artemis.management_url
    current = artemis.status(settings)
    return current.management_url if current.running else None


def collect(settings: Settings, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s collect %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    collector = settings.collect
    if args.otlp_address:
        host, _, port = args.otlp_address.rpartition(":")
        if not host or not port.isdigit():
            raise FlowscopeError("collect",
                                 f"--otlp-address {args.otlp_address!r} is not host:port")
        collector = replace(collector, otlp_host=host, otlp_port=int(port))
    settings = replace(settings, collector=collector)
    if collector.otlp_to_kafka and args.no_kafka:
        raise FlowscopeError("collect", "FLOWSCOPE_OTLP_TO_KAFKA=on publishes what the OTLP "
                             "receiver takes to the spans topic, which --no-kafka turns off",
                             hint="drop one of the two")

    queues_url = None if args.no_rabbitmq else _rabbitmq_to_poll(settings)
    jetstream = None if args.no_nats else _nats_to_poll(settings)
    artemis_url = None if args.no_artemis else _artemis_to_poll(settings)

    def ready(url: str) -> None:
        forward = redact_url(settings.jaeger.external_otlp_endpoint or "off")
        queues = redact_url(queues_url) if queues_url else "off (no RabbitMQ running)"
        consumers = redact_url(jetstream[0]) if jetstream else "off (no NATS running)"
        artemis_queues = redact_url(artemis_url) if artemis_url else "off (no Artemis running)"
        otlp = " (to the spans topic)" if collector.otlp_to_kafka else ""
        print(f"collect: ready; OTLP/HTTP on {url}/v1/traces{otlp}, spans topic "
              f"{collector.spans_topic} on {settings.kafka.bootstrap}, "
              f"store {store_label(collector.store)}, "
              f"forwarding to Jaeger: {forward}, RabbitMQ queues: {queues}, JetStream "
              f"consumers: {consumers}, Artemis queues: {artemis_queues}", flush=True)

    try:
        asyncio.run(run_collector(settings, kafka_spans=not args.no_kafka, queues_url=queues_url,
                                  nats=jetstream, artemis=artemis_url, on_ready=ready))
    except StoreError as exc:
        raise FlowscopeError("collect", f"cannot start: {exc}",
                             hint="check that FLOWSCOPE_STORE and FLOWSCOPE_HOME are writable"
                             ) from None
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) and \
                exc.filename is None:
            raise FlowscopeError("collect", f"cannot listen on {collector.otlp_host}:"
                                 f"{collector.otlp_port}: {exc.strerror or exc}",
                                 hint="another collector may be running; or set "
                                 "FLOWSCOPE_OTLP_ADDRESS") from None
        where = f" ({exc.filename})" if exc.filename else ""
        raise FlowscopeError("collect", f"cannot start: {exc.strerror or exc}{where}",
                             hint="check that FLOWSCOPE_STORE and FLOWSCOPE_HOME are writable"
                             ) from None
    return 0


def demo(settings: Settings, args: argparse.Namespace) -> int:
    failures = tuple((name, getattr(args, name)) for name in FAILURE_KNOBS
                     if getattr(args, name) is not None)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    options = DemoOptions(duration_s=args.duration, scenario=args.scenario, rate=args.rate,
                          seed=seed, failures=failures, jaeger=not args.no_jaeger,
                          dashboard=not args.no_dashboard, dashboard_port=args.dashboard_port,
                          rabbitmq=not args.no_rabbitmq, nats=not args.no_nats,
                          artemis=not args.no_artemis, collectors=args.collectors,
                          store=args.store)
    return run_demo(settings, options)
