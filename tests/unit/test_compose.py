"""docker-compose.yml against the code: no drift in commands, variables, ports or defaults.

Docker is not needed: the compose file is read as YAML and every check asks the code itself
(the argument parser, Settings, DemoConfig, the names the sources read) what it expects.
Each check returns the problems it finds; the tests at the end prove each check can fail.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from opentelemetry.sdk import environment_variables as otel_sdk_variables

from base.errors import SettingsError
from base.settings import (
    ArtemisSettings,
    CollectorSettings,
    DashboardSettings,
    JaegerSettings,
    KafkaSettings,
    NatsSettings,
    PostgresSettings,
    RabbitmqSettings,
    Settings,
    redact_url,
)
from demo_services.config import ConfigError, DemoConfig
from flowscope.cli import build_parser
from flowscope.infra import artemis_config, rabbitmq

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROJECT_SERVICES = ("collector", "collector-replicas", "services", "loadgen", "dashboard")
# Services that are more of another (their binds are its binds; they publish no port, as the
# replicas' host ports would collide).
REPLICATES = {"collector-replicas": "collector"}
IMAGES = {"kafka": r"apache/kafka:4\.\d+\.\d+", "jaeger": r"jaegertracing/jaeger:2\.\d+\.\d+",
          # Debian 12's rabbitmq-server series (3.10 is final: the tag no longer moves)
          "rabbitmq": r"rabbitmq:3\.10(\.\d+)?-management",
          # the series of the nats-server the native launcher builds (NatsSettings)
          "nats": r"nats:2\.\d+(\.\d+)?-alpine",
          "artemis": r"apache/activemq-artemis:2\.\d+\.\d+",
          # Debian 12's PostgreSQL series, which the native launcher runs
          "postgres": r"postgres:15(\.\d+)?"}
SOURCE_DIRS = ("base", "store", "flowscope", "collectors", "demo_services", "dashboard")
VARIABLE = re.compile(r"^(FLOWSCOPE|KAFKA|OTEL)_[A-Z0-9_]*[A-Z0-9]$")
LOOPBACK = "127.0.0.1"
ANY_ADDRESS = "0.0.0.0"
# Variables whose compose value says where things are in the compose network (service names
# instead of 127.0.0.1, 0.0.0.0 binds, the browser's Jaeger URL); each is checked for pointing
# at the right service. Every other variable compose sets must equal the code's default.
WHERE_THINGS_ARE = frozenset({
    "KAFKA_BOOTSTRAP_SERVERS", "FLOWSCOPE_OTLP_ADDRESS", "FLOWSCOPE_JAEGER_OTLP_ENDPOINT",
    "FLOWSCOPE_JAEGER_QUERY_URL", "FLOWSCOPE_JAEGER_UI_URL", "FLOWSCOPE_DEMO_HOST",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "FLOWSCOPE_RABBITMQ_URL", "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL",
    "FLOWSCOPE_DEMO_RABBITMQ_URL", "FLOWSCOPE_NATS_URL", "FLOWSCOPE_NATS_MONITORING_URL",
    "FLOWSCOPE_DEMO_NATS_URL", "FLOWSCOPE_ARTEMIS_URL", "FLOWSCOPE_ARTEMIS_MANAGEMENT_URL",
    "FLOWSCOPE_DEMO_ARTEMIS_URL", "FLOWSCOPE_STORE",
})
# Variables that choose the stack's shape rather than a value; check_scale_out checks them.
SHAPE_CHOICES = frozenset({"FLOWSCOPE_OTLP_TO_KAFKA"})
# Artemis' standard ports, which `artemis create --port-offset` shifts together.
ARTEMIS_STANDARD_PORTS = {"port": 5672, "core_port": 61616, "management_port": 8161}
ARTEMIS_OVERRIDE = "/var/lib/artemis-instance/etc-override/broker.xml"

Compose = dict[str, Any]


# ---- reading the files ---------------------------------------------------------------------

def load_compose() -> Compose:
    """docker-compose.yml as a dict (anchors and merge keys resolved)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), f"{COMPOSE_FILE} is not a YAML mapping"
    return data


def dockerfile_env() -> dict[str, str]:
    """The ENV of the Dockerfile, which every project container starts with."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        words = line.split(None, 1)
        if len(words) == 2 and words[0].upper() == "ENV":
            for item in shlex.split(words[1]):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def services_of(compose: Compose) -> dict[str, dict[str, Any]]:
    """The services mapping ({} when missing)."""
    services = compose.get("services")
    return services if isinstance(services, dict) else {}


def compose_env(service: Mapping[str, Any]) -> dict[str, object]:
    """A service's `environment`, in either of compose's two spellings, values as written."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {name: value if sep else None for name, sep, value in pairs}
    return dict(raw)


def container_env(service: Mapping[str, Any]) -> dict[str, str]:
    """The environment the container's process sees: the Dockerfile's ENV, then compose's."""
    env = dockerfile_env()
    env.update({name: str(value) for name, value in compose_env(service).items()
                if value is not None})
    return env


def command_argv(service: Mapping[str, Any]) -> list[str]:
    """A service's command as an argument list."""
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def parse_command(service: Mapping[str, Any]) -> Any:
    """The argparse namespace of a `flowscope ...` command; ValueError says why it fails."""
    argv = command_argv(service)
    if argv[:1] != ["flowscope"]:
        raise ValueError(f"command {argv!r} does not start with `flowscope`")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv[1:])
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        raise ValueError(f"`{shlex.join(argv)}` does not parse: "
                         f"{message[-1] if message else 'argparse exit'}") from None


def published(service: Mapping[str, Any]) -> Iterator[tuple[str | None, int, int]]:
    """(host address, host port, container port) of each published port."""
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            yield (entry.get("host_ip"), int(entry.get("published", 0)),
                   int(entry.get("target", 0)))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) == 3:
            yield parts[0], int(parts[1]), int(parts[2])
        elif len(parts) == 2:
            yield None, int(parts[0]), int(parts[1])
        else:
            yield None, 0, int(parts[0])


# ---- what the code reads and where it listens -----------------------------------------------

def _constants(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and VARIABLE.match(node.value):
            yield node.value


def _demo_variables() -> set[str]:
    """FLOWSCOPE_DEMO_<FIELD> names (built at run time, so no constant in the source), kept
    only when setting one really changes DemoConfig."""
    names = set()
    for spec in fields(DemoConfig):
        name = f"FLOWSCOPE_DEMO_{spec.name.upper()}"
        default = getattr(DemoConfig, spec.name)
        other: object
        if isinstance(default, str):
            other = f"{default}x"
        elif isinstance(default, float):
            other = 0.5 if default != 0.5 else 0.25
        else:
            other = default + 1
        with contextlib.suppress(ConfigError):
            if getattr(DemoConfig.from_env({name: str(other)}), spec.name) == other:
                names.add(name)
    return names


def names_the_code_reads() -> set[str]:
    """Every FLOWSCOPE_*, KAFKA_* and OTEL_* name in the project's sources and in the
    OpenTelemetry SDK's list of variables (the demo services configure the SDK from OTEL_*)."""
    paths = [path for folder in SOURCE_DIRS for path in sorted((ROOT / folder).rglob("*.py"))]
    paths.append(Path(otel_sdk_variables.__file__))
    return {name for path in paths for name in _constants(path)} | _demo_variables()


def listening(service: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """What a project service's servers bind, by role (empty for a client such as loadgen)."""
    args = parse_command(service)
    env = container_env(service)
    settings = Settings.from_env(env)
    if args.group == "collect":
        collector = settings.collect
        host, port = collector.otlp_host, collector.otlp_port
        if args.otlp_address:
            host, _, port_text = args.otlp_address.rpartition(":")
            port = int(port_text)
        return {"otlp": (host, port)}
    if args.group == "dashboard":
        return {"http": (args.address or settings.dashboard.address,
                         args.port or settings.dashboard.port)}
    if args.group == "services":
        demo = DemoConfig.from_env(env)
        return {role: (demo.host, getattr(demo, f"{role}_port"))
                for role in ("uploads", "orders", "webhook")}
    return {}


def code_default_ports(name: str) -> set[int]:
    """The ports the code listens on by default for what a compose service runs."""
    demo = DemoConfig()
    return {
        "kafka": {KafkaSettings.port},
        "jaeger": {JaegerSettings.query_port},
        "rabbitmq": {RabbitmqSettings.port, RabbitmqSettings.management_port},
        "nats": {NatsSettings.port, NatsSettings.monitoring_port},
        "artemis": {ArtemisSettings.port, ArtemisSettings.management_port},
        "postgres": {PostgresSettings.port},
        "collector": {CollectorSettings.otlp_port},
        "dashboard": {DashboardSettings.port},
        "services": {demo.uploads_port, demo.orders_port, demo.webhook_port},
    }.get(name, set())


def _settings_seen(env: Mapping[str, str]) -> tuple[Settings, DemoConfig]:
    return Settings.from_env(env), DemoConfig.from_env(env)


class _Recorder(dict[str, str]):
    """An environment that remembers which names were looked up."""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


# ---- the checks ------------------------------------------------------------------------------

def check_services_and_images(compose: Compose) -> list[str]:
    services = services_of(compose)
    problems = [f"service {name!r} is missing" for name in (*IMAGES, *PROJECT_SERVICES)
                if name not in services]
    for name, pattern in IMAGES.items():
        image = str(services.get(name, {}).get("image", ""))
        if not re.fullmatch(pattern, image):
            problems.append(f"{name}: image {image!r} is not {pattern} (a concrete tag)")
    kafka = str(services.get("kafka", {}).get("image", ""))
    if kafka.partition(":")[2] != KafkaSettings.version:
        problems.append(f"kafka: image {kafka!r} is not the native launcher's Kafka "
                        f"{KafkaSettings.version} (KafkaSettings.version)")
    heap = str(compose_env(services.get("kafka", {})).get("KAFKA_HEAP_OPTS", ""))
    if f"-Xmx{KafkaSettings.heap}" not in heap.split():
        problems.append(f"kafka: KAFKA_HEAP_OPTS={heap!r} lacks the native heap "
                        f"-Xmx{KafkaSettings.heap}")
    return problems


def check_builds(compose: Compose) -> list[str]:
    services = services_of(compose)
    problems = []
    images = set()
    for name in PROJECT_SERVICES:
        service = services.get(name, {})
        build = service.get("build")
        context, dockerfile = (build.get("context", "."), build.get("dockerfile", "Dockerfile")) \
            if isinstance(build, dict) else (build, "Dockerfile")
        if context is None:
            problems.append(f"{name}: not built from the project's Dockerfile (no `build`)")
            continue
        if (ROOT / str(context)).resolve() != ROOT or not (ROOT / str(dockerfile)).is_file():
            problems.append(f"{name}: build {build!r} is not the project's Dockerfile {DOCKERFILE}")
        images.add(service.get("image"))
    if len(images) > 1 or None in images:
        problems.append("project services must share one image name, not "
                        f"{sorted(map(str, images))}")
    for name in IMAGES:
        if "build" in services.get(name, {}):
            problems.append(f"{name}: runs the official image, it must not be built")
    text = DOCKERFILE.read_text()
    if not re.search(r"^FROM python:3\.11-slim\b", text, re.M):
        problems.append("Dockerfile: not FROM python:3.11-slim")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1] in ("root", "0"):
        problems.append("Dockerfile: the image must run as a non-root USER")
    if not dockerfile_env().get("FLOWSCOPE_HOME"):
        problems.append("Dockerfile: ENV FLOWSCOPE_HOME is not set")
    return problems


def check_commands(compose: Compose) -> list[str]:
    problems = []
    for name in PROJECT_SERVICES:
        try:
            parse_command(services_of(compose).get(name, {}))
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    return problems


def check_variables_are_read(compose: Compose) -> list[str]:
    known = names_the_code_reads()
    problems = []
    for name in PROJECT_SERVICES:
        for variable, value in compose_env(services_of(compose).get(name, {})).items():
            if variable not in known:
                problems.append(f"{name}: {variable} is read nowhere in "
                                f"{', '.join(SOURCE_DIRS)} (misspelt or removed?)")
            if value is None or isinstance(value, bool):
                problems.append(f"{name}: {variable} needs a quoted string value, not {value!r}")
    return problems


def check_settings_load(compose: Compose) -> list[str]:
    problems = []
    for name in PROJECT_SERVICES:
        try:
            _settings_seen(container_env(services_of(compose).get(name, {})))
        except (SettingsError, ConfigError) as exc:
            problems.append(f"{name}: its environment does not load: {exc}")
    return problems


def check_defaults(compose: Compose) -> list[str]:
    """Each variable not in WHERE_THINGS_ARE could be removed without changing anything."""
    problems = []
    for name in PROJECT_SERVICES:
        service = services_of(compose).get(name, {})
        env = container_env(service)
        recorder = _Recorder(env)
        try:
            seen = _settings_seen(recorder)
        except (SettingsError, ConfigError):
            continue  # check_settings_load names it
        for variable in sorted(compose_env(service).keys() - WHERE_THINGS_ARE - SHAPE_CHOICES):
            if variable not in recorder.asked:
                problems.append(f"{name}: {variable} is no setting of Settings or DemoConfig, "
                                "so it cannot equal a code default; use the default or add it "
                                "to WHERE_THINGS_ARE with a check")
                continue
            without = dockerfile_env() | {k: str(v) for k, v in compose_env(service).items()
                                          if k != variable and v is not None}
            if _settings_seen(without) != seen:
                problems.append(f"{name}: {variable}={env[variable]!r} is not the code's default")
    return problems


def check_ports(compose: Compose) -> list[str]:
    problems = []
    for name, service in services_of(compose).items():
        ports = list(published(service))
        for host, host_port, port in ports:
            if host != LOOPBACK:
                problems.append(f"{name}: port {port} must be published on {LOOPBACK}, "
                                f"not {host or 'every address'}")
            if host_port != port:
                problems.append(f"{name}: container port {port} is published as {host_port}; "
                                "keep the native port so URLs stay the same")
        expected = code_default_ports(name)
        if {port for _, _, port in ports} != expected:
            problems.append(f"{name}: publishes {sorted(p for _, _, p in ports)}, the code's "
                            f"default ports are {sorted(expected)}")
        if name in PROJECT_SERVICES:
            problems += _check_binds(name, service,
                                     code_default_ports(REPLICATES.get(name, name)))
    return problems


def _check_binds(name: str, service: Mapping[str, Any], expected: set[int]) -> list[str]:
    try:
        servers = listening(service)
    except (ValueError, SettingsError, ConfigError):
        return []  # check_commands and check_settings_load name it
    problems = []
    for role, (host, port) in servers.items():
        if host != ANY_ADDRESS:
            problems.append(f"{name}: {role} binds {host}:{port}; inside a container it must "
                            f"bind {ANY_ADDRESS} to be reachable")
        if port not in expected:
            problems.append(f"{name}: {role} listens on {port}, not the code's default "
                            f"{sorted(expected)}")
    return problems


def _host_port(text: str) -> tuple[str, int | None]:
    if ":" not in text:
        return text, None
    if "://" in text:
        parts = urlsplit(text)
        return parts.hostname or "", parts.port
    host, _, port = text.rpartition(":")
    return host, int(port) if port.isdigit() else None


def _advertised(service: Mapping[str, Any]) -> set[tuple[str, int | None]]:
    listeners = str(compose_env(service).get("KAFKA_ADVERTISED_LISTENERS", ""))
    return {_host_port(item) for item in listeners.split(",") if item}


def check_addresses(compose: Compose) -> list[str]:
    """Addresses in WHERE_THINGS_ARE variables point at a service that listens there."""
    services = services_of(compose)
    problems = []
    for name in PROJECT_SERVICES:
        env = compose_env(services.get(name, {}))
        for variable in sorted(env.keys() & WHERE_THINGS_ARE):
            problems += [f"{name}: {variable}={env[variable]!r}: {why}"
                         for why in _address_problems(variable, str(env[variable]), services)]
    return problems


def _address_problems(variable: str, value: str, services: dict[str, Any]) -> list[str]:
    if variable == "KAFKA_BOOTSTRAP_SERVERS":
        return [f"{server} is not an advertised listener of the kafka service"
                for server in value.split(",")
                if _host_port(server) not in _advertised(services.get("kafka", {}))]
    host, port = _host_port(value)
    if host == ANY_ADDRESS:
        problems = []  # a bind address, checked by check_ports
    elif host == LOOPBACK:
        ours = {hp for service in services.values() for h, hp, _ in published(service)
                if h == LOOPBACK}
        problems = [] if port in ours else [f"nothing is published on {LOOPBACK}:{port}"]
    elif host not in services:
        problems = [f"{host!r} is not a service of this compose file"]
    elif variable == "FLOWSCOPE_DEMO_HOST":
        problems = [] if command_argv(services[host])[1:2] == ["services"] else \
            [f"service {host!r} does not run `flowscope services`"]
    elif host in PROJECT_SERVICES:
        problems = _listens_on(host, services[host], port)
    elif variable == "FLOWSCOPE_STORE" and port not in code_default_ports(host):
        problems = [f"{host} listens on {sorted(code_default_ports(host))}, not {port}"]
    elif variable == "FLOWSCOPE_JAEGER_QUERY_URL" and port != JaegerSettings.query_port:
        problems = [f"Jaeger's query port is {JaegerSettings.query_port}"]
    else:
        problems = []
    return problems


def _listens_on(host: str, service: Mapping[str, Any], port: int | None) -> list[str]:
    try:
        ports = {p for _, p in listening(service).values()}
    except (ValueError, SettingsError, ConfigError):
        return []  # check_commands and check_settings_load name it
    return [] if port in ports else [f"{host} listens on {sorted(ports)}, not {port}"]


def check_store_shared(compose: Compose) -> list[str]:
    """Every collector and the dashboard use one store: a file on a named volume mounted in
    each, or the PostgreSQL service of this file, as its user and database."""
    services = services_of(compose)
    named = set((compose.get("volumes") or {}).keys())
    stores: dict[str, Path | str] = {}
    problems = []
    for name in ("collector", "collector-replicas", "dashboard"):
        service = services.get(name, {})
        try:
            store = Settings.from_env(container_env(service)).collect.store
        except SettingsError:
            continue
        stores[name] = store
        if isinstance(store, str):
            problems += [f"{name}: {why}" for why in _server_problems(store, services)]
            continue
        mounts = [str(v).split(":") for v in service.get("volumes") or []]
        if not any(len(m) >= 2 and m[0] in named and store.is_relative_to(m[1]) for m in mounts):
            problems.append(f"{name}: the store {store} is on no named volume of this file")
    if len(set(stores.values())) > 1:
        problems.append("the collectors and the dashboard use different stores: "
                        f"{ {k: redact_url(str(v)) for k, v in stores.items()} }")
    return problems


def _server_problems(url: str, services: dict[str, Any]) -> list[str]:
    """Why a PostgreSQL store URL does not reach the postgres service as its user."""
    parts = urlsplit(url)
    server = services.get(parts.hostname or "", {})
    if parts.hostname != "postgres" or not server:
        return [f"the store's server {parts.hostname!r} is not this file's postgres service"]
    env = compose_env(server)
    problems = []
    expected = {"user": env.get("POSTGRES_USER"), "password": env.get("POSTGRES_PASSWORD"),
                "database": env.get("POSTGRES_DB")}
    given = {"user": parts.username, "password": parts.password,
             "database": parts.path.lstrip("/")}
    problems += [f"the store URL's {key} is not the postgres service's POSTGRES_{key.upper()}"
                 .replace("POSTGRES_DATABASE", "POSTGRES_DB")
                 for key in expected if given[key] != expected[key]]
    command = command_argv(server)
    if f"port={parts.port}" not in command or str(env.get("PGPORT")) != str(parts.port):
        problems.append(f"postgres does not listen on {parts.port} (command {command}, "
                        f"PGPORT {env.get('PGPORT')!r})")
    return problems


def check_scale_out(compose: Compose) -> list[str]:
    """The collector the services send to publishes to the spans topic; the replicas run
    `flowscope collect` with its environment, and publish no port."""
    services = services_of(compose)
    collector, replicas = services.get("collector", {}), services.get("collector-replicas", {})
    problems = []
    if compose_env(collector).get("FLOWSCOPE_OTLP_TO_KAFKA") != "on":
        problems.append("collector: its receiver must publish to the spans topic for the "
                        "replicas (FLOWSCOPE_OTLP_TO_KAFKA: \"on\")")
    if command_argv(replicas)[:2] != ["flowscope", "collect"]:
        problems.append("collector-replicas: does not run `flowscope collect`")
    if compose_env(replicas) != compose_env(collector):
        problems.append("collector-replicas: its environment is not the collector's")
    if list(published(replicas)):
        problems.append("collector-replicas: publishes ports, which replicas would share")
    if not int((replicas.get("deploy") or {}).get("replicas", 0)) >= 1:
        problems.append("collector-replicas: no deploy.replicas")
    return problems


def _dependencies(services: dict[str, Any], name: str) -> dict[str, Any]:
    depends = services.get(name, {}).get("depends_on") or {}
    return {d: {} for d in depends} if isinstance(depends, list) else dict(depends)


def check_depends_on(compose: Compose) -> list[str]:
    services = services_of(compose)
    problems = []
    for name in services:
        for target, spec in _dependencies(services, name).items():
            if target not in services:
                problems.append(f"{name}: depends on {target!r}, which is no service")
            elif "healthcheck" in services[target] and \
                    (spec or {}).get("condition") != "service_healthy":
                problems.append(f"{name}: {target} has a healthcheck; depend on it with "
                                "condition: service_healthy")
    for name in PROJECT_SERVICES:
        needed = {_host_port(str(value))[0] for variable, value in
                  compose_env(services.get(name, {})).items() if variable in WHERE_THINGS_ARE}
        needed = {host for host in needed if host in services and host != name}
        if missing := needed - _closure(services, name):
            problems.append(f"{name}: uses {sorted(missing)} but does not depend on it")
    return problems


def _closure(services: dict[str, Any], name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for target in _dependencies(services, todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _conf(text: str) -> dict[str, str]:
    """A new-style rabbitmq.conf as key -> value (comments and blank lines left out)."""
    pairs = (line.split("=", 1) for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _mounted_configs(compose: Compose, service: Mapping[str, Any]) -> dict[str, str]:
    """The contents of the top-level configs a service mounts, by target path."""
    defined = compose.get("configs") or {}
    mounted = {}
    for entry in service.get("configs") or []:
        source = entry.get("source") if isinstance(entry, dict) else entry
        target = entry.get("target", f"/{source}") if isinstance(entry, dict) else f"/{source}"
        content = (defined.get(source) or {}).get("content")
        mounted[str(target)] = str(content) if content is not None else ""
    return mounted


def check_nats(compose: Compose) -> list[str]:
    """The NATS server runs as the native one does: JetStream on, stored in a volume, the
    native ports, the image of the series the launcher builds."""
    service = services_of(compose).get("nats", {})
    argv = command_argv(service)
    problems = []
    options = dict(zip(argv, [*argv[1:], ""], strict=True))
    if "-js" not in argv:
        problems.append(f"nats: command {argv!r} lacks -js (JetStream)")
    for flag, port in (("-p", NatsSettings.port), ("-m", NatsSettings.monitoring_port)):
        if options.get(flag) != str(port):
            problems.append(f"nats: {flag} {options.get(flag)!r}, the native server's is {port}")
    mounts = [str(volume).partition(":")[2] for volume in service.get("volumes") or []]
    if options.get("-sd") not in mounts:
        problems.append(f"nats: the JetStream store -sd {options.get('-sd')!r} is not a volume")
    series = NatsSettings.module_version.lstrip("v").rsplit(".", 1)[0]
    tag = str(service.get("image", "")).partition(":")[2]
    if not tag.startswith(f"{series}"):
        problems.append(f"nats: image tag {tag!r} is not the native server's series {series}")
    return problems


def check_rabbitmq(compose: Compose) -> list[str]:
    """The broker container is configured as the native node is, Docker's addresses aside:
    the native rabbitmq.conf with 0.0.0.0 for 127.0.0.1 and without its log settings (a
    container logs to its console), mounted into the image's conf.d; the native distribution
    and epmd ports."""
    service = services_of(compose).get("rabbitmq", {})
    problems = []
    mounted = {target: text for target, text in _mounted_configs(compose, service).items()
               if re.fullmatch(r"/etc/rabbitmq/conf\.d/[^/]+\.conf", target)}
    native = {key: value.replace(LOOPBACK, ANY_ADDRESS) for key, value in
              _conf(rabbitmq.render_config(RabbitmqSettings())).items()
              if not key.startswith("log.")}
    if len(mounted) != 1:
        problems.append("rabbitmq: mount exactly one config with content into "
                        f"/etc/rabbitmq/conf.d/*.conf, not {sorted(mounted)}")
    for target, text in mounted.items():
        found = _conf(text)
        for key in sorted(native.keys() | found.keys()):
            if found.get(key) != native.get(key):
                problems.append(f"rabbitmq: {target}: {key} = {found.get(key)}, the native "
                                f"node's is {native.get(key)}")
    env = compose_env(service)
    for variable, port in (("RABBITMQ_DIST_PORT", RabbitmqSettings.dist_port),
                           ("ERL_EPMD_PORT", RabbitmqSettings.epmd_port)):
        if str(env.get(variable)) != str(port):
            problems.append(f"rabbitmq: {variable}={env.get(variable)!r}, the native node's is "
                            f"{port}")
    return problems


def _create_options(service: Mapping[str, Any]) -> dict[str, str]:
    """The `artemis create` options of EXTRA_ARGS (--name value or --name=value)."""
    words = shlex.split(str(compose_env(service).get("EXTRA_ARGS", "")))
    options: dict[str, str] = {}
    for index, word in enumerate(words):
        if not word.startswith("--"):
            continue  # the value of the option before it
        name, equals, value = word.partition("=")
        following = words[index + 1] if index + 1 < len(words) else "--"
        options[name] = value if equals else "" if following.startswith("--") else following
    return options


def _artemis_urls(compose: Compose) -> dict[str, str]:
    """The Artemis URLs the collector and the demo services are given, by service."""
    services = services_of(compose)
    collector = compose_env(services.get("collector", {}))
    demo = compose_env(services.get("services", {}))
    return {**{f"collector: {name}": str(collector.get(name, "")) for name in (
        "FLOWSCOPE_ARTEMIS_URL", "FLOWSCOPE_ARTEMIS_MANAGEMENT_URL")},
        "services: FLOWSCOPE_DEMO_ARTEMIS_URL": str(demo.get("FLOWSCOPE_DEMO_ARTEMIS_URL", ""))}


def check_artemis(compose: Compose) -> list[str]:
    """The broker container runs the native launcher's release, configured as the native
    broker: its broker.xml with 0.0.0.0 for 127.0.0.1, the native ports (one offset from
    Artemis' standard ones), heap and user; the collector and the services reach it as that
    user."""
    service = services_of(compose).get("artemis", {})
    native = ArtemisSettings()
    problems = []
    tag = str(service.get("image", "")).partition(":")[2]
    if tag != native.version:
        problems.append(f"artemis: image tag {tag!r} is not the native broker's {native.version}")
    mounted = _mounted_configs(compose, service)
    expected = artemis_config.render_broker_xml(native, host=ANY_ADDRESS)
    if list(mounted) != [ARTEMIS_OVERRIDE]:
        problems.append(f"artemis: mount exactly one config into {ARTEMIS_OVERRIDE}, not "
                        f"{sorted(mounted)}")
    elif mounted[ARTEMIS_OVERRIDE].rstrip() != expected.rstrip():
        problems.append("artemis: the mounted broker.xml is not the native one with 0.0.0.0 "
                        "(render_broker_xml(ArtemisSettings(), host='0.0.0.0'))")
    options = _create_options(service)
    offsets = {getattr(native, name) - port for name, port in ARTEMIS_STANDARD_PORTS.items()}
    wanted = {"--http-host": ANY_ADDRESS, "--port-offset": str(offsets.pop()),
              "--java-memory": native.heap,
              "--java-options": f"-Xms{artemis_config.INITIAL_HEAP}"}
    if offsets:
        problems.append("artemis: the native ports are no single offset of the standard ones")
    for option, value in wanted.items():
        if options.get(option) != value:
            problems.append(f"artemis: EXTRA_ARGS {option} {options.get(option)!r}, the native "
                            f"broker's is {value!r}")
    env = compose_env(service)
    user = (str(env.get("ARTEMIS_USER")), str(env.get("ARTEMIS_PASSWORD")))
    if user != (native.user, native.password):
        problems.append(f"artemis: ARTEMIS_USER {user[0]!r} is not the native broker's user")
    ports = {port for _, _, port in published(service)}
    for where, url in _artemis_urls(compose).items():
        parts = urlsplit(url)
        if (parts.username, parts.password, parts.hostname) != (*user, "artemis") \
                or parts.port not in ports:
            problems.append(f"{where}={redact_url(url)!r} does not reach the artemis service as "
                            "its user on a published port")
    return problems


CHECKS: list[Callable[[Compose], list[str]]] = [
    check_services_and_images, check_builds, check_commands, check_variables_are_read,
    check_settings_load, check_defaults, check_ports, check_addresses, check_store_shared,
    check_depends_on, check_rabbitmq, check_nats, check_artemis, check_scale_out,
]


# ---- the tests -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_compose_file_matches_the_code(compose: Compose, check: Callable[[Compose], list[str]]
                                       ) -> None:
    problems = check(compose)
    assert not problems, f"{COMPOSE_FILE.name} drifted from the code:\n  " + "\n  ".join(problems)


def test_the_variable_scan_finds_what_the_code_reads() -> None:
    names = names_the_code_reads()
    assert {"FLOWSCOPE_DASHBOARD_REFRESH", "KAFKA_BOOTSTRAP_SERVERS", "FLOWSCOPE_DEMO_HOST",
            "OTEL_EXPORTER_OTLP_ENDPOINT"} <= names
    assert "FLOWSCOPE_DEMO_BOOTSTRAP" not in names  # DemoConfig ignores it


def _env(service: str, **changes: str) -> Callable[[Compose], None]:
    def mutate(data: Compose) -> None:
        environment = data["services"][service]["environment"]
        for name, value in changes.items():
            if value:
                environment[name] = value
            else:
                del environment[name]
    return mutate


def _rename(service: str, old: str, new: str) -> Callable[[Compose], None]:
    def mutate(data: Compose) -> None:
        environment = data["services"][service]["environment"]
        environment[new] = environment.pop(old)
    return mutate


def _set(service: str, key: str, value: object) -> Callable[[Compose], None]:
    def mutate(data: Compose) -> None:
        data["services"][service][key] = value
    return mutate


def _undepend(data: Compose) -> None:
    data["services"]["loadgen"]["depends_on"] = ["services"]


def _config(name: str, old: str, new: str) -> Callable[[Compose], None]:
    def mutate(data: Compose) -> None:
        config = data["configs"][name]
        assert old in config["content"]
        config["content"] = config["content"].replace(old, new)
    return mutate


def _rabbitmq_conf(old: str, new: str) -> Callable[[Compose], None]:
    return _config("rabbitmq-conf", old, new)


MUTATIONS = {
    "misspelt variable": (_rename("collector", "KAFKA_BOOTSTRAP_SERVERS",
                                  "KAFKA_BOOTSTRAP_SERVER"),
                          check_variables_are_read, "KAFKA_BOOTSTRAP_SERVER is read nowhere"),
    "ignored demo variable": (_env("loadgen", FLOWSCOPE_DEMO_BOOTSTRAP="kafka:19092"),
                              check_variables_are_read, "FLOWSCOPE_DEMO_BOOTSTRAP"),
    "old kafka": (_set("kafka", "image", "apache/kafka:3.9.0"), check_services_and_images,
                  "apache/kafka:3.9.0"),
    "missing service": (lambda data: data["services"].pop("loadgen"), check_services_and_images,
                        "'loadgen' is missing"),
    "no build": (lambda data: data["services"]["dashboard"].pop("build"), check_builds,
                 "dashboard: not built"),
    "renamed option": (_set("loadgen", "command", ["flowscope", "loadgen", "--rps", "5"]),
                       check_commands, "--rps"),
    "bad port value": (_env("dashboard", FLOWSCOPE_DASHBOARD_PORT="http"), check_settings_load,
                       "FLOWSCOPE_DASHBOARD_PORT"),
    "not the default refresh": (_env("dashboard", FLOWSCOPE_DASHBOARD_REFRESH="10"),
                                check_defaults, "FLOWSCOPE_DASHBOARD_REFRESH='10'"),
    "not the default topic": (_env("collector", FLOWSCOPE_SPANS_TOPIC="spans"), check_defaults,
                              "FLOWSCOPE_SPANS_TOPIC"),
    "no default to compare": (_env("services", OTEL_BSP_SCHEDULE_DELAY="500"), check_defaults,
                              "OTEL_BSP_SCHEDULE_DELAY is no setting"),
    "published everywhere": (_set("dashboard", "ports", ["8501:8501"]), check_ports,
                             f"published on {LOOPBACK}"),
    "other port": (_set("jaeger", "ports", ["127.0.0.1:16687:16687"]), check_ports,
                   "default ports are [16686]"),
    "loopback bind": (_set("dashboard", "command", ["flowscope", "dashboard"]), check_ports,
                      "binds 127.0.0.1:8501"),
    "wrong collector name": (_env("services", OTEL_EXPORTER_OTLP_ENDPOINT="http://colector:4318"),
                             check_addresses, "'colector' is not a service"),
    "wrong collector port": (_env("services", OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4317"),
                             check_addresses, "not 4317"),
    "host listener": (_env("collector", KAFKA_BOOTSTRAP_SERVERS="kafka:9092"), check_addresses,
                      "kafka:9092 is not an advertised listener"),
    "loadgen aims at the collector": (_env("loadgen", FLOWSCOPE_DEMO_HOST="collector"),
                                      check_addresses, "does not run `flowscope services`"),
    "unpublished UI": (_env("dashboard", FLOWSCOPE_JAEGER_UI_URL="http://127.0.0.1:16687"),
                       check_addresses, "nothing is published"),
    "own store": (_env("dashboard", FLOWSCOPE_STORE="/tmp/flowscope.db"), check_store_shared,
                  "different stores"),
    "store off the volume": (_env("dashboard", FLOWSCOPE_STORE="/data/flowscope.db"),
                             check_store_shared, "dashboard: the store /data/flowscope.db"),
    "store on another server": (
        _env("dashboard", FLOWSCOPE_STORE="postgresql://flowscope:flowscope@db:5442/flowscope"),
        check_store_shared, "'db' is not this file's postgres service"),
    "store as another user": (
        _env("dashboard", FLOWSCOPE_STORE="postgresql://admin:x@postgres:5442/flowscope"),
        check_store_shared, "URL's user"),
    "store on the system port": (_set("postgres", "command", ["postgres"]), check_store_shared,
                                 "does not listen on 5442"),
    "postgres on its standard port": (_set("postgres", "ports", ["127.0.0.1:5432:5432"]),
                                      check_ports, "default ports are [5442]"),
    "receiver stores itself": (_env("collector", FLOWSCOPE_OTLP_TO_KAFKA=""), check_scale_out,
                               "FLOWSCOPE_OTLP_TO_KAFKA"),
    "replicas publish": (_set("collector-replicas", "ports", ["127.0.0.1:4318:4318"]),
                         check_scale_out, "publishes ports"),
    "started, not healthy": (_undepend, check_depends_on, "condition: service_healthy"),
    "no dependency": (lambda data: data["services"]["services"].pop("depends_on"),
                      check_depends_on, "does not depend"),
    "other rabbitmq": (_set("rabbitmq", "image", "rabbitmq:3.13-management"),
                       check_services_and_images, "rabbitmq:3.13-management"),
    "system amqp port": (_set("rabbitmq", "ports", ["127.0.0.1:5672:5672",
                                                    "127.0.0.1:15682:15682"]),
                         check_ports, "default ports are [5682, 15682]"),
    "amqp listener moved": (_rabbitmq_conf("0.0.0.0:5682", "0.0.0.0:5672"), check_rabbitmq,
                            "listeners.tcp.default = 0.0.0.0:5672"),
    "statistics every 5 s": (_rabbitmq_conf("collect_statistics_interval = 1000\n", ""),
                             check_rabbitmq, "collect_statistics_interval = None"),
    "config not mounted": (lambda data: data["services"]["rabbitmq"].pop("configs"),
                           check_rabbitmq, "mount exactly one config"),
    "nats without JetStream": (_set("nats", "command", ["-p", "4232", "-m", "8232", "-sd",
                                                         "/data"]), check_nats, "lacks -js"),
    "system nats port": (_set("nats", "command", ["-js", "-sd", "/data", "-p", "4222", "-m",
                                                  "8232"]), check_nats, "-p '4222'"),
    "nats store not kept": (lambda data: data["services"]["nats"].pop("volumes"), check_nats,
                            "is not a volume"),
    "older nats": (_set("nats", "image", "nats:2.10-alpine"), check_nats,
                   "not the native server's series"),
    "system epmd port": (_env("rabbitmq", ERL_EPMD_PORT="4369"), check_rabbitmq,
                         "ERL_EPMD_PORT='4369'"),
    "other artemis": (_set("artemis", "image", "apache/activemq-artemis:2.39.0"), check_artemis,
                      "'2.39.0' is not the native broker's 2.40.0"),
    "artemis on its standard ports": (
        _env("artemis", EXTRA_ARGS="--http-host 0.0.0.0 --relax-jolokia --java-memory 384m "
             "--java-options=-Xms64M"), check_artemis, "--port-offset None"),
    "artemis with 2 GB": (
        _env("artemis", EXTRA_ARGS="--http-host 0.0.0.0 --port-offset 20 --java-memory 2G "
             "--java-options=-Xms64M"), check_artemis, "--java-memory '2G'"),
    "artemis broker.xml drifted": (_config("artemis-broker-xml", "<max-delivery-attempts>4<",
                                           "<max-delivery-attempts>5<"),
                                   check_artemis, "not the native one"),
    "artemis not configured": (lambda data: data["services"]["artemis"].pop("configs"),
                               check_artemis, "mount exactly one config"),
    "collector as another artemis user": (
        _env("collector", FLOWSCOPE_ARTEMIS_URL="amqp://admin:admin@artemis:5692"),
        check_artemis, "FLOWSCOPE_ARTEMIS_URL='amqp://***@artemis:5692' does not reach"),
    "demo services without artemis": (_env("services", FLOWSCOPE_DEMO_ARTEMIS_URL=""),
                                      check_artemis, "FLOWSCOPE_DEMO_ARTEMIS_URL=''"),
    "artemis on the system AMQP port": (_set("artemis", "ports", ["127.0.0.1:5672:5672",
                                                                  "127.0.0.1:8181:8181"]),
                                        check_ports, "default ports are [5692, 8181]"),
}


@pytest.mark.parametrize(("mutate", "check", "expected"), MUTATIONS.values(),
                         ids=list(MUTATIONS))
def test_each_check_reports_drift(compose: Compose, mutate: Callable[[Compose], object],
                                  check: Callable[[Compose], list[str]], expected: str) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = check(broken)
    assert any(expected in problem for problem in problems), \
        f"{check.__name__} missed the drift {expected!r}; it said {problems}"


def test_the_collector_and_the_services_reach_the_compose_rabbitmq_as_its_user(
        compose: Compose) -> None:
    services = services_of(compose)
    broker = compose_env(services["rabbitmq"])
    user, password = broker["RABBITMQ_DEFAULT_USER"], broker["RABBITMQ_DEFAULT_PASS"]
    assert user != "guest"  # refused from other containers
    urls = [compose_env(services["collector"])["FLOWSCOPE_RABBITMQ_URL"],
            compose_env(services["collector"])["FLOWSCOPE_RABBITMQ_MANAGEMENT_URL"],
            compose_env(services["services"])["FLOWSCOPE_DEMO_RABBITMQ_URL"]]
    ports = {str(port) for _, _, port in published(services["rabbitmq"])}
    for url in urls:
        parts = urlsplit(str(url))
        assert (parts.username, parts.password, parts.hostname) == (user, password, "rabbitmq")
        assert str(parts.port) in ports
    assert "rabbitmq" in services["collector"]["depends_on"]
    assert "rabbitmq" in services["services"]["depends_on"]
