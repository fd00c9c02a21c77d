"""`flowscope demo` as a user runs it, against the real broker and the real Jaeger: the scripted
incident reaches the store and Jaeger, a second demo is refused, and a stop leaves no process;
with RabbitMQ, the demo starts its node, the thumbnail leg runs, and the node is stopped."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from base.settings import Settings
from demo_services import topics
from flowscope.demo import LOCK_MARKER
from flowscope.infra import artemis, kafka, nats, postgres, process, rabbitmq
from flowscope.infra.jaeger import JaegerStatus
from store.factory import open_store
from tests.integration.conftest import ArtemisBroker, run_flowscope
from tests.integration.demo_stack import free_ports
from tests.integration.jaeger_api import fetch_spans_v3

KAFKA_SERVICES = {"uploads", "processor", "notifier", "orders", "payments", "inventory",
                  "shipping"}
# Commands carry no spans; orders are dead-lettered only when malformed, which the load is not.
QUIET_TOPICS = {topics.CONTROL, topics.ORDERS_DLQ}
READY = "flowscope demo: ready"


@dataclass
class DemoProcess:
    """A `flowscope demo` child whose output is read by threads all along."""

    env: dict[str, str]
    proc: subprocess.Popen[str]
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, env: dict[str, str], *args: str, rabbitmq: bool = False,
              nats: bool = False, artemis: bool = False) -> DemoProcess:
        """Start it (with --no-rabbitmq unless rabbitmq, --no-nats unless nats, --no-artemis
        unless artemis) and read its stdout and stderr."""
        args = args if rabbitmq else ("--no-rabbitmq", *args)
        args = args if nats else ("--no-nats", *args)
        args = args if artemis else ("--no-artemis", *args)
        proc = subprocess.Popen([sys.executable, "-m", "flowscope", "demo", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run = cls(env, proc)
        assert proc.stdout is not None
        assert proc.stderr is not None
        for stream, lines in ((proc.stdout, run.out), (proc.stderr, run.err)):
            threading.Thread(target=run._read, args=(stream, lines), daemon=True).start()
        return run

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            if line.startswith(READY):
                self.ready.set()

    @property
    def home(self) -> Path:
        """Its FLOWSCOPE_HOME."""
        return Path(self.env["FLOWSCOPE_HOME"])

    def output(self) -> str:
        """Everything it printed so far."""
        return "".join(self.out) + "".join(self.err)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait (bounded) for its ready line; stop it and fail when it does not come."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise AssertionError(f"demo not ready in {timeout_s}s:\n{self.output()}")

    def recorded_pids(self) -> dict[str, int]:
        """Every process the demo recorded: its children and the services they run."""
        record = process.ProcessRecord.read(self.home / "demo" / "demo.pid")
        assert record is not None
        pids = {f"{name}-{pid}": int(pid) for name, pid, _ in record.endpoints["children"]}
        state = json.loads((self.home / "services" / "services.json").read_text())
        return pids | {name: int(entry["pid"]) for name, entry in state.items()}


def demo_env(tmp_path: Path, bootstrap: str, jaeger: JaegerStatus | None) -> dict[str, str]:
    """An environment with its own home, store, ports, topics and spans topic."""
    prefix = f"demo{uuid.uuid4().hex[:8]}."
    otlp, uploads, orders, webhook = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_JAEGER_")}
    env.update(FLOWSCOPE_HOME=str(tmp_path / "home"), FLOWSCOPE_STORE=str(tmp_path / "demo.db"),
               KAFKA_BOOTSTRAP_SERVERS=bootstrap, FLOWSCOPE_OTLP_ADDRESS=f"127.0.0.1:{otlp}",
               FLOWSCOPE_DEMO_TOPIC_PREFIX=prefix, FLOWSCOPE_DEMO_UPLOADS_PORT=str(uploads),
               FLOWSCOPE_DEMO_ORDERS_PORT=str(orders), FLOWSCOPE_DEMO_WEBHOOK_PORT=str(webhook),
               FLOWSCOPE_SPANS_TOPIC=f"{prefix}otlp_spans",
               FLOWSCOPE_TAP_TOPICS=f"^{re.escape(prefix)}", FLOWSCOPE_LAG_INTERVAL="1")
    if jaeger is not None:
        env.update(FLOWSCOPE_JAEGER_OTLP_ENDPOINT=jaeger.otlp_http,
                   FLOWSCOPE_JAEGER_QUERY_URL=jaeger.query)
    return env


def processes_of(home: Path) -> list[int]:
    """Live processes whose environment names this FLOWSCOPE_HOME."""
    wanted = f"FLOWSCOPE_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if wanted in environ.split(b"\0") and process.pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def assert_nothing_left(run: DemoProcess, pids: dict[str, int]) -> None:
    """No recorded process, no process of its home, no lock file."""
    assert {name: pid for name, pid in pids.items() if process.pid_alive(pid)} == {}
    assert processes_of(run.home) == []
    assert not (run.home / "demo" / "demo.pid").exists()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = answer.read().decode()
    return json.loads(body) if body.startswith(("{", "[")) else body


def test_second_demo_while_one_runs_fails_naming_its_pid(tmp_path: Path) -> None:
    env = dict(os.environ, FLOWSCOPE_HOME=str(tmp_path / "home"))
    lock = tmp_path / "home" / "demo" / "demo.pid"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               LOCK_MARKER, "demo"])
    try:
        process.ProcessRecord(holder.pid, LOCK_MARKER, time.time(), {"children": []}).write(lock)
        done = run_flowscope(env, "demo", "--no-jaeger", "--no-dashboard", "--duration", "5",
                             timeout_s=60)
        assert done.returncode == 1
        assert f"flowscope: demo: another `flowscope demo` is already running (pid {holder.pid}" \
            in done.stderr
        assert "hint: stop it first" in done.stderr
        assert process.ProcessRecord.read(lock).pid == holder.pid  # type: ignore[union-attr]
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_sigterm_mid_run_stops_every_process_despite_a_stale_lock(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    env = demo_env(tmp_path, kafka_bootstrap, None)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock = tmp_path / "home" / "demo" / "demo.pid"
    lock.parent.mkdir(parents=True)
    process.ProcessRecord(int(gone.stdout), LOCK_MARKER, 1.0, {"children": []}).write(lock)
    run = DemoProcess.start(env, "--no-jaeger", "--no-dashboard")
    run.wait_ready()
    deadline = time.monotonic() + 30
    while not any(name.startswith("loadgen") for name in run.recorded_pids()):
        assert time.monotonic() < deadline, run.output()
        time.sleep(0.2)
    pids = run.recorded_pids()
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=90) == 0, run.output()
    assert "SIGTERM: stopping everything the demo started" in run.output()
    assert_nothing_left(run, pids)
    assert kafka.answers_metadata(kafka_bootstrap)


def test_a_demo_after_one_killed_with_sigkill_stops_what_it_left_running(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    env = demo_env(tmp_path, kafka_bootstrap, None)
    killed = DemoProcess.start(env, "--no-jaeger", "--no-dashboard")
    killed.wait_ready()
    left = killed.recorded_pids()
    killed.proc.kill()  # no chance to stop its children
    killed.proc.wait(timeout=10)
    assert any(process.pid_alive(pid) for pid in left.values())
    run = DemoProcess.start(env, "--no-jaeger", "--no-dashboard", "--duration", "3")
    run.wait_ready()
    assert run.proc.wait(timeout=90) == 0, run.output()
    assert "left running by a demo that was killed" in run.output()
    assert_nothing_left(run, left)  # the killed demo's children and this run's alike


@pytest.mark.jaeger
def test_incident_scenario_reaches_store_and_jaeger_and_leaves_no_process(
        kafka_bootstrap: str, jaeger_endpoints: JaegerStatus, tmp_path: Path) -> None:
    started_us = int(time.time() * 1e6)
    env = demo_env(tmp_path, kafka_bootstrap, jaeger_endpoints)
    prefix = env["FLOWSCOPE_DEMO_TOPIC_PREFIX"]
    (board,) = free_ports(1)
    run = DemoProcess.start(env, "--duration", "60", "--scenario", "incident", "--seed", "7",
                            "--dashboard-port", str(board))
    run.wait_ready()
    assert _get(f"http://127.0.0.1:{board}/_stcore/health") == "ok"
    pids = run.recorded_pids()
    (dashboard,) = [pid for name, pid in pids.items() if name.startswith("dashboard-")]
    environ = Path(f"/proc/{dashboard}/environ").read_bytes().split(b"\0")
    assert f"FLOWSCOPE_JAEGER_UI_URL={jaeger_endpoints.query}".encode() in environ
    assert run.proc.wait(timeout=180) == 0, run.output()
    assert_nothing_left(run, pids)

    printed = run.output()
    assert f"dashboard  http://127.0.0.1:{board}" in printed
    assert f"jaeger     {jaeger_endpoints.query}" in printed
    for phase in ("1/4 steady", "2/4 paused", "3/4 drain", "4/4 failure burst"):
        assert f"phase {phase}" in printed
    _check_topology(env, prefix)
    _check_lag_rose_and_drained(env, prefix)
    _check_jaeger(env, prefix, jaeger_endpoints.query, started_us)
    assert kafka.answers_metadata(kafka_bootstrap)  # what was running stays running


def _check_topology(env: dict[str, str], prefix: str) -> None:
    done = run_flowscope(env, "inspect", "topology", "--json", "--since", "1h")
    assert done.returncode == 0, done.stderr
    topology = json.loads(done.stdout)
    counts: dict[str, int] = defaultdict(int)
    for edge in topology["edges"]:
        counts[edge["source"]] += edge["count"]
        counts[edge["target"]] += edge["count"]
    wanted = KAFKA_SERVICES | {prefix + t for t in topics.ALL_TOPICS if t not in QUIET_TOPICS}
    assert {name: counts.get(name, 0) for name in wanted if not counts.get(name)} == {}
    edges = {(e["source"], e["target"]): e for e in topology["edges"]}
    assert edges[(prefix + topics.FILES_RETRY, "processor")]["retries"] > 0
    assert edges[("processor", prefix + topics.FILES_DLQ)]["count"] > 0
    flows = run_flowscope(env, "inspect", "flows", "--json", "--since", "1h", "--limit", "5000")
    statuses = {f["status"] for f in json.loads(flows.stdout)["flows"]}
    assert {"completed", "dead-lettered", "compensated"} <= statuses


def _check_lag_rose_and_drained(env: dict[str, str], prefix: str) -> None:
    store = open_store(Settings.from_env(env), readonly=True)
    try:
        rows = store.lag_history(0, prefix + "processor")
    finally:
        store.close()
    by_poll: dict[float, int] = defaultdict(int)
    for row in rows:
        if row.topic == prefix + topics.FILES_UPLOADED:
            by_poll[row.at_s] += row.lag or 0
    lags = [lag for _, lag in sorted(by_poll.items())]
    peak = lags.index(max(lags))
    assert lags[peak] >= 50, lags
    assert min(lags[peak:]) <= 5, lags


def _check_jaeger(env: dict[str, str], prefix: str, query: str, started_us: int) -> None:
    now_us = int(time.time() * 1e6)
    for service in sorted(KAFKA_SERVICES | {"webhook"}):
        found = _get(f"{query}/api/traces?service={service}&start={started_us}&end={now_us}"
                     "&limit=1")
        assert found["data"], f"no trace of {service} in Jaeger"
    flows = json.loads(run_flowscope(env, "inspect", "flows", "--json", "--since", "1h",
                                     "--limit", "5000").stdout)["flows"]
    upload = next(f for f in flows if f["status"] == "completed" and f["retries"] == 0
                  and prefix + topics.FILES_NOTIFIED in f["topics"])
    wanted = {"POST /files", "POST /callbacks/{name}", f"send {prefix}files.notified"} | {
        f"{verb} {prefix}{topic}" for verb in ("send", "process")
        for topic in ("files.uploaded", "files.processed")}
    spans = fetch_spans_v3(query, upload["trace_ids"][0],
                           lambda found: wanted <= {s["name"] for s in found})
    by_name = {str(s["name"]): s for s in spans}
    by_id = {s["spanId"]: s for s in spans}
    request = by_name["POST /files"]
    assert (request["service"], request["parentSpanId"]) == ("uploads", "")
    assert by_id[by_name[f"send {prefix}files.uploaded"]["parentSpanId"]] is request
    for topic, producer, consumer in (("files.uploaded", "uploads", "processor"),
                                      ("files.processed", "processor", "notifier"),
                                      ("files.notified", "notifier", None)):
        send = by_name[f"send {prefix}{topic}"]
        assert send["service"] == producer
        if consumer is not None:
            consume = by_name[f"process {prefix}{topic}"]
            assert consume["service"] == consumer
            assert send["spanId"] in (consume["parentSpanId"], *consume["links"])
    callback = by_name["POST /callbacks/{name}"]
    assert callback["service"] == "webhook"
    assert by_id[callback["parentSpanId"]]["service"] == "notifier"


def test_demo_starts_rabbitmq_runs_the_thumbnail_leg_and_stops_the_node(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in demo_env(tmp_path, kafka_bootstrap, None).items()
           if not k.startswith("FLOWSCOPE_RABBITMQ_") and k != "FLOWSCOPE_DEMO_RABBITMQ_URL"}
    amqp, management, dist, epmd = free_ports(4)
    env.update(FLOWSCOPE_RABBITMQ_PORT=str(amqp), FLOWSCOPE_RABBITMQ_MANAGEMENT_PORT=str(
        management), FLOWSCOPE_RABBITMQ_DIST_PORT=str(dist), FLOWSCOPE_RABBITMQ_EPMD_PORT=str(epmd))
    prefix = env["FLOWSCOPE_DEMO_TOPIC_PREFIX"]
    run = DemoProcess.start(env, "--no-jaeger", "--no-dashboard", "--duration", "15",
                            "--scenario", "incident", "--seed", "3", rabbitmq=True)
    try:
        run.wait_ready()
        pids = run.recorded_pids()
        assert {"thumbnailer", "indexer", "auditor"} <= set(pids)
        assert run.proc.wait(timeout=120) == 0, run.output()
    finally:
        rabbitmq.stop(Settings.from_env(env))  # whatever happened, leave no node behind
    printed = run.output()
    assert f"rabbitmq   http://***@127.0.0.1:{management}  (management; AMQP " \
           f"amqp://***@127.0.0.1:{amqp}/)" in printed
    assert "guest" not in printed
    for phase in ("1/5 steady", "4/5 queue backlog", "5/5 failure burst"):
        assert f"phase {phase}" in printed
    assert "the demo had started it" in printed
    assert_nothing_left(run, pids)
    assert not rabbitmq.status(Settings.from_env(env)).running
    done = run_flowscope(env, "inspect", "topology", "--json", "--since", "1h")
    assert done.returncode == 0, done.stderr
    edges = {(e["source"], e["target"]) for e in json.loads(done.stdout)["edges"]}
    assert ("thumbnailer", prefix + topics.FILES_PROCESSED) in edges  # Kafka -> RabbitMQ -> Kafka
    assert ("processor", prefix + topics.FILES_PROCESSED) not in edges


def test_demo_starts_nats_runs_the_tracking_leg_and_stops_the_server(
        kafka_bootstrap: str, nats_server: nats.NatsStatus, settings: Settings,
        tmp_path: Path) -> None:
    env = {k: v for k, v in demo_env(tmp_path, kafka_bootstrap, None).items()
           if not k.startswith("FLOWSCOPE_NATS_") and k != "FLOWSCOPE_DEMO_NATS_URL"}
    client, monitoring = free_ports(2)
    # A server of its own, from the binary the session built (nats_server) in the shared cache.
    env.update(FLOWSCOPE_NATS_PORT=str(client), FLOWSCOPE_NATS_MONITORING_PORT=str(monitoring),
               FLOWSCOPE_CACHE_DIR=str(settings.cache_dir))
    prefix = env["FLOWSCOPE_DEMO_TOPIC_PREFIX"]
    run = DemoProcess.start(env, "--no-jaeger", "--no-dashboard", "--duration", "15",
                            "--scenario", "incident", "--seed", "3", nats=True)
    try:
        run.wait_ready()
        pids = run.recorded_pids()
        assert {"shipping", "tracking", "portal"} <= set(pids)
        assert run.proc.wait(timeout=120) == 0, run.output()
    finally:
        nats.stop(Settings.from_env(env))  # whatever happened, leave no server behind
    printed = run.output()
    assert f"nats       nats://127.0.0.1:{client}  (monitoring http://127.0.0.1:{monitoring}" \
           "/jsz)" in printed
    for phase in ("1/5 steady", "4/5 stream backlog", "5/5 failure burst"):
        assert f"phase {phase}" in printed
    assert "nats: stopped" in printed
    assert "the demo had started it" in printed
    assert_nothing_left(run, pids)
    assert not nats.status(Settings.from_env(env)).running
    stream = prefix.replace(".", "_") + "SHIPMENTS"
    done = run_flowscope(env, "inspect", "topology", "--json", "--since", "1h")
    assert done.returncode == 0, done.stderr
    edges = {(e["source"], e["target"]) for e in json.loads(done.stdout)["edges"]}
    assert ("shipping", f"nats:topic:{stream}") in edges  # Kafka -> JetStream
    assert (f"nats:consumer:{stream}/tracking", "tracking") in edges
    lag = run_flowscope(env, "inspect", "lag", "--json")
    assert any(row["system"] == "nats" and row["topic"] == stream and row["group"] == "tracking"
               for row in json.loads(lag.stdout)["partitions"]), lag.stdout


def test_demo_starts_artemis_runs_the_invoice_leg_and_stops_the_broker(
        kafka_bootstrap: str, artemis_broker: ArtemisBroker, tmp_path: Path) -> None:
    env = {k: v for k, v in demo_env(tmp_path, kafka_bootstrap, None).items()
           if not k.startswith("FLOWSCOPE_ARTEMIS_") and k != "FLOWSCOPE_DEMO_ARTEMIS_URL"}
    amqp, core, management = free_ports(3)
    # A broker of its own, from the distribution the session cached (artemis_broker).
    env.update(FLOWSCOPE_ARTEMIS_PORT=str(amqp), FLOWSCOPE_ARTEMIS_CORE_PORT=str(core),
               FLOWSCOPE_ARTEMIS_MANAGEMENT_PORT=str(management),
               FLOWSCOPE_CACHE_DIR=str(artemis_broker.settings.cache_dir))
    prefix = env["FLOWSCOPE_DEMO_TOPIC_PREFIX"]
    run = DemoProcess.start(env, "--no-jaeger", "--no-dashboard", "--duration", "15",
                            "--scenario", "incident", "--seed", "3", artemis=True)
    try:
        run.wait_ready()
        pids = run.recorded_pids()
        assert {"orders", "billing", "ledger", "mailer"} <= set(pids)
        assert run.proc.wait(timeout=120) == 0, run.output()
    finally:
        artemis.stop(Settings.from_env(env))  # whatever happened, leave no broker behind
    printed = run.output()
    assert f"artemis    amqp://***@127.0.0.1:{amqp}  (Jolokia http://***@127.0.0.1:" \
           f"{management}/console/jolokia)" in printed
    for phase in ("1/5 steady", "4/5 invoice backlog", "5/5 failure burst"):
        assert f"phase {phase}" in printed
    assert "artemis: stopped" in printed
    assert "the demo had started it" in printed
    assert_nothing_left(run, pids)
    assert not artemis.status(Settings.from_env(env)).running
    logs = run.home / "services"
    assert f"consuming {prefix}invoices" in (logs / "billing.log").read_text()
    for subscriber in ("ledger", "mailer"):
        assert f"consuming {prefix}billing.events::{prefix}billing.events.{subscriber}" in \
            (logs / f"{subscriber}.log").read_text()
    assert "receiver of" in (logs / "billing.log").read_text()  # detached while paused
    done = run_flowscope(env, "inspect", "topology", "--json", "--since", "1h")
    assert done.returncode == 0, done.stderr
    edges = {(e["source"], e["target"]) for e in json.loads(done.stdout)["edges"]}
    # Kafka -> Artemis queue -> Artemis multicast, whatever the collector names the nodes
    assert any(s == "orders" and "invoices" in t for s, t in edges), edges
    assert any("invoices" in s and t == "billing" for s, t in edges), edges
    for subscriber in ("ledger", "mailer"):
        assert any("billing.events" in s and t == subscriber for s, t in edges), edges


def test_a_demo_whose_jaeger_is_not_built_starts_at_once_and_goes_on_without_it(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    env = demo_env(tmp_path, kafka_bootstrap, None)  # a new home: Jaeger is not built there
    # No Go on PATH: the background build fails at once, as it would on a machine without it.
    env["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep)
                                  if d and not (Path(d) / "go").exists())
    run = DemoProcess.start(env, "--no-dashboard", "--duration", "8")
    run.wait_ready()
    assert run.proc.wait(timeout=120) == 0, run.output()
    printed = run.output()
    assert "building it in the background" in printed
    assert "go was not found on PATH" in printed
    assert "the demo goes on without trace export" in printed
    done = run_flowscope(env, "inspect", "flows", "--json", "--since", "1h")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["flows"]  # flows were collected all the same


def test_demo_with_two_collectors_on_postgresql_shares_the_work_and_stops_the_server(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in demo_env(tmp_path, kafka_bootstrap, None).items()
           if k != "FLOWSCOPE_STORE" and not k.startswith("FLOWSCOPE_POSTGRES_")}
    (port,) = free_ports(1)
    env["FLOWSCOPE_POSTGRES_PORT"] = str(port)  # a server of its own, which the demo starts
    settings = Settings.from_env(env)
    run = DemoProcess.start(env, "--no-jaeger", "--no-dashboard", "--duration", "15",
                            "--collectors", "2", "--store", "postgresql")
    try:
        run.wait_ready()
        pids = run.recorded_pids()
        assert any(name.startswith("collect-2-") for name in pids)
        paths = postgres.PostgresPaths.of(settings, postgres.server_account())
        url = postgres.url_of(settings, paths.password_file.read_text().strip(), port)
        otlp = int(env["FLOWSCOPE_OTLP_ADDRESS"].rpartition(":")[2])
        deadline = time.monotonic() + 30
        states: list[str] = []
        while sorted(states) != ["ok", "standby"] and time.monotonic() < deadline:
            states = [str(_get(f"http://127.0.0.1:{p}/health")["components"]
                          .get("lag_poller", {}).get("state")) for p in (otlp, otlp + 1)]
            time.sleep(0.3)
        assert sorted(states) == ["ok", "standby"]  # one polls lag, the other stands by
        done = run_flowscope({**env, "FLOWSCOPE_STORE": url}, "inspect", "health", "--json")
        assert done.returncode == 0, done.stderr
        reporters = {c.get("collector") for c in json.loads(done.stdout)["components"]}
        assert len(reporters) == 2
        assert run.proc.wait(timeout=120) == 0, run.output()
    finally:
        postgres.stop(settings)  # whatever happened, leave no server behind
        root = postgres.PostgresPaths.of(settings, postgres.server_account()).server_root
        if root.is_relative_to(postgres.SHARED_ROOT):
            shutil.rmtree(root, ignore_errors=True)
    printed = run.output()
    assert "store      postgresql://***@127.0.0.1:" in printed
    assert "collectors 2 in one consumer group" in printed
    assert "postgres: stopped" in printed
    assert_nothing_left(run, pids)
    assert not postgres.status(settings).running
