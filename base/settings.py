"""One settings object, built from the environment at each entry point and passed down."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from base.errors import SettingsError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class KafkaSettings:
    """Where the Kafka cluster is, or how to run the native one."""

    external_bootstrap: str | None = None
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 30.0
    version: str = "4.4.0"

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use: the external cluster's, else the native one's."""
        return self.external_bootstrap or f"{LOOPBACK}:{self.port}"


@dataclass(frozen=True)
class JaegerSettings:
    """Where Jaeger is, or how to run the native one."""

    external_otlp_endpoint: str | None = None
    external_query_url: str | None = None
    otlp_http_port: int = 14318
    otlp_grpc_port: int = 14317
    query_port: int = 16686
    query_grpc_port: int = 16685
    health_port: int = 13133
    metrics_port: int = 18888
    max_traces: int = 100_000
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0
    build_timeout_s: float = 3600.0
    module_version: str = "v1.76.0"

    @property
    def external(self) -> bool:
        """True when an existing Jaeger is used and nothing is started."""
        return self.external_query_url is not None

    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL of Jaeger's OTLP/HTTP receiver (append /v1/traces to post spans)."""
        return self.external_otlp_endpoint or f"http://{LOOPBACK}:{self.otlp_http_port}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        """host:port of Jaeger's OTLP/gRPC receiver."""
        return f"{LOOPBACK}:{self.otlp_grpc_port}"

    @property
    def query_url(self) -> str:
        """Base URL of Jaeger's HTTP query API."""
        return self.external_query_url or f"http://{LOOPBACK}:{self.query_port}"

    @property
    def ports(self) -> dict[str, int]:
        """Every port the native Jaeger binds, by role."""
        return {
            "otlp_http": self.otlp_http_port,
            "otlp_grpc": self.otlp_grpc_port,
            "query": self.query_port,
            "query_grpc": self.query_grpc_port,
            "health": self.health_port,
            "metrics": self.metrics_port,
        }


@dataclass(frozen=True)
class RabbitmqSettings:
    """Where the RabbitMQ broker is, or how to run the native one (Debian's rabbitmq-server).

    The native node's ports are the standard ones plus 10, so that it runs beside a system
    RabbitMQ (5672, 15672, 25672, epmd 4369); its user is guest/guest, which RabbitMQ accepts
    from loopback only.
    """

    # These may hold passwords: kept out of repr, shown only through redact_url.
    external_amqp_url: str | None = field(default=None, repr=False)
    external_management_url: str | None = field(default=None, repr=False)
    port: int = 5682
    management_port: int = 15682
    dist_port: int = 25682
    epmd_port: int = 4379
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 60.0
    user: str = "guest"
    password: str = field(default="guest", repr=False)

    @property
    def external(self) -> bool:
        """True when an existing broker is used and nothing is started."""
        return self.external_amqp_url is not None

    @property
    def amqp_url(self) -> str:
        """The AMQP URL clients connect to, credentials included (redact it before showing)."""
        return self.external_amqp_url or \
            f"amqp://{self.user}:{self.password}@{LOOPBACK}:{self.port}/"

    @property
    def management_url(self) -> str:
        """Base URL of the management HTTP API, credentials included (redact it before showing)."""
        return self.external_management_url or \
            f"http://{self.user}:{self.password}@{LOOPBACK}:{self.management_port}"

    @property
    def ports(self) -> dict[str, int]:
        """Every port the native node binds, by role (epmd is the Erlang port mapper)."""
        return {"amqp": self.port, "management": self.management_port,
                "dist": self.dist_port, "epmd": self.epmd_port}


@dataclass(frozen=True)
class NatsSettings:
    """Where the NATS server is, or how to run the native one (nats-server with JetStream,
    built from the Go module proxy).

    The native server's ports are the standard ones plus 10 (client 4222, monitoring 8222), so
    that it runs beside a system NATS.
    """

    # These may hold a user and password: kept out of repr, shown only through redact_url.
    external_url: str | None = field(default=None, repr=False)
    external_monitoring_url: str | None = field(default=None, repr=False)
    port: int = 4232
    monitoring_port: int = 8232
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 30.0
    build_timeout_s: float = 1800.0
    module_version: str = "v2.15.3"
    max_store: str = "1G"  # the JetStream file store's limit

    @property
    def external(self) -> bool:
        """True when an existing server is used and nothing is started."""
        return self.external_url is not None

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        return self.external_url or f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitoring_url(self) -> str:
        """Base URL of the HTTP monitoring endpoint (/varz, /jsz, /healthz)."""
        return self.external_monitoring_url or f"http://{LOOPBACK}:{self.monitoring_port}"

    @property
    def ports(self) -> dict[str, int]:
        """Every port the native server binds, by role."""
        return {"client": self.port, "monitoring": self.monitoring_port}


@dataclass(frozen=True)
class PostgresSettings:
    """Where the PostgreSQL server is, or how to run the native one (Debian's server binaries,
    a cluster of its own under FLOWSCOPE_HOME).

    The native server's port is the standard one plus 10 (5432), so that it runs beside a
    system PostgreSQL. Its role and database are both `flowscope`; the role's password is made
    at the cluster's creation and kept in a file only its owner reads.
    """

    external_url: str | None = field(default=None, repr=False)  # may hold a password
    port: int = 5442
    user: str = "flowscope"
    database: str = "flowscope"
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 60.0

    @property
    def external(self) -> bool:
        """True when an existing server is used and nothing is started."""
        return self.external_url is not None

    @property
    def ports(self) -> dict[str, int]:
        """Every port the native server binds, by role."""
        return {"server": self.port}


@dataclass(frozen=True)
class ArtemisSettings:
    """Where the ActiveMQ Artemis broker is, or how to run the native one (the Apache
    distribution from Maven Central, a broker instance under FLOWSCOPE_HOME).

    The native broker's ports are the standard ones plus 20 (AMQP 5672, CORE 61616, the web
    console with Jolokia 8161), so that it runs beside a system Artemis and the native
    RabbitMQ (5682). Its JVM heap is bounded (heap); login is required.
    """

    # These may hold passwords: kept out of repr, shown only through redact_url.
    external_amqp_url: str | None = field(default=None, repr=False)
    external_management_url: str | None = field(default=None, repr=False)
    port: int = 5692  # AMQP 1.0
    core_port: int = 61636  # CORE, for Artemis' own tools (`artemis queue stat`)
    management_port: int = 8181  # the web server: Jolokia at /console/jolokia
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 60.0
    version: str = "2.40.0"
    heap: str = "384m"  # -Xmx of the broker's JVM
    user: str = "flowscope"
    password: str = field(default="flowscope", repr=False)

    @property
    def external(self) -> bool:
        """True when an existing broker is used and nothing is started."""
        return self.external_amqp_url is not None

    @property
    def amqp_url(self) -> str:
        """The AMQP 1.0 URL clients connect to, credentials included (redact it before
        showing)."""
        return self.external_amqp_url or \
            f"amqp://{self.user}:{self.password}@{LOOPBACK}:{self.port}"

    @property
    def management_url(self) -> str:
        """Base URL of Jolokia (the management API over HTTP), credentials included (redact it
        before showing)."""
        return self.external_management_url or \
            f"http://{self.user}:{self.password}@{LOOPBACK}:{self.management_port}/console/jolokia"

    @property
    def ports(self) -> dict[str, int]:
        """Every port the native broker binds, by role."""
        return {"amqp": self.port, "core": self.core_port, "management": self.management_port}


@dataclass(frozen=True)
class IngestLimits:
    """What one OTLP request may hold, so that no sender can stall ingest for the others.

    Spans beyond max_spans_per_request answer 413; links and attributes beyond their limits
    are not read (and counted): the span is kept, as the OpenTelemetry SDK keeps a span whose
    limits it hit.
    """

    max_spans_per_request: int = 10_000
    max_links_per_span: int = 128
    max_attributes_per_span: int = 128
    max_value_chars: int = 512  # of any text a span gives (names, topics, keys, IDs)
    max_value_depth: int = 4  # of arrays and maps inside an attribute value
    max_inflight_bytes: int = 64 * 1024 * 1024
    body_timeout_s: float = 10.0


# IngestLimits' counts, by the variable that sets each.
LIMIT_VARIABLES = {
    "max_spans_per_request": "FLOWSCOPE_MAX_SPANS_PER_REQUEST",
    "max_links_per_span": "FLOWSCOPE_MAX_LINKS_PER_SPAN",
    "max_attributes_per_span": "FLOWSCOPE_MAX_ATTRIBUTES_PER_SPAN",
    "max_value_chars": "FLOWSCOPE_MAX_VALUE_CHARS",
    "max_value_depth": "FLOWSCOPE_MAX_VALUE_DEPTH",
    "max_inflight_bytes": "FLOWSCOPE_MAX_INFLIGHT_BYTES",
}


@dataclass(frozen=True)
class CollectorSettings:
    """The collector: where spans come in, where they are stored, and how flows are judged."""

    store: Path | str  # a SQLite file, or a PostgreSQL URL (postgresql://...)
    otlp_host: str = LOOPBACK
    otlp_port: int = 4318
    max_body_bytes: int = 16 * 1024 * 1024
    limits: IngestLimits = field(default_factory=IngestLimits)
    spans_topic: str = "otlp_spans"
    completed_topics: tuple[str, ...] = ("*files.notified", "*orders.completed")
    # "DLQ.*": ActiveMQ Artemis' dead-letter queues (DLQ.<address>). The last two: the advisories
    # a NATS server publishes when a JetStream consumer gives a message up (max deliveries
    # reached, or terminated by its subscriber).
    dead_letter_topics: tuple[str, ...] = ("*.dlq", "*.DLQ", "*.DLT", "DLQ", "DLQ.*",
                                           "*dead-letter*", "*deadletter*",
                                           "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.*",
                                           "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.*")
    compensated_topics: tuple[str, ...] = ("*orders.cancelled",)
    stuck_after_s: float = 300.0
    tap: bool = True
    tap_topics: str | None = None  # a regular expression; default: every non-internal topic
    tap_from: str = "earliest"
    lag_interval_s: float = 5.0
    lag_window: int = 10
    bucket_s: int = 10
    raw_retention_s: float = 24 * 3600.0
    aggregate_retention_s: float = 7 * 24 * 3600.0
    # The OTLP/HTTP receiver publishes what it receives to the spans topic (keyed by trace ID)
    # instead of storing it: any collector of the group then takes any request.
    otlp_to_kafka: bool = False


@dataclass(frozen=True)
class DashboardSettings:
    """The dashboard: where it listens, how often pages refresh, where Jaeger's UI is."""

    address: str = LOOPBACK
    port: int = 8501
    refresh_s: float = 5.0
    jaeger_ui_url: str | None = None  # links to traces are hidden when None

    @property
    def url(self) -> str:
        """The address a browser opens."""
        return f"http://{self.address}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """Everything Flowscope reads from its environment, validated once."""

    home: Path
    cache_dir: Path
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    jaeger: JaegerSettings = field(default_factory=JaegerSettings)
    rabbitmq: RabbitmqSettings = field(default_factory=RabbitmqSettings)
    nats: NatsSettings = field(default_factory=NatsSettings)
    artemis: ArtemisSettings = field(default_factory=ArtemisSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    collector: CollectorSettings | None = None
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)

    @property
    def collect(self) -> CollectorSettings:
        """The collector settings (defaults under FLOWSCOPE_HOME when none were read)."""
        return self.collector or CollectorSettings(store=self.home / "flowscope.db")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment; every bad variable is named in one error."""
        reader = _EnvReader(os.environ if env is None else env)
        home = Path(reader.text("FLOWSCOPE_HOME") or Path.home() / ".flowscope").expanduser()
        cache = reader.text("FLOWSCOPE_CACHE_DIR")
        kafka = KafkaSettings(
            external_bootstrap=reader.text("KAFKA_BOOTSTRAP_SERVERS"),
            port=reader.port("FLOWSCOPE_KAFKA_PORT", KafkaSettings.port),
            controller_port=reader.port(
                "FLOWSCOPE_KAFKA_CONTROLLER_PORT", KafkaSettings.controller_port
            ),
            start_timeout_s=reader.seconds(
                "FLOWSCOPE_KAFKA_START_TIMEOUT", KafkaSettings.start_timeout_s
            ),
        )
        jaeger = JaegerSettings(
            external_otlp_endpoint=reader.url("FLOWSCOPE_JAEGER_OTLP_ENDPOINT"),
            external_query_url=reader.url("FLOWSCOPE_JAEGER_QUERY_URL"),
            otlp_http_port=reader.port("FLOWSCOPE_JAEGER_OTLP_HTTP_PORT", 14318),
            otlp_grpc_port=reader.port("FLOWSCOPE_JAEGER_OTLP_GRPC_PORT", 14317),
            query_port=reader.port("FLOWSCOPE_JAEGER_QUERY_PORT", 16686),
            query_grpc_port=reader.port("FLOWSCOPE_JAEGER_QUERY_GRPC_PORT", 16685),
            health_port=reader.port("FLOWSCOPE_JAEGER_HEALTH_PORT", 13133),
            metrics_port=reader.port("FLOWSCOPE_JAEGER_METRICS_PORT", 18888),
            start_timeout_s=reader.seconds(
                "FLOWSCOPE_JAEGER_START_TIMEOUT", JaegerSettings.start_timeout_s
            ),
        )
        if (jaeger.external_otlp_endpoint is None) != (jaeger.external_query_url is None):
            reader.problems.append(
                "FLOWSCOPE_JAEGER_OTLP_ENDPOINT and FLOWSCOPE_JAEGER_QUERY_URL must be set together"
                " to use an existing Jaeger"
            )
        rabbitmq = _rabbitmq_settings(reader)
        nats = _nats_settings(reader)
        artemis = _artemis_settings(reader)
        postgres = PostgresSettings(
            external_url=reader.url("FLOWSCOPE_POSTGRES_URL", ("postgresql://", "postgres://")),
            port=reader.port("FLOWSCOPE_POSTGRES_PORT", PostgresSettings.port),
            start_timeout_s=reader.seconds("FLOWSCOPE_POSTGRES_START_TIMEOUT",
                                           PostgresSettings.start_timeout_s))
        collector = _collector_settings(reader, home)
        dashboard = DashboardSettings(
            address=reader.text("FLOWSCOPE_DASHBOARD_ADDRESS") or DashboardSettings.address,
            port=reader.port("FLOWSCOPE_DASHBOARD_PORT", DashboardSettings.port),
            refresh_s=reader.seconds("FLOWSCOPE_DASHBOARD_REFRESH", DashboardSettings.refresh_s),
            jaeger_ui_url=reader.url("FLOWSCOPE_JAEGER_UI_URL"),
        )
        _check_distinct_ports(reader.problems, kafka, jaeger, rabbitmq, nats, artemis, postgres)
        if reader.problems:
            raise SettingsError(reader.problems)
        return cls(
            home=home,
            cache_dir=Path(cache).expanduser() if cache else home / "cache",
            kafka=kafka,
            jaeger=jaeger,
            rabbitmq=rabbitmq,
            nats=nats,
            artemis=artemis,
            postgres=postgres,
            collector=collector,
            dashboard=dashboard,
        )

    @property
    def kafka_dir(self) -> Path:
        """Run state of the native broker: config, data, logs, pid file."""
        return self.home / "kafka"

    @property
    def jaeger_dir(self) -> Path:
        """Run state of the native Jaeger: config, log, pid file."""
        return self.home / "jaeger"

    @property
    def rabbitmq_dir(self) -> Path:
        """Run state of the native RabbitMQ node: config, data, logs, cookie, pid file."""
        return self.home / "rabbitmq"

    @property
    def nats_dir(self) -> Path:
        """Run state of the native NATS server: config, JetStream storage, log, pid file."""
        return self.home / "nats"

    @property
    def postgres_dir(self) -> Path:
        """Run state of the native PostgreSQL server: the cluster (or, run as root, a link to
        it), the password file, the log, the socket folder."""
        return self.home / "postgres"

    @property
    def artemis_dir(self) -> Path:
        """Run state of the native Artemis broker: the broker instance (etc, data, log) and the
        pid file."""
        return self.home / "artemis"


def _rabbitmq_settings(reader: _EnvReader) -> RabbitmqSettings:
    defaults = RabbitmqSettings()
    amqp = reader.url("FLOWSCOPE_RABBITMQ_URL", ("amqp://", "amqps://"))
    management = reader.url("FLOWSCOPE_RABBITMQ_MANAGEMENT_URL")
    if (amqp is None) != (management is None) and not reader.problems_with(
            "FLOWSCOPE_RABBITMQ_URL", "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL"):
        given, missing = (("FLOWSCOPE_RABBITMQ_URL", "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL")
                          if management is None else
                          ("FLOWSCOPE_RABBITMQ_MANAGEMENT_URL", "FLOWSCOPE_RABBITMQ_URL"))
        reader.problems.append(
            f"{given} is set but {missing} is not: to use an existing RabbitMQ set both (the "
            "AMQP URL and the management API's http://user:password@host:15672); to run the "
            "native node set neither")
    return RabbitmqSettings(
        external_amqp_url=amqp,
        external_management_url=management,
        port=reader.port("FLOWSCOPE_RABBITMQ_PORT", defaults.port),
        management_port=reader.port("FLOWSCOPE_RABBITMQ_MANAGEMENT_PORT",
                                    defaults.management_port),
        dist_port=reader.port("FLOWSCOPE_RABBITMQ_DIST_PORT", defaults.dist_port),
        epmd_port=reader.port("FLOWSCOPE_RABBITMQ_EPMD_PORT", defaults.epmd_port),
        start_timeout_s=reader.seconds("FLOWSCOPE_RABBITMQ_START_TIMEOUT",
                                       defaults.start_timeout_s),
    )


def _nats_settings(reader: _EnvReader) -> NatsSettings:
    defaults = NatsSettings()
    url = reader.url("FLOWSCOPE_NATS_URL", ("nats://", "tls://"))
    monitoring = reader.url("FLOWSCOPE_NATS_MONITORING_URL")
    if url is None and monitoring is not None and not reader.problems_with(
            "FLOWSCOPE_NATS_MONITORING_URL"):
        reader.problems.append(
            "FLOWSCOPE_NATS_MONITORING_URL is set but FLOWSCOPE_NATS_URL is not: to use an "
            "existing NATS server set FLOWSCOPE_NATS_URL (and its monitoring endpoint, "
            "http://host:8222, to poll JetStream backlog); to run the native one set neither")
    return NatsSettings(
        external_url=url,
        external_monitoring_url=monitoring or (_monitoring_of(url) if url else None),
        port=reader.port("FLOWSCOPE_NATS_PORT", defaults.port),
        monitoring_port=reader.port("FLOWSCOPE_NATS_MONITORING_PORT", defaults.monitoring_port),
        start_timeout_s=reader.seconds("FLOWSCOPE_NATS_START_TIMEOUT", defaults.start_timeout_s),
    )


def _artemis_settings(reader: _EnvReader) -> ArtemisSettings:
    defaults = ArtemisSettings()
    amqp = reader.url("FLOWSCOPE_ARTEMIS_URL", ("amqp://", "amqps://"))
    management = reader.url("FLOWSCOPE_ARTEMIS_MANAGEMENT_URL")
    if (amqp is None) != (management is None) and not reader.problems_with(
            "FLOWSCOPE_ARTEMIS_URL", "FLOWSCOPE_ARTEMIS_MANAGEMENT_URL"):
        given, missing = (("FLOWSCOPE_ARTEMIS_URL", "FLOWSCOPE_ARTEMIS_MANAGEMENT_URL")
                          if management is None else
                          ("FLOWSCOPE_ARTEMIS_MANAGEMENT_URL", "FLOWSCOPE_ARTEMIS_URL"))
        reader.problems.append(
            f"{given} is set but {missing} is not: to use an existing Artemis broker set both "
            "(the AMQP URL and Jolokia's http://user:password@host:8161/console/jolokia); to "
            "run the native broker set neither")
    return ArtemisSettings(
        external_amqp_url=amqp,
        external_management_url=management,
        port=reader.port("FLOWSCOPE_ARTEMIS_PORT", defaults.port),
        core_port=reader.port("FLOWSCOPE_ARTEMIS_CORE_PORT", defaults.core_port),
        management_port=reader.port("FLOWSCOPE_ARTEMIS_MANAGEMENT_PORT",
                                    defaults.management_port),
        start_timeout_s=reader.seconds("FLOWSCOPE_ARTEMIS_START_TIMEOUT",
                                       defaults.start_timeout_s),
    )


def _monitoring_of(url: str) -> str:
    """The monitoring endpoint a NATS server has by default: its host, port 8222."""
    host = urlsplit(url).hostname or LOOPBACK
    return f"http://{f'[{host}]' if ':' in host else host}:8222"


def _collector_settings(reader: _EnvReader, home: Path) -> CollectorSettings:
    defaults = CollectorSettings(store=home / "flowscope.db")
    limits = defaults.limits
    host, port = defaults.otlp_host, defaults.otlp_port
    address = reader.text("FLOWSCOPE_OTLP_ADDRESS")
    if address is not None:
        host, _, port_text = address.rpartition(":")
        if not host or not _digits(port_text, 5) or not 0 < int(port_text) < 65536:
            reader.problems.append(f"FLOWSCOPE_OTLP_ADDRESS={address!r} is not host:port")
            host, port_text = defaults.otlp_host, str(defaults.otlp_port)
        port = int(port_text)
    store = reader.text("FLOWSCOPE_STORE")
    return CollectorSettings(
        store=(store if store.startswith(POSTGRES_SCHEMES) else Path(store).expanduser())
        if store else defaults.store,
        otlp_host=host, otlp_port=port,
        max_body_bytes=reader.count("FLOWSCOPE_MAX_BODY_BYTES", defaults.max_body_bytes),
        limits=IngestLimits(
            **{name: reader.count(variable, getattr(limits, name))
               for name, variable in LIMIT_VARIABLES.items()},
            body_timeout_s=reader.seconds("FLOWSCOPE_BODY_TIMEOUT", limits.body_timeout_s)),
        spans_topic=reader.text("FLOWSCOPE_SPANS_TOPIC") or defaults.spans_topic,
        completed_topics=reader.patterns("FLOWSCOPE_FLOW_COMPLETED", defaults.completed_topics),
        dead_letter_topics=reader.patterns("FLOWSCOPE_FLOW_DEAD_LETTER",
                                           defaults.dead_letter_topics),
        compensated_topics=reader.patterns("FLOWSCOPE_FLOW_COMPENSATED",
                                           defaults.compensated_topics),
        stuck_after_s=reader.seconds("FLOWSCOPE_FLOW_STUCK_AFTER", defaults.stuck_after_s),
        lag_interval_s=reader.seconds("FLOWSCOPE_LAG_INTERVAL", defaults.lag_interval_s),
        tap=reader.choice("FLOWSCOPE_TAP", ("on", "off"), "on") == "on",
        tap_topics=reader.text("FLOWSCOPE_TAP_TOPICS"),
        tap_from=reader.choice("FLOWSCOPE_TAP_FROM", ("earliest", "latest"), defaults.tap_from),
        raw_retention_s=reader.seconds("FLOWSCOPE_RETENTION_RAW", defaults.raw_retention_s),
        aggregate_retention_s=reader.seconds("FLOWSCOPE_RETENTION_AGGREGATES",
                                             defaults.aggregate_retention_s),
        otlp_to_kafka=reader.choice("FLOWSCOPE_OTLP_TO_KAFKA", ("on", "off"), "off") == "on",
    )


def _check_distinct_ports(problems: list[str], kafka: KafkaSettings, jaeger: JaegerSettings,
                          *brokers: RabbitmqSettings | NatsSettings | ArtemisSettings
                          | PostgresSettings) -> None:
    ports: dict[int, str] = {}
    named = {"kafka": kafka.port, "kafka controller": kafka.controller_port}
    named |= {f"jaeger {role}": port for role, port in jaeger.ports.items()}
    for broker in brokers:
        system = type(broker).__name__.removesuffix("Settings").lower()
        named |= {f"{system} {role}": port for role, port in broker.ports.items()}
    for role, port in named.items():
        if port in ports:
            problems.append(f"port {port} is given to both {ports[port]} and {role}")
        ports[port] = role


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def store_label(store: Path | str) -> str:
    """Where the store is, fit to show: a file's path, a URL without its credentials."""
    return redact_url(store) if isinstance(store, str) else str(store)


def redact_url(url: str) -> str:
    """A URL fit for a log line: a user and password in it are replaced by '***'."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _digits(text: str, most: int) -> bool:
    """True for 1 to `most` ASCII digits ('²'.isdigit() is True, but int('²') raises)."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


class _EnvReader:
    """Reads typed values and collects every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def port(self, name: str, default: int) -> int:
        value = self.text(name)
        if value is None:
            return default
        if not _digits(value, 5) or not 1 <= int(value) <= 65535:
            self.problems.append(f"{name}={value!r} is not a TCP port (1-65535)")
            return default
        return int(value)

    def seconds(self, name: str, default: float) -> float:
        value = self.text(name)
        if value is None:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        # nan and inf pass a `<= 0` test: a nan interval would make a loop spin
        if not math.isfinite(seconds) or seconds <= 0:
            self.problems.append(f"{name}={value!r} is not a positive number of seconds")
            return default
        return seconds

    def count(self, name: str, default: int) -> int:
        """A positive whole number (bytes, spans, links...), at most 2**40."""
        value = self.text(name)
        if value is None:
            return default
        if not _digits(value, 13) or not 0 < int(value) <= 2**40:
            self.problems.append(f"{name}={value!r} is not a positive whole number")
            return default
        return int(value)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() not in options:
            self.problems.append(f"{name}={value!r} is not one of {', '.join(options)}")
            return default
        return value.lower()

    def patterns(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.text(name)
        if value is None:
            return default
        return tuple(p.strip() for p in value.split(",") if p.strip())

    def url(self, name: str, schemes: tuple[str, ...] = ("http://", "https://")
            ) -> str | None:
        """A URL of one of the schemes, with a host; an http(s) one without its trailing '/'
        (an AMQP URL keeps it: its path is the virtual host)."""
        value = self.text(name)
        if value is None:
            return None
        try:
            host, shown = urlsplit(value).hostname, redact_url(value)
        except ValueError:  # e.g. an unclosed [ipv6
            host, shown = None, value
        if not value.lower().startswith(schemes) or not host:
            self.problems.append(f"{name}={shown!r} is not an {' or '.join(schemes)} URL")
            return None
        return value.rstrip("/") if schemes[0].startswith("http") else value

    def problems_with(self, *names: str) -> bool:
        """True when a problem was already recorded for one of these variables."""
        return any(problem.startswith(f"{name}=") for problem in self.problems
                   for name in names)
