"""The demo services' settings, read once from the environment by each service's entry point.

The demo services stand for somebody else's system: they read only their own FLOWSCOPE_DEMO_*
variables, KAFKA_BOOTSTRAP_SERVERS and the standard OTEL_* ones, and import nothing of Flowscope.
An empty rabbitmq_url leaves RabbitMQ out: the file pipeline then runs in Kafka alone; an empty
nats_url leaves NATS out: shipments then end with `shipping.dispatched` on Kafka; an empty
artemis_url leaves ActiveMQ Artemis out: completed orders are then not invoiced.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

DEFAULT_PORTS = {"uploads": 8081, "orders": 8082, "webhook": 8083}
# What a NATS subject cannot hold: the prefix starts every demo subject, so it must not either.
NATS_SUBJECT_FORBIDDEN = re.compile(r"[\s*>]")


class ConfigError(ValueError):
    """One or more FLOWSCOPE_DEMO_* variables are invalid; every one is named."""


@dataclass(frozen=True)
class DemoConfig:
    """Knobs of the demo system; every field is FLOWSCOPE_DEMO_<FIELD> in the environment."""

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    host: str = "127.0.0.1"
    uploads_port: int = DEFAULT_PORTS["uploads"]
    orders_port: int = DEFAULT_PORTS["orders"]
    webhook_port: int = DEFAULT_PORTS["webhook"]
    seed: int = 0
    work_ms: int = 20
    transient_failure: float = 0.10
    permanent_failure: float = 0.02
    callback_failure: float = 0.05
    inventory_failure: float = 0.15
    max_attempts: int = 4
    backoff_base_ms: int = 200
    backoff_max_ms: int = 5_000
    partitions: int = 3
    rabbitmq_url: str = field(default="", repr=False)  # may hold a password
    thumbnail_failure: float = 0.10
    thumbnail_prefetch: int = 4
    nats_url: str = field(default="", repr=False)  # may hold a user and password
    tracking_failure: float = 0.10
    artemis_url: str = field(default="", repr=False)  # may hold a user and password
    billing_failure: float = 0.10

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DemoConfig:
        """Read FLOWSCOPE_DEMO_* and KAFKA_BOOTSTRAP_SERVERS; ConfigError names each bad one."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        problems = []
        if env.get("KAFKA_BOOTSTRAP_SERVERS"):
            values["bootstrap"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        for spec in fields(cls):
            name = f"FLOWSCOPE_DEMO_{spec.name.upper()}"
            raw = env.get(name)
            if raw is None or spec.name == "bootstrap":
                continue
            try:
                values[spec.name] = _parse(spec.name, type(getattr(cls, spec.name)), raw)
            except ValueError as exc:
                problems.append(f"{name}={raw!r}: {exc}")
        if values.get("thumbnail_prefetch") == 0:
            problems.append("FLOWSCOPE_DEMO_THUMBNAIL_PREFETCH='0': must be at least 1")
        for name in ("rabbitmq_url", "artemis_url"):
            url = str(values.get(name, ""))
            if url and not url.lower().startswith(("amqp://", "amqps://")):
                problems.append(f"FLOWSCOPE_DEMO_{name.upper()}: not an amqp:// or amqps:// URL")
        problems += _nats_problems(str(values.get("nats_url", "")),
                                   str(values.get("topic_prefix", "")))
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(**values)  # type: ignore[arg-type]

    def topic(self, name: str) -> str:
        """The full name of a demo topic, RabbitMQ exchange or queue (a prefix keeps test runs
        apart)."""
        return f"{self.topic_prefix}{name}"

    def group(self, name: str) -> str:
        """The full name of a demo consumer group."""
        return f"{self.topic_prefix}{name}"

    def url(self, service: str) -> str:
        """Base URL of one of the demo HTTP services."""
        return f"http://{self.host}:{getattr(self, f'{service}_port')}"


def _nats_problems(url: str, prefix: str) -> list[str]:
    """What keeps the NATS leg from running with this URL and topic prefix (none without NATS)."""
    if not url:
        return []
    problems = []
    if not url.lower().startswith(("nats://", "tls://")):
        problems.append("FLOWSCOPE_DEMO_NATS_URL: not a nats:// or tls:// URL")
    if NATS_SUBJECT_FORBIDDEN.search(prefix) or prefix.startswith(".") or ".." in prefix:
        problems.append(f"FLOWSCOPE_DEMO_TOPIC_PREFIX={prefix!r}: cannot start a NATS subject "
                        "(no whitespace, '*', '>', leading or doubled '.')")
    return problems


def _parse(name: str, kind: type, raw: str) -> object:
    if kind is str:
        return raw
    value = kind(raw)
    if kind is float and not 0.0 <= value <= 1.0:
        raise ValueError("must be a probability between 0 and 1")
    if kind is int and value < 0 and name != "seed":
        raise ValueError("must not be negative")
    return value
