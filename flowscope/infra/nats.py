"""A native NATS server with JetStream, built once from the Go module proxy.

The binary lives in the cache folder (built as Jaeger is, see gobuild.py); run state (config,
JetStream storage, log, pid file) in FLOWSCOPE_HOME/nats. The client port and the HTTP
monitoring port bind 127.0.0.1. When FLOWSCOPE_NATS_URL is set, that server is used and nothing
is started.
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
from base.settings import LOOPBACK, NatsSettings, Settings, redact_url
from flowscope.infra import gobuild, process

COMPONENT = "nats"
MODULE = "github.com/nats-io/nats-server/v2"
PORT_VARIABLES = {"client": "FLOWSCOPE_NATS_PORT", "monitoring": "FLOWSCOPE_NATS_MONITORING_PORT"}
EXTERNAL_HINT = "point FLOWSCOPE_NATS_URL (and FLOWSCOPE_NATS_MONITORING_URL) at an existing server"


@dataclass(frozen=True)
class NatsStatus:
    """Whether the server answers, where, and (for the native one) its pid and log."""

    running: bool
    pid: int | None
    url: str
    monitoring_url: str
    external: bool
    log: Path | None
    jetstream: bool = False

    def as_json(self) -> dict[str, object]:
        """The shape `flowscope nats status --json` prints."""
        return {"running": self.running, "pid": self.pid, "url": redact_url(self.url),
                "monitoring_url": redact_url(self.monitoring_url),
                "log": str(self.log) if self.log else None}


@dataclass(frozen=True)
class NatsPaths:
    """Where the native server keeps its build and its run state."""

    build_dir: Path
    binary: Path
    go_cache: Path
    run: Path
    config: Path
    store: Path  # JetStream's file store
    log: Path
    pid_file: Path

    @classmethod
    def of(cls, settings: Settings) -> NatsPaths:
        """Paths for these settings."""
        build = settings.cache_dir / f"nats-server-{settings.nats.module_version}"
        run = settings.nats_dir
        return cls(build_dir=build, binary=build / "bin" / "nats-server",
                   go_cache=settings.cache_dir / "go", run=run, config=run / "nats-server.conf",
                   store=run / "jetstream", log=run / "nats-server.log",
                   pid_file=run / "nats-server.pid")


def installed(settings: Settings) -> bool:
    """True when the native server's binary is built (or an external server is used)."""
    return settings.nats.external or NatsPaths.of(settings).binary.exists()


def install(settings: Settings, progress: process.Progress | None = None,
            cancel: threading.Event | None = None) -> Path:
    """Build nats-server from the Go module proxy into the cache, once (under a minute with
    warm Go caches, a few without)."""
    paths = NatsPaths.of(settings)
    program = gobuild.GoProgram(
        COMPONENT, "NATS server", MODULE, MODULE, settings.nats.module_version, paths.build_dir,
        paths.binary, paths.go_cache, external_hint=EXTERNAL_HINT)
    return gobuild.build(program, timeout_s=settings.nats.build_timeout_s,
                         progress=progress or process.Progress(COMPONENT), cancel=cancel)


def render_config(nats: NatsSettings, paths: NatsPaths) -> str:
    """nats-server.conf: client and monitoring listeners on loopback, JetStream on disk."""
    config = {
        "server_name": "flowscope",
        "listen": f"{LOOPBACK}:{nats.port}",
        "http": f"{LOOPBACK}:{nats.monitoring_port}",
        "jetstream": {"store_dir": str(paths.store), "max_file_store": nats.max_store,
                      "max_memory_store": "256M"},
        # A client that stops reading is cut off rather than holding the server's memory.
        "write_deadline": "10s",
    }
    # The config format accepts JSON.
    return json.dumps(config, indent=2) + "\n"


def monitoring_get(base_url: str, path: str, timeout_s: float = 2.0
                   ) -> tuple[int | None, object]:
    """GET a monitoring endpoint: (HTTP status or None when nothing answers, JSON or None)."""
    handlers = [urllib.request.ProxyHandler({})]  # loopback is never proxied
    try:
        with urllib.request.build_opener(*handlers).open(base_url + path,
                                                         timeout=timeout_s) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return None, None


def server_ready(monitoring_url: str) -> tuple[bool, bool]:
    """(healthy, JetStream on): /healthz answers ok, and /varz shows JetStream's config."""
    code, health = monitoring_get(monitoring_url, "/healthz")
    if code != 200 or not isinstance(health, dict) or health.get("status") != "ok":
        return False, False
    code, varz = monitoring_get(monitoring_url, "/varz")
    jetstream = isinstance(varz, dict) and isinstance(varz.get("jetstream"), dict) and \
        bool(varz["jetstream"].get("config"))
    return True, jetstream


def _running_settings(settings: Settings, record: process.ProcessRecord) -> NatsSettings:
    ends = record.endpoints
    return NatsSettings(port=int(str(ends["client"])),
                        monitoring_port=int(str(ends["monitoring"])))


def status(settings: Settings) -> NatsStatus:
    """Is the server up, and where."""
    nats = settings.nats
    if nats.external:
        healthy, jetstream = server_ready(nats.monitoring_url)
        return NatsStatus(healthy, None, nats.url, nats.monitoring_url, True, None, jetstream)
    paths = NatsPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        return NatsStatus(False, None, nats.url, nats.monitoring_url, False, paths.log)
    live = _running_settings(settings, record)
    healthy, jetstream = server_ready(live.monitoring_url)
    return NatsStatus(healthy and jetstream, record.pid, live.url, live.monitoring_url, False,
                      paths.log, jetstream)


def _check_external(settings: Settings) -> NatsStatus:
    nats = settings.nats
    current = status(settings)
    where = f"FLOWSCOPE_NATS_MONITORING_URL={redact_url(nats.monitoring_url)}"
    if not current.running:
        raise FlowscopeError(COMPONENT, f"the monitoring endpoint at {where} does not answer "
                             "/healthz with ok", hint="set FLOWSCOPE_NATS_MONITORING_URL to the "
                             "server's http://host:8222 (nats-server -m 8222)")
    if not current.jetstream:
        raise FlowscopeError(COMPONENT, f"the server at {redact_url(nats.url)} runs without "
                             "JetStream", hint="start it with -js")
    return current


def start(settings: Settings, progress: process.Progress | None = None) -> NatsStatus:
    """Start the native server (or find it running, or check the external one); wait for it."""
    progress = progress or process.Progress(COMPONENT)
    if settings.nats.external:
        progress.say(f"using the server at FLOWSCOPE_NATS_URL={redact_url(settings.nats.url)}; "
                     "starting none")
        return _check_external(settings)
    paths = NatsPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is not None:
        if status(settings).running:
            progress.say(f"already running (pid {record.pid}); starting nothing")
            return status(settings)
        return _await_ready(settings, paths, record, progress)
    nats = settings.nats
    process.check_ports_free(COMPONENT, nats.ports, PORT_VARIABLES)
    install(settings, progress)
    try:
        paths.store.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(render_config(nats, paths))
    except OSError as exc:
        raise FlowscopeError(COMPONENT, f"cannot prepare its run folder {paths.run}: "
                             f"{exc.strerror or exc} ({exc.filename})",
                             hint="check that FLOWSCOPE_HOME is writable") from None
    progress.say(f"starting nats-server: client on {nats.url}, monitoring on "
                 f"{nats.monitoring_url} (log: {paths.log})")
    proc = process.spawn([str(paths.binary), "--config", str(paths.config)], paths.log,
                         cwd=paths.run)
    record = process.ProcessRecord(proc.pid, str(paths.config), time.time(), dict(nats.ports))
    record.write(paths.pid_file)
    return _await_ready(settings, paths, record, progress)


def _await_ready(settings: Settings, paths: NatsPaths, record: process.ProcessRecord,
                 progress: process.Progress) -> NatsStatus:
    timeout_s = settings.nats.start_timeout_s
    if process.wait_until(lambda: status(settings).running, timeout_s=timeout_s,
                          interval_s=0.1, alive=lambda: process.pid_alive(record.pid)):
        current = status(settings)
        progress.say(f"ready on {current.url}, JetStream on (pid {record.pid})")
        return current
    alive = process.pid_alive(record.pid)
    if alive:
        process.terminate(record.pid, timeout_s=settings.nats.stop_timeout_s)
    paths.pid_file.unlink(missing_ok=True)
    cause = (f"nats-server did not report healthy with JetStream within {timeout_s:g}s"
             if alive else "nats-server exited during start-up")
    raise FlowscopeError(COMPONENT, cause, log=paths.log, log_tail=process.log_tail(paths.log),
                         hint="FLOWSCOPE_NATS_START_TIMEOUT gives it longer" if alive else None)


def stop(settings: Settings, progress: process.Progress | None = None) -> int | None:
    """Stop the native server (SIGTERM: it closes clients and flushes JetStream; then
    SIGKILL); the pid stopped, or None."""
    if settings.nats.external:
        return None
    paths = NatsPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        return None
    if progress is not None:
        progress.say(f"stopping nats-server (pid {record.pid})")
    process.terminate(record.pid, timeout_s=settings.nats.stop_timeout_s)
    paths.pid_file.unlink(missing_ok=True)
    return record.pid
