"""`flowscope demo`: Kafka, Jaeger, RabbitMQ, NATS, ActiveMQ Artemis, the collector, the demo
services, the load generator and the dashboard from one command, stopped together on Ctrl-C or
SIGTERM.

Every part is a child process with its own log in FLOWSCOPE_HOME/demo. The collector writes
the default store, so `flowscope inspect` in another terminal sees the demo's data. A Kafka,
Jaeger, RabbitMQ, NATS or Artemis that was already running (or is external) is used and left
running; --no-rabbitmq leaves RabbitMQ out, and the file pipeline then runs in Kafka alone;
--no-nats leaves NATS out, and shipments are not tracked; --no-artemis leaves Artemis out, and
completed orders are not invoiced.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType

from base.errors import FlowscopeError
from base.settings import LOOPBACK, Settings, redact_url, store_label
from demo_services.config import DemoConfig
from demo_services.topics import ensure_topics
from flowscope.infra import artemis, jaeger, kafka, nats, postgres, process, rabbitmq
from flowscope.scenario import (
    DemoOptions,
    Step,
    plan_steps,
    steady_chunk,
)
from flowscope.services import (
    ARTEMIS_URL_VARIABLE,
    NATS_URL_VARIABLE,
    RABBITMQ_URL_VARIABLE,
    Supervisor,
    demo_config,
)

COMPONENT = "demo"
SETTLE_S = 3.0
HEALTH_EVERY_S = 2.0  # how often the collector's /health is read while the demo runs
LOCK_MARKER = "flowscope"
READY_TIMEOUT_S = {"collect": 60.0, "services": 120.0, "dashboard": 60.0}
STOP_TIMEOUT_S = {"loadgen": 5.0, "dashboard": 10.0, "services": 30.0, "collect": 30.0}


def child_environment(settings: Settings, bootstrap: str,
                      jaeger_status: jaeger.JaegerStatus | None, amqp_url: str = "",
                      nats_url: str = "", *, artemis_url: str = "") -> dict[str, str]:
    """The environment of every child: this cluster, store and collector; Jaeger when used;
    the RabbitMQ, the NATS and the Artemis the services use (each set empty when none, so
    that they look for no other)."""
    collector = settings.collect
    env = dict(os.environ)
    env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, FLOWSCOPE_HOME=str(settings.home),
               FLOWSCOPE_STORE=str(collector.store), PYTHONUNBUFFERED="1",
               FLOWSCOPE_OTLP_ADDRESS=f"{collector.otlp_host}:{collector.otlp_port}",
               OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{collector.otlp_host}:{collector.otlp_port}")
    env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)  # it would bypass the collector
    env[RABBITMQ_URL_VARIABLE] = amqp_url
    env[NATS_URL_VARIABLE] = nats_url
    env[ARTEMIS_URL_VARIABLE] = artemis_url
    # Lag status is judged over the last 10 polls: at 1 s a paused group shows as stalled
    # within the incident scenario's pause, not 50 s later as at the default 5 s.
    env.setdefault("FLOWSCOPE_LAG_INTERVAL", "1")
    if jaeger_status is None:
        env.pop("FLOWSCOPE_JAEGER_OTLP_ENDPOINT", None)
        env.pop("FLOWSCOPE_JAEGER_QUERY_URL", None)
        return env
    env.update(FLOWSCOPE_JAEGER_OTLP_ENDPOINT=jaeger_status.otlp_http,
               FLOWSCOPE_JAEGER_QUERY_URL=jaeger_status.query)
    if settings.dashboard.jaeger_ui_url is None:
        env["FLOWSCOPE_JAEGER_UI_URL"] = jaeger_status.query
    return env


def acquire_lock(lock: Path, endpoints: dict[str, object]) -> process.ProcessRecord:
    """Take the demo's lock file, or say which live demo holds it (stale files are replaced)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    stop_leftovers(lock)
    record = process.ProcessRecord(os.getpid(), LOCK_MARKER, time.time(), endpoints)
    tmp = lock.with_name(f"demo.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record)))
    try:
        for _ in range(3):
            with suppress(FileExistsError):
                os.link(tmp, lock)  # atomic: fails when the file exists
                return record
            other = process.running_record(lock)  # removes a stale lock file
            if other is not None:
                since = time.strftime("%H:%M:%S", time.localtime(other.started_at))
                raise FlowscopeError(
                    COMPONENT, f"another `flowscope demo` is already running (pid {other.pid}, "
                    f"since {since}, lock {lock})", log=lock.parent,
                    hint=f"stop it first (Ctrl-C in its terminal, or kill {other.pid}), or "
                    "give this one another FLOWSCOPE_HOME")
            if process.ProcessRecord.read(lock) is None:
                lock.unlink(missing_ok=True)
        raise FlowscopeError(COMPONENT, f"cannot take the lock file {lock}")
    finally:
        tmp.unlink(missing_ok=True)


def stop_leftovers(lock: Path) -> None:
    """Stop the children a demo killed with SIGKILL left running (its lock file names them)."""
    stale = process.ProcessRecord.read(lock)
    if stale is None or process.pid_alive(stale.pid):
        return
    progress = process.Progress(COMPONENT)
    children = stale.endpoints.get("children", []) if isinstance(stale.endpoints, dict) else []
    for name, pid, log in children:
        if not (process.pid_alive(int(pid))
                and any("flowscope" in part for part in process.cmdline(int(pid)))):
            continue
        progress.say(f"stopping {name} (pid {pid}) left running by a demo that was killed "
                     f"(log: {log})")
        for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), sig)
            if process.wait_until(lambda p=int(pid): not process.pid_alive(p),
                                  timeout_s=wait_s, interval_s=0.1):
                break


def release_lock(lock: Path) -> None:
    """Remove the lock file if this process holds it."""
    held = process.ProcessRecord.read(lock)
    if held is not None and held.pid == os.getpid():
        lock.unlink(missing_ok=True)


def http_says(url: str, answer: str) -> bool:
    """True when GET url answers 200 with this body."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200 and response.read().decode().strip() == answer)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def collector_health(url: str) -> dict[str, tuple[str, str | None]] | None:
    """Each component's (state, reason) from the collector's /health; None when it does not
    answer (its own exit is reported by the child check)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:  # 503 while a component is down: the body says
        try:
            body = json.load(error)
        except ValueError:
            return None
    except (urllib.error.URLError, OSError, ValueError):
        return None
    components = body.get("components") if isinstance(body, dict) else None
    if not isinstance(components, dict):
        return None
    return {str(name): (str(c.get("state")), c.get("reason"))
            for name, c in components.items() if isinstance(c, dict)}


def health_changes(before: dict[str, tuple[str, str | None]],
                   now: dict[str, tuple[str, str | None]]) -> list[str]:
    """Lines for the components that went down or degraded, or came back, since before."""
    lines = []
    for name, (state, reason) in sorted(now.items()):
        was = before.get(name, ("ok", None))[0]
        if state in ("down", "degraded") and state != was:
            lines.append(f"collector: {name} is {state}: {reason or 'no reason given'}")
        elif state == "ok" and was in ("down", "degraded"):
            lines.append(f"collector: {name} is ok again")
    return lines


def log_has(log: Path, text: str) -> bool:
    """True when the log contains text."""
    try:
        return text in log.read_text(errors="replace")
    except OSError:
        return False


@dataclass
class Child:
    """A process the demo started."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    reported: bool = False


class Demo:
    """One run of `flowscope demo`: set-up, traffic, and the stop of all it started."""

    def __init__(self, settings: Settings, options: DemoOptions) -> None:
        self.settings = settings
        self.options = options
        self.dir = settings.home / "demo"
        self.lock = self.dir / "demo.pid"
        self.progress = process.Progress(COMPONENT)
        self.stopping = threading.Event()
        self.raise_on_signal = False
        self.children: list[Child] = []
        self.started_infra: list[str] = []
        self.urls: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.record: process.ProcessRecord | None = None
        self.service_state: Path | None = None
        self.jaeger_builder: threading.Thread | None = None

    def run(self) -> int:
        """Everything, from the lock to the last process stopped; the exit code."""
        self.record = acquire_lock(self.lock, {"children": []})
        handlers = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                self._set_up()
            except KeyboardInterrupt:
                self.progress.say("interrupted during set-up")
                return 130
            self._announce()
            self._drive()
            return 0
        finally:
            self.raise_on_signal = False
            self._stop_all()
            release_lock(self.lock)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self.stopping.set()
        if self.raise_on_signal:
            self.raise_on_signal = False
            raise KeyboardInterrupt
        self.progress.say(f"{signal.Signals(signum).name}: stopping everything the demo started")

    @contextmanager
    def _interruptible(self) -> Iterator[None]:
        """Let a signal interrupt a long step of another module (a build, a broker start)."""
        if self.stopping.is_set():
            raise KeyboardInterrupt
        self.raise_on_signal = True
        try:
            yield
        finally:
            self.raise_on_signal = False

    def _set_up(self) -> None:
        for old in self.dir.glob("*.log"):
            old.unlink()
        config = demo_config(self.settings)
        self._check_ports(config)
        if self.options.store == "postgresql":
            url = self._start_postgres()
            self.settings = replace(self.settings,
                                    collector=replace(self.settings.collect, store=url))
        bootstrap = self._start_kafka()
        jaeger_status = None
        if self.options.jaeger and not jaeger.installed(self.settings):
            jaeger_status = self._build_jaeger_meanwhile()
        elif self.options.jaeger:
            jaeger_status = self._start_jaeger()
        rabbitmq_status = self._start_rabbitmq() if self.options.rabbitmq else None
        config = replace(config, bootstrap=bootstrap)
        self._create_topics(config)
        nats_status = self._start_nats() if self.options.nats else None
        artemis_status = self._start_artemis() if self.options.artemis else None
        self.env = child_environment(self.settings, bootstrap, jaeger_status,
                                     rabbitmq_status.amqp_url if rabbitmq_status else "",
                                     nats_status.url if nats_status else "",
                                     artemis_url=artemis_status.amqp_url if artemis_status
                                     else "")
        self.service_state = Supervisor(self.settings, config).state_file
        brokers = (([] if rabbitmq_status else ["--no-rabbitmq"])
                   + ([] if nats_status else ["--no-nats"])
                   + ([] if artemis_status else ["--no-artemis"]))
        collectors = self.options.collectors
        if collectors > 1:  # the services' receiver publishes to the spans topic for all
            self.env["FLOWSCOPE_OTLP_TO_KAFKA"] = "on"
        self._start("collect", ["collect", *brokers], lambda log: log_has(log, "collect: ready"))
        for index in range(2, collectors + 1):
            address = f"{LOOPBACK}:{self.settings.collect.otlp_port + index - 1}"
            self._start(f"collect-{index}", ["collect", "--otlp-address", address, *brokers],
                        lambda log: log_has(log, "collect: ready"))
        self._start("services", ["services"], lambda log: log_has(log, "] ready: "))
        collector = self.settings.collect
        self.urls["collector"] = f"http://{collector.otlp_host}:{collector.otlp_port}/v1/traces"
        if jaeger_status is not None:
            self.urls["jaeger"] = f"{jaeger_status.query}  (query API: /api/services, /api/traces)"
        if rabbitmq_status is not None:
            self.urls["rabbitmq"] = (f"{redact_url(rabbitmq_status.management_url)}  "
                                     f"(management; AMQP {redact_url(rabbitmq_status.amqp_url)})")
        if nats_status is not None:
            self.urls["nats"] = (f"{redact_url(nats_status.url)}  (monitoring "
                                 f"{redact_url(nats_status.monitoring_url)}/jsz)")
        if artemis_status is not None:
            self.urls["artemis"] = (f"{redact_url(artemis_status.amqp_url)}  (Jolokia "
                                    f"{redact_url(artemis_status.management_url)})")
        if self.options.dashboard:
            self._start_dashboard()

    def _check_ports(self, config: DemoConfig) -> None:
        collector = self.settings.collect
        process.check_ports_free("collect", {"otlp": collector.otlp_port},
                                 {"otlp": "FLOWSCOPE_OTLP_ADDRESS"})
        for index in range(2, self.options.collectors + 1):
            process.check_ports_free(f"collect-{index}",
                                     {"otlp": collector.otlp_port + index - 1},
                                     {"otlp": "FLOWSCOPE_OTLP_ADDRESS (the next ports)"})
        names = ("uploads", "orders", "webhook")
        process.check_ports_free("services", {n: getattr(config, f"{n}_port") for n in names},
                                 {n: f"FLOWSCOPE_DEMO_{n.upper()}_PORT" for n in names})
        if self.options.dashboard:
            process.check_ports_free("dashboard", {"http": self.dashboard_port},
                                     {"http": "--dashboard-port or FLOWSCOPE_DASHBOARD_PORT"})

    @property
    def dashboard_port(self) -> int:
        """The dashboard's port: --dashboard-port, else the settings'."""
        return self.options.dashboard_port or self.settings.dashboard.port

    def _start_kafka(self) -> str:
        if self.settings.kafka.external_bootstrap:
            self.progress.say(f"kafka: the cluster at {self.settings.kafka.bootstrap} "
                              "(KAFKA_BOOTSTRAP_SERVERS)")
        elif kafka.status(self.settings).pid is not None:
            self.progress.say("kafka: the broker already running; it stays running")
        else:
            self.started_infra.append("kafka")
        with self._interruptible():
            return kafka.start(self.settings, process.Progress("kafka")).bootstrap

    def _start_postgres(self) -> str:
        """The shared store's server: FLOWSCOPE_POSTGRES_URL's, the native one running, or
        a native one started (and stopped at the end); its URL."""
        if self.settings.postgres.external:
            self.progress.say("postgres: the server of FLOWSCOPE_POSTGRES_URL")
        elif postgres.status(self.settings).pid is not None:
            self.progress.say("postgres: the server already running; it stays running")
        else:
            self.started_infra.append("postgres")
        with self._interruptible():
            return postgres.start(self.settings, process.Progress("postgres")).url

    def _start_jaeger(self) -> jaeger.JaegerStatus:
        if self.settings.jaeger.external:
            self.progress.say(f"jaeger: the one at {self.settings.jaeger.query_url}")
        elif jaeger.status(self.settings).pid is not None:
            self.progress.say("jaeger: the one already running; it stays running")
        else:
            self.started_infra.append("jaeger")
        with self._interruptible():
            return jaeger.start(self.settings, process.Progress("jaeger"))

    def _build_jaeger_meanwhile(self) -> jaeger.JaegerStatus:
        """The first run on a machine: build Jaeger (minutes) while everything else starts and
        runs; start it when the build ends, and the collector's export to it begins. Until
        then the collector's forwarder waits (degraded on /health). Its endpoints, for the
        children, are the settings' own."""
        self.progress.say("jaeger: not built yet; building it in the background (several "
                          "minutes, the first time only): flows, lag and the dashboard start "
                          "now, trace export joins when Jaeger is up")
        self.started_infra.append("jaeger")
        self.jaeger_builder = threading.Thread(target=self._jaeger_when_built,
                                               name="jaeger-build", daemon=True)
        self.jaeger_builder.start()
        return jaeger.status(self.settings)

    def _jaeger_when_built(self) -> None:
        progress = process.Progress("jaeger")
        try:
            jaeger.install(self.settings, progress, cancel=self.stopping)
            if self.stopping.is_set():
                return
            current = jaeger.start(self.settings, progress)
            self.progress.say(f"jaeger: built and running ({current.query}); the collector "
                              "exports traces to it from now on")
        except Exception as exc:  # a background thread: whatever ends it is said
            if not self.stopping.is_set():
                cause = str(exc) if isinstance(exc, FlowscopeError) else \
                    f"the build failed: {type(exc).__name__}: {exc}"
                self.progress.say(f"jaeger: {cause}; the demo goes on without trace export")

    def _start_rabbitmq(self) -> rabbitmq.RabbitmqStatus:
        if self.settings.rabbitmq.external:
            self.progress.say(f"rabbitmq: the broker at "
                              f"{redact_url(self.settings.rabbitmq.amqp_url)} "
                              "(FLOWSCOPE_RABBITMQ_URL)")
        elif rabbitmq.status(self.settings).pid is not None:
            self.progress.say("rabbitmq: the node already running; it stays running")
        else:
            self.started_infra.append("rabbitmq")
        try:
            with self._interruptible():
                return rabbitmq.start(self.settings, process.Progress("rabbitmq"))
        except FlowscopeError as exc:
            hint = "; ".join(filter(None, [exc.hint, "or leave RabbitMQ out: --no-rabbitmq"]))
            raise FlowscopeError(exc.component, exc.cause, log=exc.log, hint=hint,
                                 log_tail=exc.log_tail) from None

    def _start_nats(self) -> nats.NatsStatus:
        if self.settings.nats.external:
            self.progress.say(f"nats: the server at {redact_url(self.settings.nats.url)} "
                              "(FLOWSCOPE_NATS_URL)")
        elif nats.status(self.settings).pid is not None:
            self.progress.say("nats: the server already running; it stays running")
        else:
            self.started_infra.append("nats")
        try:
            with self._interruptible():
                return nats.start(self.settings, process.Progress("nats"))
        except FlowscopeError as exc:
            hint = "; ".join(filter(None, [exc.hint, "or leave NATS out: --no-nats"]))
            raise FlowscopeError(exc.component, exc.cause, log=exc.log, hint=hint,
                                 log_tail=exc.log_tail) from None

    def _start_artemis(self) -> artemis.ArtemisStatus:
        if self.settings.artemis.external:
            self.progress.say(f"artemis: the broker at "
                              f"{redact_url(self.settings.artemis.amqp_url)} "
                              "(FLOWSCOPE_ARTEMIS_URL)")
        elif artemis.status(self.settings).pid is not None:
            self.progress.say("artemis: the broker already running; it stays running")
        else:
            self.started_infra.append("artemis")
        try:
            with self._interruptible():
                return artemis.start(self.settings, process.Progress("artemis"))
        except FlowscopeError as exc:
            hint = "; ".join(filter(None, [exc.hint, "or leave Artemis out: --no-artemis"]))
            raise FlowscopeError(exc.component, exc.cause, log=exc.log, hint=hint,
                                 log_tail=exc.log_tail) from None

    def _create_topics(self, config: DemoConfig) -> None:
        try:
            created = asyncio.run(asyncio.wait_for(ensure_topics(config), 60))
        except Exception as exc:  # a boundary: whatever aiokafka raises, say where and why
            raise FlowscopeError("kafka", f"cannot create the demo topics: "
                                 f"{type(exc).__name__} {exc}") from None
        self.progress.say(f"{len(created)} demo topics ready")

    def _start_dashboard(self) -> None:
        address = self.settings.dashboard.address
        host = LOOPBACK if address in ("0.0.0.0", "::") else address
        health = f"http://{host}:{self.dashboard_port}/_stcore/health"
        self._start("dashboard", ["dashboard", "--port", str(self.dashboard_port),
                                  "--address", address], lambda _: http_says(health, "ok"))
        self.urls["dashboard"] = f"http://{host}:{self.dashboard_port}"

    def _spawn(self, name: str, args: list[str]) -> Child:
        log = self.dir / f"{name}.log"
        proc = process.spawn([sys.executable, "-m", "flowscope", *args], log, cwd=self.dir,
                             env=self.env)
        child = Child(name, proc, log)
        self.children.append(child)
        self._write_record()
        return child

    def _start(self, name: str, args: list[str], ready: Callable[[Path], bool]) -> None:
        progress = process.Progress(name)
        child = self._spawn(name, args)
        progress.say(f"starting `flowscope {' '.join(args)}` (log: {child.log})")
        timeout_s, next_note = READY_TIMEOUT_S[name.partition("-")[0]], 10.0
        while not ready(child.log):
            if self.stopping.is_set():
                raise KeyboardInterrupt
            code = child.proc.poll()
            if code is not None or progress.elapsed > timeout_s:
                cause = (f"exited with code {code} during start-up" if code is not None
                         else f"not ready within {timeout_s:g}s")
                raise FlowscopeError(name, cause, log=child.log,
                                     log_tail=process.log_tail(child.log))
            if progress.elapsed >= next_note:
                progress.say(f"still waiting for it to be ready (log: {child.log})")
                next_note += 10.0
            self.stopping.wait(0.25)
        progress.say(f"ready (pid {child.proc.pid})")

    def _write_record(self) -> None:
        assert self.record is not None
        children = [[c.name, c.proc.pid, str(c.log)] for c in self.children]
        self.record = replace(self.record, endpoints={**self.urls, "children": children})
        self.record.write(self.lock)

    def _announce(self) -> None:
        options = self.options
        length = f"{options.duration_s:g}s" if options.duration_s else "until Ctrl-C"
        lines = [f"flowscope demo: ready in {self.progress.elapsed:.1f}s; scenario "
                 f"{options.scenario}, {options.rate:g} flows/s, seed {options.seed}, {length}"]
        lines += [f"  {name:<10} {url}" for name, url in self.urls.items()]
        lines += [f"  {'store':<10} {store_label(self.settings.collect.store)}  (flowscope inspect "
                  "topology | flows | lag)"]
        if options.collectors > 1:
            lines.append(f"  {'collectors':<10} {options.collectors} in one consumer group; "
                         "the first's receiver publishes to the spans topic")
        lines += [f"  {'logs':<10} {self.dir}",
                  "Ctrl-C stops everything the demo started."]
        self._write_record()
        print("\n".join(lines), flush=True)

    def _drive(self) -> None:
        steps = plan_steps(self.options)
        limit = self.options.duration_s
        started, chunks = time.monotonic(), 0
        health: dict[str, tuple[str, str | None]] = {}
        next_health = 0.0
        while not self.stopping.wait(0.25):
            elapsed = time.monotonic() - started
            if elapsed >= next_health:
                health = self._watch_collector(health)
                next_health = elapsed + HEALTH_EVERY_S
            while steps and steps[0].at_s <= elapsed:
                self._run_step(steps.pop(0))
            loading = self._check_children()
            if limit is None and not steps and not loading:
                chunks += 1
                steps.append(steady_chunk(self.options, elapsed, chunks))
            elif limit is not None and elapsed >= limit and (not loading or elapsed > limit + 30):
                self.progress.say(f"{limit:g}s of traffic sent; letting the last flows finish")
                self.stopping.wait(SETTLE_S)
                return

    def _watch_collector(self, before: dict[str, tuple[str, str | None]]
                         ) -> dict[str, tuple[str, str | None]]:
        """Say when a collector component goes down or degraded, and when it is back."""
        collector = self.settings.collect
        now = collector_health(f"http://{collector.otlp_host}:{collector.otlp_port}/health")
        if now is None:
            return before
        for line in health_changes(before, now):
            self.progress.say(f"{line} (log: {self.dir / 'collect.log'})")
        return now

    def _run_step(self, step: Step) -> None:
        if step.text:
            self.progress.say(step.text)
        if step.load:
            with (self.dir / "loadgen.log").open("a") as log:
                log.write(f"--- {time.strftime('%H:%M:%S')} loadgen {' '.join(step.load)}\n")
            self._spawn("loadgen", ["loadgen", *step.load])

    def _check_children(self) -> bool:
        """Fail when a long-running child died; report a failed load run; True while loading."""
        loading = False
        for child in self.children:
            code = child.proc.poll()
            if child.name == "loadgen":
                loading = loading or code is None
                if code not in (None, 0) and not child.reported:
                    child.reported = True
                    self.progress.say(f"loadgen exited with code {code} (log: {child.log})")
            elif code is not None:
                raise FlowscopeError(child.name, f"exited unexpectedly with code {code}",
                                     log=child.log, log_tail=process.log_tail(child.log))
        return loading

    def _stop_all(self) -> None:
        running = [c for c in reversed(self.children) if c.proc.poll() is None]
        if running or self.started_infra:
            self.progress.say("stopping: " + ", ".join(
                [c.name for c in running] + self.started_infra[::-1]))
        for child in running:
            before = self._service_pids() if child.name == "services" else set()
            stop_child(child, STOP_TIMEOUT_S[child.name.partition("-")[0]], self.progress)
            after = self._service_pids() if child.name == "services" else set()
            for pid in before | after:  # what a killed supervisor could not stop itself
                if any("demo_services" in part for part in process.cmdline(pid)):
                    process.terminate(pid, timeout_s=5)
        self.stopping.set()  # a Jaeger build still running is killed
        if self.jaeger_builder is not None:
            self.jaeger_builder.join(timeout=30)
        stoppers = {"kafka": kafka.stop, "jaeger": jaeger.stop, "rabbitmq": rabbitmq.stop,
                    "nats": nats.stop, "artemis": artemis.stop, "postgres": postgres.stop}
        for name in reversed(self.started_infra):
            stopped = stoppers[name](self.settings)
            if stopped:
                self.progress.say(f"{name}: stopped (pid {stopped}); the demo had started it")
        if running:
            self.progress.say("stopped")

    def _service_pids(self) -> set[int]:
        try:
            state = json.loads(self.service_state.read_text()) if self.service_state else {}
        except (OSError, ValueError):
            return set()
        return {int(entry["pid"]) for entry in state.values() if entry.get("pid")}


def stop_child(child: Child, timeout_s: float, progress: process.Progress) -> None:
    """SIGTERM, wait up to timeout_s, then SIGKILL its whole process group."""
    child.proc.send_signal(signal.SIGTERM)
    try:
        child.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        try:
            child.proc.wait(timeout=10)
            progress.say(f"{child.name}: killed after {timeout_s:g}s (log: {child.log})")
        except subprocess.TimeoutExpired:  # stuck in the kernel: go on with the others
            progress.say(f"{child.name}: pid {child.proc.pid} did not exit even after SIGKILL "
                         f"(log: {child.log})")


def run_demo(settings: Settings, options: DemoOptions) -> int:
    """`flowscope demo`: set everything up, drive the traffic, stop everything it started."""
    problems = options.problems()
    if problems:
        raise FlowscopeError(COMPONENT, "; ".join(problems))
    return Demo(settings, options).run()
