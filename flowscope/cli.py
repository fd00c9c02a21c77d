"""The `flowscope` command: start, stop and inspect the native infrastructure."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from base.errors import FlowscopeError
from base.settings import Settings, redact_url, store_label
from flowscope import __version__, inspect
from flowscope.infra import artemis, jaeger, kafka, nats, postgres, rabbitmq
from flowscope.infra.process import check_ports_free
from flowscope.scenario import SCENARIOS
from store.contract import StoreError
from store.factory import open_store

Handler = Callable[[Settings, argparse.Namespace], int]


def _stopper(name: str, stop: Callable[[Settings], int | None],
             external: Callable[[Settings], str | None]) -> Handler:
    """`flowscope <name> stop`: stop the native one, or say that an external one is used
    (external: what to say of it, None when the native one is used)."""

    def handler(settings: Settings, _: argparse.Namespace) -> int:
        note = external(settings)
        if note is not None:
            print(f"{note}; nothing to stop")
            return 0
        pid = stop(settings)
        print(f"{name}: stopped (pid {pid})" if pid else f"{name}: not running")
        return 0

    return handler


def _report(name: str, current: Any, args: argparse.Namespace,
            rows: list[tuple[str, object]]) -> int:
    """`flowscope <name> status`: the status as JSON (--json), else a line of state and
    origin, then each (label, value) row and the log; exit 0 when running, else 3."""
    if args.json:
        print(json.dumps(current.as_json()))
        return 0 if current.running else 3
    state = "running" if current.running else "not running"
    origin = "external" if current.external else f"pid {current.pid}" if current.pid else "native"
    print(f"{name}: {state} ({origin})")
    rows = rows + ([("log", current.log)] if current.log else [])
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"  {label:<{width}}{value}")
    return 0 if current.running else 3


def _kafka_external(settings: Settings) -> str | None:
    if not settings.kafka.external_bootstrap:
        return None
    return (f"kafka: using the external cluster {settings.kafka.bootstrap} "
            "(KAFKA_BOOTSTRAP_SERVERS)")


def _jaeger_external(settings: Settings) -> str | None:
    if not settings.jaeger.external:
        return None
    return f"jaeger: using the external Jaeger at {redact_url(settings.jaeger.query_url)}"


def _kafka_start(settings: Settings, _: argparse.Namespace) -> int:
    current = kafka.start(settings)
    print(current.bootstrap)
    return 0


def _kafka_status(settings: Settings, args: argparse.Namespace) -> int:
    current = kafka.status(settings)
    if args.json:
        print(json.dumps(current.as_json()))
    elif current.running:
        origin = "external cluster" if current.external else f"pid {current.pid}"
        print(f"kafka: running on {current.bootstrap} ({origin})")
        if current.log:
            print(f"  log: {current.log}")
    else:
        print(f"kafka: not running (would listen on {current.bootstrap})")
    return 0 if current.running else 3


def _kafka_install(settings: Settings, _: argparse.Namespace) -> int:
    if settings.kafka.external_bootstrap:
        print("kafka: KAFKA_BOOTSTRAP_SERVERS is set; nothing to install")
        return 0
    print(kafka.install(settings))
    return 0


def _jaeger_start(settings: Settings, _: argparse.Namespace) -> int:
    current = jaeger.start(settings)
    print(f"otlp_http {current.otlp_http}\nquery {current.query}")
    return 0


def _jaeger_status(settings: Settings, args: argparse.Namespace) -> int:
    current = jaeger.status(settings)
    if args.json:
        print(json.dumps(current.as_json()))
        return 0 if current.running else 3
    state = "running" if current.running else "not running"
    origin = "external" if current.external else f"pid {current.pid}" if current.pid else "native"
    print(f"jaeger: {state} ({origin})")
    print(f"  otlp_http  {current.otlp_http}")
    if current.otlp_grpc:
        print(f"  otlp_grpc  {current.otlp_grpc}")
    print(f"  query      {current.query}")
    if not current.external:
        for role, port in settings.jaeger.ports.items():
            if role not in ("otlp_http", "otlp_grpc", "query"):
                print(f"  {role:<10} 127.0.0.1:{port}")
    if current.log:
        print(f"  log        {current.log}")
    return 0 if current.running else 3


def _jaeger_install(settings: Settings, _: argparse.Namespace) -> int:
    if settings.jaeger.external:
        print("jaeger: an external Jaeger is configured; nothing to build")
        return 0
    print(jaeger.install(settings))
    return 0


def _rabbitmq_external(settings: Settings) -> str | None:
    if not settings.rabbitmq.external:
        return None
    return (f"rabbitmq: using the external broker {redact_url(settings.rabbitmq.amqp_url)} "
            "(FLOWSCOPE_RABBITMQ_URL)")


def _rabbitmq_start(settings: Settings, _: argparse.Namespace) -> int:
    current = rabbitmq.start(settings)
    print(f"amqp {redact_url(current.amqp_url)}\n"
          f"management {redact_url(current.management_url)}")
    return 0


def _rabbitmq_status(settings: Settings, args: argparse.Namespace) -> int:
    current = rabbitmq.status(settings)
    rows: list[tuple[str, object]] = [("amqp", redact_url(current.amqp_url)),
                                      ("management", redact_url(current.management_url))]
    if not current.external:
        rows.append(("node", f"{current.node} (dist port {settings.rabbitmq.dist_port}, "
                             f"epmd port {settings.rabbitmq.epmd_port})"))
    return _report("rabbitmq", current, args, rows)


def _rabbitmq_install(settings: Settings, _: argparse.Namespace) -> int:
    if settings.rabbitmq.external:
        print(f"{_rabbitmq_external(settings)}; nothing to install")
        return 0
    print(rabbitmq.install(settings))
    return 0


def _nats_external(settings: Settings) -> str | None:
    if not settings.nats.external:
        return None
    return f"nats: using the external server {redact_url(settings.nats.url)} (FLOWSCOPE_NATS_URL)"


def _nats_start(settings: Settings, _: argparse.Namespace) -> int:
    current = nats.start(settings)
    print(f"url {redact_url(current.url)}\nmonitoring {redact_url(current.monitoring_url)}")
    return 0


def _nats_status(settings: Settings, args: argparse.Namespace) -> int:
    current = nats.status(settings)
    rows: list[tuple[str, object]] = [("url", redact_url(current.url)),
                                      ("monitoring", redact_url(current.monitoring_url))]
    if current.pid and not current.jetstream:
        rows.append(("JetStream", "not enabled"))
    return _report("nats", current, args, rows)


def _nats_install(settings: Settings, _: argparse.Namespace) -> int:
    if settings.nats.external:
        print(f"{_nats_external(settings)}; nothing to build")
        return 0
    print(nats.install(settings))
    return 0


def _artemis_external(settings: Settings) -> str | None:
    if not settings.artemis.external:
        return None
    return (f"artemis: using the external broker {redact_url(settings.artemis.amqp_url)} "
            "(FLOWSCOPE_ARTEMIS_URL)")


def _artemis_start(settings: Settings, _: argparse.Namespace) -> int:
    current = artemis.start(settings)
    print(f"amqp {redact_url(current.amqp_url)}\n"
          f"management {redact_url(current.management_url)}")
    return 0


def _artemis_status(settings: Settings, args: argparse.Namespace) -> int:
    current = artemis.status(settings)
    return _report("artemis", current, args, [("amqp", redact_url(current.amqp_url)),
                                              ("management", redact_url(current.management_url))])


def _artemis_install(settings: Settings, _: argparse.Namespace) -> int:
    if settings.artemis.external:
        print(f"{_artemis_external(settings)}; nothing to install")
        return 0
    print(artemis.install(settings))
    return 0


def _postgres_external(settings: Settings) -> str | None:
    if not settings.postgres.external:
        return None
    return (f"postgres: using the external server "
            f"{redact_url(str(settings.postgres.external_url))} (FLOWSCOPE_POSTGRES_URL)")


def _postgres_start(settings: Settings, _: argparse.Namespace) -> int:
    print(f"url {redact_url(postgres.start(settings).url)}")
    return 0


def _postgres_status(settings: Settings, args: argparse.Namespace) -> int:
    current = postgres.status(settings)
    return _report("postgres", current, args, [("url", redact_url(current.url))])


def _postgres_install(settings: Settings, _: argparse.Namespace) -> int:
    if settings.postgres.external:
        print(f"{_postgres_external(settings)}; nothing to install")
        return 0
    print(postgres.install(settings))
    return 0


def _inspect(settings: Settings, args: argparse.Namespace) -> int:
    try:
        since = inspect.parse_duration(args.since)
        store = open_store(settings, readonly=True)
    except (ValueError, StoreError) as exc:
        raise FlowscopeError("inspect", str(exc)) from None
    try:
        if args.what == "topology":
            print(inspect.inspect_topology(store, since, args.json))
        elif args.what == "flows":
            print(inspect.inspect_flows(store, since, args.json, args.limit))
        elif args.what == "lag":
            print(inspect.inspect_lag(store, args.group, args.json))
        elif args.what == "propagation":
            print(inspect.inspect_propagation(store, since, args.json))
        elif args.what == "counters":
            print(inspect.inspect_counters(store, args.json))
        elif args.what == "health":
            print(inspect.inspect_health(store, args.json))
        else:
            if not args.id:
                raise FlowscopeError("inspect", "`inspect flow` needs a correlation or trace id")
            shown = inspect.inspect_flow(store, args.id, args.json)
            if shown is None:
                where = store_label(settings.collect.store)
                raise FlowscopeError("inspect", f"no flow {args.id!r} in {where}")
            print(shown)
    finally:
        store.close()
    return 0


def _dashboard(settings: Settings, args: argparse.Namespace) -> int:
    address = args.address or settings.dashboard.address
    port = args.port or settings.dashboard.port
    check_ports_free("dashboard", {"http": port},
                     {"http": "FLOWSCOPE_DASHBOARD_PORT or --port"})
    app = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    if not app.is_file():
        raise FlowscopeError("dashboard", f"the dashboard app is missing at {app}",
                             hint="reinstall flowscope from its source tree (pip install -e .)")
    env = dict(os.environ, FLOWSCOPE_DASHBOARD_ADDRESS=address,
               FLOWSCOPE_DASHBOARD_PORT=str(port))
    print(f"dashboard: http://{address}:{port} (store {store_label(settings.collect.store)})",
          flush=True)
    # Become the Streamlit server: one process, so SIGTERM and Ctrl-C stop it directly.
    os.execve(sys.executable, [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.headless", "true", "--server.address", address, "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--server.runOnSave", "false", "--client.toolbarMode", "minimal",
        "--theme.base", "light"], env)
    return 0  # not reached


def _add_collector_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]
                            ) -> None:
    collect = groups.add_parser("collect", help="receive spans and build flows in the store",
                                description="Receive spans over OTLP/HTTP and from the spans "
                                "topic, assemble hops and flows into the store, forward to "
                                "Jaeger when FLOWSCOPE_JAEGER_OTLP_ENDPOINT is set.")
    collect.add_argument("--otlp-address", help="host:port of the OTLP/HTTP receiver "
                         "(default FLOWSCOPE_OTLP_ADDRESS or 127.0.0.1:4318)")
    collect.add_argument("--no-kafka", action="store_true",
                         help="leave Kafka alone: no spans topic, no lag polling")
    collect.add_argument("--no-rabbitmq", action="store_true",
                         help="do not poll RabbitMQ queues (polled by default when "
                         "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL is set or the native node runs)")
    collect.add_argument("--no-nats", action="store_true",
                         help="do not poll JetStream consumers (polled by default when "
                         "FLOWSCOPE_NATS_URL is set or the native server runs)")
    collect.add_argument("--no-artemis", action="store_true",
                         help="do not poll Artemis queues and dead letters (polled by default "
                         "when FLOWSCOPE_ARTEMIS_URL is set or the native broker runs)")
    collect.set_defaults(handler=_runner("collect"))
    inspect_parser = groups.add_parser(
        "inspect", help="print topology, flows, one flow, lag, propagation or counters",
        description="Read the store named by FLOWSCOPE_STORE.")
    inspect_parser.add_argument("what",
                                choices=["topology", "flows", "flow", "lag", "propagation",
                                         "counters", "health"])
    inspect_parser.add_argument("--group", help="only this consumer group (for lag)")
    inspect_parser.add_argument("id", nargs="?", help="correlation or trace id (for flow)")
    inspect_parser.add_argument("--since", default="15m", help="window, e.g. 30s, 15m, 2h")
    inspect_parser.add_argument("--limit", type=int, default=100, help="flows to list")
    inspect_parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    inspect_parser.set_defaults(handler=_inspect)
    board = groups.add_parser("dashboard", help="serve the live dashboard in the browser",
                              description="Serve the Streamlit dashboard on the store named by "
                              "FLOWSCOPE_STORE, on 127.0.0.1 unless told otherwise.")
    board.add_argument("--port", type=int, help="HTTP port (default FLOWSCOPE_DASHBOARD_PORT "
                       "or 8501)")
    board.add_argument("--address", help="address to bind (default FLOWSCOPE_DASHBOARD_ADDRESS "
                       "or 127.0.0.1)")
    board.set_defaults(handler=_dashboard)


def _add_demo_commands(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    services = groups.add_parser("services", help="run the demo services until Ctrl-C",
                                 description="Create the demo topics and run every demo "
                                 "service as its own process until SIGINT or SIGTERM.")
    services.add_argument("--only", help="comma-separated services to run (default: all)")
    services.set_defaults(handler=_runner("services"))
    load = groups.add_parser("loadgen", help="drive both demo flows at a steady rate",
                             description="Send file uploads and orders to the demo services.")
    load.add_argument("--rate", type=float, default=5.0, help="flows per second (default 5)")
    load.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    load.add_argument("--seed", type=int, default=0, help="replays the same flows (default 0)")
    for name in ("transient-failure", "permanent-failure", "callback-failure",
                 "inventory-failure"):
        load.add_argument(f"--{name}", type=float, metavar="P",
                          help=f"probability of a {name.replace('-', ' ')} (0-1)")
    load.add_argument("--work-ms", type=int, help="simulated processing time per message")
    load.add_argument("--pause-group", help="consumer group to pause (e.g. processor; "
                      "thumbnailer cancels the RabbitMQ consumers of thumbnails.jobs)")
    load.add_argument("--pause-after", type=float, default=0.0, help="seconds into the run")
    load.add_argument("--pause-for", type=float, default=10.0, help="seconds to pause")
    load.add_argument("--json", action="store_true", help="print the report as JSON")
    load.set_defaults(handler=_runner("loadgen"))


def _add_demo_stack_command(groups: argparse._SubParsersAction[argparse.ArgumentParser]
                            ) -> None:

    demo = groups.add_parser(
        "demo", help="run the whole stack with demo traffic, until Ctrl-C",
        description="Start Kafka, Jaeger, RabbitMQ, NATS and Artemis (unless running or "
        "external), the collector, the "
        "demo services, the load generator and the dashboard; print their URLs; on Ctrl-C or "
        "SIGTERM stop everything the demo started. Logs go to $FLOWSCOPE_HOME/demo.",
        epilog="scenarios: " + "; ".join(f"{k}: {v}" for k, v in SCENARIOS.items()))
    demo.add_argument("--duration", type=float, metavar="S",
                      help="stop after S seconds of traffic (default: run until Ctrl-C)")
    demo.add_argument("--scenario", choices=list(SCENARIOS), default="steady",
                      help="what the traffic does (default steady)")
    demo.add_argument("--rate", type=float, default=20.0, help="flows per second (default 20)")
    demo.add_argument("--seed", type=int, help="replays the same flows (default: a new seed)")
    for name in ("transient-failure", "permanent-failure", "callback-failure",
                 "inventory-failure"):
        demo.add_argument(f"--{name}", type=float, metavar="P",
                          help=f"probability of a {name.replace('-', ' ')} (0-1)")
    demo.add_argument("--no-jaeger", action="store_true", help="no Jaeger, no forwarding")
    demo.add_argument("--no-rabbitmq", action="store_true",
                      help="no RabbitMQ: the file pipeline runs in Kafka alone")
    demo.add_argument("--no-nats", action="store_true",
                      help="no NATS: shipments are not tracked over JetStream")
    demo.add_argument("--no-artemis", action="store_true",
                      help="no ActiveMQ Artemis: completed orders are not invoiced")
    demo.add_argument("--no-dashboard", action="store_true", help="no dashboard")
    demo.add_argument("--store", default="sqlite", metavar="KIND",
                      help="sqlite (default: the file under FLOWSCOPE_HOME) or postgresql (a "
                      "native server, or FLOWSCOPE_POSTGRES_URL's)")
    demo.add_argument("--collectors", type=int, default=1, metavar="N",
                      help="collectors in one consumer group on the spans topic (default 1; "
                      "more than one needs --store postgresql)")
    demo.add_argument("--dashboard-port", type=int, metavar="P",
                      help="dashboard port (default FLOWSCOPE_DASHBOARD_PORT or 8501)")
    demo.set_defaults(handler=_runner("demo"))


def _runner(name: str) -> Handler:
    """A command of flowscope/runners.py, whose module is imported when that command runs
    (it brings aiohttp, aiokafka and OpenTelemetry: half a second that `flowscope inspect`
    and the infrastructure commands do not spend). No cycle: runners imports the layers, and
    nothing imports it."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        handler: Handler = getattr(importlib.import_module("flowscope.runners"), name)
        return handler(settings, args)

    return run


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="flowscope", description="Observability for asynchronous message flows over Kafka.")
    parser.add_argument("--version", action="version", version=f"flowscope {__version__}")
    groups = parser.add_subparsers(dest="group", required=True)
    components: dict[str, tuple[str, dict[str, Handler]]] = {
        "kafka": ("the native single-node Apache Kafka broker",
                  {"start": _kafka_start, "stop": _stopper("kafka", kafka.stop, _kafka_external),
                   "status": _kafka_status, "install": _kafka_install}),
        "jaeger": ("the native Jaeger v2 (OTLP in, query API out)",
                   {"start": _jaeger_start,
                    "stop": _stopper("jaeger", jaeger.stop, _jaeger_external),
                    "status": _jaeger_status, "install": _jaeger_install}),
        "rabbitmq": ("a native RabbitMQ node (Debian's rabbitmq-server, management API on)",
                     {"start": _rabbitmq_start,
                      "stop": _stopper("rabbitmq", rabbitmq.stop, _rabbitmq_external),
                      "status": _rabbitmq_status, "install": _rabbitmq_install}),
        "nats": ("a native NATS server with JetStream (built from the Go module proxy)",
                 {"start": _nats_start, "stop": _stopper("nats", nats.stop, _nats_external),
                  "status": _nats_status, "install": _nats_install}),
        "artemis": ("a native ActiveMQ Artemis broker (the Apache distribution from Maven "
                    "Central; AMQP 1.0, Jolokia)",
                    {"start": _artemis_start,
                     "stop": _stopper("artemis", artemis.stop, _artemis_external),
                     "status": _artemis_status, "install": _artemis_install}),
        "postgres": ("a native PostgreSQL server (Debian's server binaries, a cluster under "
                     "FLOWSCOPE_HOME)",
                     {"start": _postgres_start,
                      "stop": _stopper("postgres", postgres.stop, _postgres_external),
                      "status": _postgres_status, "install": _postgres_install}),
    }
    helps = {"start": "start it (or find it running) and wait until it is ready",
             "stop": "stop it cleanly", "status": "say whether it is up and where",
             "install": "download or build it into the cache (RabbitMQ: check that Debian's "
                        "package is installed), start nothing"}
    for name, (description, actions) in components.items():
        group = groups.add_parser(name, help=description, description=description)
        verbs = group.add_subparsers(dest="action", required=True)
        for verb, handler in actions.items():
            sub = verbs.add_parser(verb, help=helps[verb])
            if verb == "status":
                sub.add_argument("--json", action="store_true", help="print JSON for scripts")
            sub.set_defaults(handler=handler)
    _add_collector_commands(groups)
    _add_demo_commands(groups)
    _add_demo_stack_command(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flowscope` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.handler(settings, args))
    except FlowscopeError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flowscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
