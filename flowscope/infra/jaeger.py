"""A native Jaeger v2, built once from the Go module proxy and run with in-memory storage.

The binary and the Go caches live in the cache folder; run state (config, log, pid file) in
FLOWSCOPE_HOME/jaeger. Every port binds 127.0.0.1. When FLOWSCOPE_JAEGER_OTLP_ENDPOINT and
FLOWSCOPE_JAEGER_QUERY_URL are set, that Jaeger is used and nothing is started.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from base.errors import FlowscopeError
from base.settings import LOOPBACK, JaegerSettings, Settings
from flowscope.infra import gobuild, process

COMPONENT = "jaeger"
MODULE = "github.com/jaegertracing/jaeger"
PACKAGE = f"{MODULE}/cmd/jaeger"
PORT_VARIABLES = {
    "otlp_http": "FLOWSCOPE_JAEGER_OTLP_HTTP_PORT",
    "otlp_grpc": "FLOWSCOPE_JAEGER_OTLP_GRPC_PORT",
    "query": "FLOWSCOPE_JAEGER_QUERY_PORT",
    "query_grpc": "FLOWSCOPE_JAEGER_QUERY_GRPC_PORT",
    "health": "FLOWSCOPE_JAEGER_HEALTH_PORT",
    "metrics": "FLOWSCOPE_JAEGER_METRICS_PORT",
}


@dataclass(frozen=True)
class JaegerStatus:
    """Whether Jaeger is healthy, and where each of its endpoints is."""

    running: bool
    pid: int | None
    otlp_http: str
    otlp_grpc: str | None
    query: str
    external: bool
    log: Path | None

    def as_json(self) -> dict[str, object]:
        """The shape `flowscope jaeger status --json` prints."""
        return {"running": self.running, "pid": self.pid, "otlp_http": self.otlp_http,
                "otlp_grpc": self.otlp_grpc, "query": self.query}


@dataclass(frozen=True)
class JaegerPaths:
    """Where the native Jaeger keeps its build and its run state."""

    build_dir: Path
    binary: Path
    build_log: Path
    go_cache: Path
    config: Path
    log: Path
    pid_file: Path

    @classmethod
    def of(cls, settings: Settings) -> JaegerPaths:
        """Paths for these settings."""
        build = settings.cache_dir / f"jaeger-{settings.jaeger.module_version}"
        run = settings.jaeger_dir
        return cls(build_dir=build, binary=build / "bin" / "jaeger",
                   build_log=build / "build.log", go_cache=settings.cache_dir / "go",
                   config=run / "config.yaml", log=run / "jaeger.log",
                   pid_file=run / "jaeger.pid")


def installed(settings: Settings) -> bool:
    """True when the native Jaeger's binary is built (or an external Jaeger is used)."""
    return settings.jaeger.external or JaegerPaths.of(settings).binary.exists()


def install(settings: Settings, progress: process.Progress | None = None,
            cancel: threading.Event | None = None) -> Path:
    """Build the Jaeger v2 binary from the Go module proxy into the cache, once (killing the
    build, and raising FlowscopeError, when cancel is set while it runs); several minutes."""
    paths = JaegerPaths.of(settings)
    program = gobuild.GoProgram(
        COMPONENT, "Jaeger v2", MODULE, PACKAGE, settings.jaeger.module_version,
        paths.build_dir, paths.binary, paths.go_cache,
        external_hint="point FLOWSCOPE_JAEGER_OTLP_ENDPOINT and FLOWSCOPE_JAEGER_QUERY_URL at "
        "an existing Jaeger")
    return gobuild.build(program, timeout_s=settings.jaeger.build_timeout_s,
                         progress=progress or process.Progress(COMPONENT), cancel=cancel)


def render_config(jaeger: JaegerSettings) -> str:
    """The collector-style YAML config: OTLP in, memory storage, query API, all on loopback."""
    config = {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"],
                                     "exporters": ["jaeger_storage_exporter"]}},
            "telemetry": {
                "resource": {"service.name": "jaeger"},
                "metrics": {"level": "basic", "readers": [{"pull": {"exporter": {"prometheus": {
                    "host": LOOPBACK, "port": jaeger.metrics_port}}}}]},
                "logs": {"level": "info"},
            },
        },
        "extensions": {
            "jaeger_storage": {"backends": {"memstore": {"memory": {
                "max_traces": jaeger.max_traces}}}},
            "jaeger_query": {
                "storage": {"traces": "memstore"},
                # Jaeger would otherwise trace its own queries, and send them to port 4318,
                # which is Flowscope's collector.
                "enable_tracing": False,
                "http": {"endpoint": f"{LOOPBACK}:{jaeger.query_port}"},
                "grpc": {"endpoint": f"{LOOPBACK}:{jaeger.query_grpc_port}"},
            },
            "healthcheckv2": {"use_v2": True,
                              "http": {"endpoint": f"{LOOPBACK}:{jaeger.health_port}"}},
        },
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": f"{LOOPBACK}:{jaeger.otlp_grpc_port}"},
            "http": {"endpoint": f"{LOOPBACK}:{jaeger.otlp_http_port}"},
        }}},
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }
    # JSON is valid YAML, and needs no YAML library.
    return json.dumps(config, indent=2) + "\n"


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _status_of(settings: Settings, record: process.ProcessRecord | None) -> JaegerStatus:
    jaeger = settings.jaeger
    if jaeger.external:
        return JaegerStatus(_http_ok(f"{jaeger.query_url}/api/services"), None,
                            jaeger.otlp_http_endpoint, None, jaeger.query_url, True, None)
    paths = JaegerPaths.of(settings)
    if record is None:
        return JaegerStatus(False, None, jaeger.otlp_http_endpoint, jaeger.otlp_grpc_endpoint,
                            jaeger.query_url, False, paths.log)
    ends = record.endpoints
    healthy = _http_ok(str(ends["health"])) and _http_ok(f"{ends['query']}/api/services")
    return JaegerStatus(healthy, record.pid, str(ends["otlp_http"]), str(ends["otlp_grpc"]),
                        str(ends["query"]), False, paths.log)


def status(settings: Settings) -> JaegerStatus:
    """Is Jaeger up, and where are its endpoints."""
    if settings.jaeger.external:
        return _status_of(settings, None)
    return _status_of(settings, process.running_record(JaegerPaths.of(settings).pid_file))


def start(settings: Settings, progress: process.Progress | None = None) -> JaegerStatus:
    """Start the native Jaeger (or find it running, or check the external one); wait for health."""
    progress = progress or process.Progress(COMPONENT)
    if settings.jaeger.external:
        current = status(settings)
        if not current.running:
            raise FlowscopeError(COMPONENT, f"the Jaeger query API at FLOWSCOPE_JAEGER_QUERY_URL="
                                 f"{current.query} does not answer")
        return current
    paths = JaegerPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        process.check_ports_free(COMPONENT, settings.jaeger.ports, PORT_VARIABLES)
        install(settings, progress)
        paths.config.parent.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(render_config(settings.jaeger))
        progress.say(f"starting Jaeger (log: {paths.log})")
        proc = process.spawn([str(paths.binary), "--config", str(paths.config)], paths.log,
                             cwd=paths.config.parent)
        jaeger = settings.jaeger
        record = process.ProcessRecord(proc.pid, str(paths.config), time.time(), {
            "otlp_http": jaeger.otlp_http_endpoint, "otlp_grpc": jaeger.otlp_grpc_endpoint,
            "query": jaeger.query_url, "health": f"http://{LOOPBACK}:{jaeger.health_port}/status",
        })
        record.write(paths.pid_file)
    return _await_healthy(settings, paths, record, progress)


def _await_healthy(settings: Settings, paths: JaegerPaths, record: process.ProcessRecord,
                   progress: process.Progress) -> JaegerStatus:
    ready = process.wait_until(lambda: _status_of(settings, record).running,
                               timeout_s=settings.jaeger.start_timeout_s, interval_s=0.25,
                               alive=lambda: process.pid_alive(record.pid))
    if ready:
        current = _status_of(settings, record)
        progress.say(f"Jaeger ready: OTLP/HTTP {current.otlp_http}, query {current.query} "
                     f"(pid {record.pid})")
        return current
    alive = process.pid_alive(record.pid)
    if alive:
        process.terminate(record.pid, timeout_s=settings.jaeger.stop_timeout_s)
    paths.pid_file.unlink(missing_ok=True)
    cause = (f"Jaeger did not report healthy within {settings.jaeger.start_timeout_s:g}s"
             if alive else "Jaeger exited during start-up")
    raise FlowscopeError(COMPONENT, cause, log=paths.log, log_tail=process.log_tail(paths.log))


def stop(settings: Settings) -> int | None:
    """Stop the native Jaeger (SIGTERM, wait, then SIGKILL); the pid stopped, or None."""
    if settings.jaeger.external:
        return None
    paths = JaegerPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        return None
    process.terminate(record.pid, timeout_s=settings.jaeger.stop_timeout_s)
    paths.pid_file.unlink(missing_ok=True)
    return record.pid
