"""Run the demo services, one process each, and keep them running until told to stop.

One process per service, as in a real deployment: each has its own OpenTelemetry service.name,
its own consumer groups and its own log, and can be killed and restarted alone (which is how
the demo shows that a crash replays messages instead of losing them). A service that dies is
restarted after a short backoff.

The RabbitMQ leg (thumbnailer, indexer, auditor) runs only when RabbitMQ is configured:
FLOWSCOPE_DEMO_RABBITMQ_URL when it is set (set empty, it turns the leg off), else the external
broker (FLOWSCOPE_RABBITMQ_URL) or the native node when it runs (`flowscope rabbitmq start`).
Without it the file pipeline runs in Kafka alone, as it always did. Likewise the NATS leg
(tracking, portal) runs only when NATS is configured: FLOWSCOPE_DEMO_NATS_URL when it is set
(set empty, it turns the leg off), else the external server (FLOWSCOPE_NATS_URL) or the native
one when it runs (`flowscope nats start`); shipping then also publishes to JetStream. And the
Artemis leg (billing, ledger, mailer) runs only when Artemis is configured:
FLOWSCOPE_DEMO_ARTEMIS_URL when it is set (set empty, it turns the leg off), else the external
broker (FLOWSCOPE_ARTEMIS_URL) or the native one when it runs (`flowscope artemis start`);
orders then also sends an invoice request for every completed order.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from base.errors import FlowscopeError
from base.settings import Settings, redact_url
from demo_services.config import ConfigError, DemoConfig
from demo_services.runtime import READY_FILE_VARIABLE
from demo_services.topics import ensure_topics
from flowscope.infra import artemis, process, rabbitmq
from flowscope.infra import nats as nats_server

COMPONENT = "services"
SERVICES = ("webhook", "uploads", "processor", "notifier", "orders", "payments", "inventory",
            "shipping", "thumbnailer", "indexer", "auditor", "tracking", "portal", "billing",
            "ledger", "mailer")
RABBITMQ_SERVICES = ("thumbnailer", "indexer", "auditor")
RABBITMQ_URL_VARIABLE = "FLOWSCOPE_DEMO_RABBITMQ_URL"
NATS_SERVICES = ("tracking", "portal")
NATS_URL_VARIABLE = "FLOWSCOPE_DEMO_NATS_URL"
ARTEMIS_SERVICES = ("billing", "ledger", "mailer")
ARTEMIS_URL_VARIABLE = "FLOWSCOPE_DEMO_ARTEMIS_URL"
HTTP_SERVICES = ("webhook", "uploads", "orders")
# Core NATS, and an Artemis multicast address whose subscriber has no queue yet, keep nothing
# for a subscriber that is not there: the stack is ready only once these have subscribed (each
# touches the file named by READY_FILE_VARIABLE).
SUBSCRIBERS = ("portal", "ledger", "mailer")


@dataclass
class Child:
    """One service process and how often it was restarted."""

    name: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0


@dataclass
class Supervisor:
    """Starts each service as `python -m demo_services.<name>` and restarts those that die."""

    settings: Settings
    config: DemoConfig
    names: tuple[str, ...] = SERVICES
    children: dict[str, Child] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        """Where each service's log goes."""
        return self.settings.home / "services"

    @property
    def state_file(self) -> Path:
        """The pid of every running service, for scripts and tests."""
        return self.log_dir / "services.json"

    def environment(self, name: str) -> dict[str, str]:
        """The environment of one service: the cluster, and its own service.name."""
        env = dict(os.environ)
        env.update(KAFKA_BOOTSTRAP_SERVERS=self.config.bootstrap, OTEL_SERVICE_NAME=name,
                   PYTHONUNBUFFERED="1")
        env[RABBITMQ_URL_VARIABLE] = self.config.rabbitmq_url
        env[NATS_URL_VARIABLE] = self.config.nats_url
        env[READY_FILE_VARIABLE] = str(self.ready_file(name))
        env[ARTEMIS_URL_VARIABLE] = self.config.artemis_url
        # The SDK's default of 5 s between exports would make every live view 5 s late.
        env.setdefault("OTEL_BSP_SCHEDULE_DELAY", "500")
        return env

    def ready_file(self, name: str) -> Path:
        """The file a subscriber touches once it listens."""
        return self.log_dir / f"{name}.ready"

    def start_child(self, name: str) -> None:
        """Start (or restart) one service."""
        child = self.children.setdefault(name, Child(name))
        self.ready_file(name).unlink(missing_ok=True)
        child.proc = process.spawn([sys.executable, "-m", f"demo_services.{name}"],
                                   self.log_dir / f"{name}.log", cwd=self.log_dir,
                                   env=self.environment(name))
        self.write_state()

    def write_state(self) -> None:
        """Record the pid and log of every service."""
        state = {name: {"pid": c.proc.pid if c.proc else None, "restarts": c.restarts,
                        "log": str(self.log_dir / f"{name}.log")}
                 for name, c in self.children.items()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    def start(self) -> None:
        """Start every service."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            self.start_child(name)

    def check(self) -> list[str]:
        """Restart services that died (after a backoff); the lines to report."""
        lines = []
        now = time.monotonic()
        for name, child in self.children.items():
            if child.proc is None or child.proc.poll() is None:
                continue
            if child.next_start == 0.0:
                child.next_start = now + min(10.0, 0.5 * 2 ** min(child.restarts, 5))
                lines.append(f"{name} exited with code {child.proc.returncode}; restarting "
                             f"(log: {self.log_dir / f'{name}.log'})")
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                self.start_child(name)
        return lines

    def wait_ready(self, timeout_s: float = 60.0, cancelled: threading.Event | None = None
                   ) -> bool:
        """Wait until every HTTP service answers /health and every subscriber of SUBSCRIBERS
        listens (False when cancelled first); a clear error if one does not."""
        cancelled = cancelled or threading.Event()
        urls = {name: f"{self.config.url(name)}/health" for name in HTTP_SERVICES}
        waits: list[tuple[str, Callable[[], bool], str]] = [
            (name, functools.partial(_http_ok, urls[name]), f"answer {urls[name]}")
            for name in HTTP_SERVICES if name in self.names]
        waits += [(name, self.ready_file(name).exists, "subscribe")
                  for name in SUBSCRIBERS if name in self.names]
        for name, ready, what in waits:
            child = self.children[name]
            ok = process.wait_until(ready, timeout_s=timeout_s,
                                    alive=lambda c=child: c.proc is not None
                                    and c.proc.poll() is None and not cancelled.is_set())
            if cancelled.is_set():
                return False
            if not ok:
                log = self.log_dir / f"{name}.log"
                raise FlowscopeError(COMPONENT, f"{name} did not {what} within {timeout_s:g}s",
                                     log=log, log_tail=process.log_tail(log))
        return True

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every service, wait, then SIGKILL what is left."""
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children.values():
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=10)
        self.state_file.unlink(missing_ok=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def demo_config(settings: Settings) -> DemoConfig:
    """The demo services' configuration, pointed at Flowscope's cluster."""
    try:
        config = DemoConfig.from_env()
    except ConfigError as exc:
        raise FlowscopeError(COMPONENT, str(exc)) from None
    return replace(config, bootstrap=settings.kafka.bootstrap)


def rabbitmq_url(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The AMQP URL the demo services use: FLOWSCOPE_DEMO_RABBITMQ_URL when set (empty: none),
    else the external broker's, else the native node's while it runs; '' for none."""
    env = os.environ if env is None else env
    if RABBITMQ_URL_VARIABLE in env:
        return env[RABBITMQ_URL_VARIABLE]
    if settings.rabbitmq.external:
        return settings.rabbitmq.amqp_url
    current = rabbitmq.status(settings)
    return current.amqp_url if current.running else ""


def nats_url(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The NATS URL the demo services use: FLOWSCOPE_DEMO_NATS_URL when set (empty: none),
    else the external server's, else the native server's while it runs; '' for none."""
    env = os.environ if env is None else env
    if NATS_URL_VARIABLE in env:
        return env[NATS_URL_VARIABLE]
    if settings.nats.external:
        return settings.nats.url
    current = nats_server.status(settings)
    return current.url if current.running else ""


def artemis_url(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The AMQP 1.0 URL the demo services use for Artemis: FLOWSCOPE_DEMO_ARTEMIS_URL when set
    (empty: none), else the external broker's, else the native broker's while it runs; '' for
    none."""
    env = os.environ if env is None else env
    if ARTEMIS_URL_VARIABLE in env:
        return env[ARTEMIS_URL_VARIABLE]
    if settings.artemis.external:
        return settings.artemis.amqp_url
    current = artemis.status(settings)
    return current.amqp_url if current.running else ""


def services_to_run(names: tuple[str, ...], config: DemoConfig) -> tuple[str, ...]:
    """names, less the RabbitMQ leg when RabbitMQ is not configured, the NATS leg when NATS is
    not and the Artemis leg when Artemis is not; an error when names were chosen (not the
    default) and include one left out."""
    chosen = names != SERVICES
    legs = [(RABBITMQ_SERVICES, config.rabbitmq_url, "consume RabbitMQ",
             f"`flowscope rabbitmq start`, or set FLOWSCOPE_RABBITMQ_URL or "
             f"{RABBITMQ_URL_VARIABLE}"),
            (NATS_SERVICES, config.nats_url, "consume NATS",
             f"`flowscope nats start`, or set FLOWSCOPE_NATS_URL or {NATS_URL_VARIABLE}"),
            (ARTEMIS_SERVICES, config.artemis_url, "consume Artemis",
             f"`flowscope artemis start`, or set FLOWSCOPE_ARTEMIS_URL or "
             f"{ARTEMIS_URL_VARIABLE}")]
    for leg, url, what, hint in legs:
        if url:
            continue
        asked = [name for name in names if name in leg]
        if asked and chosen:
            raise FlowscopeError(COMPONENT, f"{', '.join(asked)} {what}, which is not "
                                 "configured", hint=hint)
        names = tuple(name for name in names if name not in leg)
    return names


def run_services(settings: Settings, names: tuple[str, ...] = SERVICES) -> int:
    """`flowscope services`: create the topics, run the services until SIGINT/SIGTERM."""
    config = replace(demo_config(settings), rabbitmq_url=rabbitmq_url(settings),
                     nats_url=nats_url(settings), artemis_url=artemis_url(settings))
    names = services_to_run(names, config)
    progress = process.Progress(COMPONENT)
    try:
        created = asyncio.run(asyncio.wait_for(ensure_topics(config), 60))
    except Exception as exc:
        raise FlowscopeError(COMPONENT, f"cannot create the demo topics on {config.bootstrap}: "
                             f"{type(exc).__name__} {exc}",
                             hint="is Kafka running? `flowscope kafka start`") from None
    legs = {"RabbitMQ": config.rabbitmq_url, "NATS": config.nats_url,
            "Artemis": config.artemis_url}
    progress.say(f"{len(created)} topics ready on {config.bootstrap}; " + "; ".join(
        f"{leg}: {redact_url(url) if url else 'off'}" for leg, url in legs.items()))
    supervisor = Supervisor(settings, config, names)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    supervisor.start()
    try:
        if supervisor.wait_ready(cancelled=stop):
            progress.say(f"ready: {', '.join(names)}; uploads {config.url('uploads')}/files, "
                         f"orders {config.url('orders')}/orders (logs: {supervisor.log_dir})")
        while not stop.wait(0.5):
            for line in supervisor.check():
                progress.say(line)
    finally:
        progress.say("stopping the services")
        supervisor.stop()
        progress.say("stopped")
    return 0
