"""The `flowscope` command: start, stop and inspect the native infrastructure."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from flowscope import __version__
from flowscope.errors import FlowscopeError
from flowscope.infra import jaeger, kafka
from flowscope.settings import Settings


def _kafka_start(settings: Settings, _: argparse.Namespace) -> int:
    current = kafka.start(settings)
    print(current.bootstrap)
    return 0


def _kafka_stop(settings: Settings, _: argparse.Namespace) -> int:
    if settings.kafka.external_bootstrap:
        print(f"kafka: using the external cluster {settings.kafka.bootstrap} "
              "(KAFKA_BOOTSTRAP_SERVERS); nothing to stop")
        return 0
    pid = kafka.stop(settings)
    print(f"kafka: stopped (pid {pid})" if pid else "kafka: not running")
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


def _jaeger_stop(settings: Settings, _: argparse.Namespace) -> int:
    if settings.jaeger.external:
        print(f"jaeger: using the external Jaeger at {settings.jaeger.query_url}; nothing to stop")
        return 0
    pid = jaeger.stop(settings)
    print(f"jaeger: stopped (pid {pid})" if pid else "jaeger: not running")
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


Handler = Callable[[Settings, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="flowscope", description="Observability for asynchronous message flows over Kafka.")
    parser.add_argument("--version", action="version", version=f"flowscope {__version__}")
    groups = parser.add_subparsers(dest="group", required=True)
    components: dict[str, tuple[str, dict[str, Handler]]] = {
        "kafka": ("the native single-node Apache Kafka broker",
                  {"start": _kafka_start, "stop": _kafka_stop, "status": _kafka_status,
                   "install": _kafka_install}),
        "jaeger": ("the native Jaeger v2 (OTLP in, query API out)",
                   {"start": _jaeger_start, "stop": _jaeger_stop, "status": _jaeger_status,
                    "install": _jaeger_install}),
    }
    helps = {"start": "start it (or find it running) and wait until it is ready",
             "stop": "stop it cleanly", "status": "say whether it is up and where",
             "install": "download or build it into the cache, start nothing"}
    for name, (description, actions) in components.items():
        group = groups.add_parser(name, help=description, description=description)
        verbs = group.add_subparsers(dest="action", required=True)
        for verb, handler in actions.items():
            sub = verbs.add_parser(verb, help=helps[verb])
            if verb == "status":
                sub.add_argument("--json", action="store_true", help="print JSON for scripts")
            sub.set_defaults(handler=handler)
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
