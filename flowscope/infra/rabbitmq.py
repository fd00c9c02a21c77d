"""A native RabbitMQ node from Debian's rabbitmq-server package, private to FLOWSCOPE_HOME.

Nothing is downloaded: `install` checks that the package is there. The node runs as the caller
(/usr/lib/rabbitmq/bin/rabbitmq-server; the /usr/sbin wrappers switch to the rabbitmq user and
its cookie) with its config, data, logs, Erlang cookie and pid file in FLOWSCOPE_HOME/rabbitmq,
the management plugin on, and every listener on loopback (epmd, Erlang's port mapper, also binds
::1). When FLOWSCOPE_RABBITMQ_URL and FLOWSCOPE_RABBITMQ_MANAGEMENT_URL are set, that broker is
used and nothing is started.
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from base.errors import FlowscopeError
from base.settings import LOOPBACK, RabbitmqSettings, Settings, redact_url
from flowscope.infra import process

COMPONENT = "rabbitmq"
PACKAGE_ROOT = Path("/usr/lib/rabbitmq")
APT_INSTALL = "sudo apt-get install -y rabbitmq-server"
PORT_VARIABLES = {
    "amqp": "FLOWSCOPE_RABBITMQ_PORT",
    "management": "FLOWSCOPE_RABBITMQ_MANAGEMENT_PORT",
    "dist": "FLOWSCOPE_RABBITMQ_DIST_PORT",
    "epmd": "FLOWSCOPE_RABBITMQ_EPMD_PORT",
}
# Only these of the caller's variables reach the node: RabbitMQ also reads unprefixed names
# (NODENAME, NODE_PORT, LOG, BASE, ...) as fallbacks of its RABBITMQ_* ones.
INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
ENABLED_PLUGINS = "[rabbitmq_management].\n"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class RabbitmqStatus:
    """Whether the broker answers, where, and (for the native node) its pid and log.

    The URLs hold credentials: as_json and the command line show them redacted."""

    running: bool
    pid: int | None
    amqp_url: str
    management_url: str
    external: bool
    log: Path | None
    node: str | None = None

    def as_json(self) -> dict[str, object]:
        """The shape `flowscope rabbitmq status --json` prints."""
        return {"running": self.running, "pid": self.pid,
                "amqp_url": redact_url(self.amqp_url),
                "management_url": redact_url(self.management_url),
                "log": str(self.log) if self.log else None}


@dataclass(frozen=True)
class RabbitmqPaths:
    """The package's programs, and where the native node keeps its run state."""

    package: Path
    server: Path
    ctl: Path
    run: Path  # the node's HOME: its Erlang cookie goes here
    env_file: Path
    config: Path
    config_dir: Path
    plugins_file: Path
    mnesia: Path
    logs: Path
    pid_file: Path

    @classmethod
    def of(cls, settings: Settings, package: Path = PACKAGE_ROOT) -> RabbitmqPaths:
        """Paths for these settings."""
        run = settings.rabbitmq_dir
        return cls(package=package, server=package / "bin" / "rabbitmq-server",
                   ctl=package / "bin" / "rabbitmqctl", run=run,
                   env_file=run / "rabbitmq-env.conf", config=run / "rabbitmq.conf",
                   config_dir=run / "conf.d", plugins_file=run / "enabled_plugins",
                   mnesia=run / "mnesia", logs=run / "logs", pid_file=run / "rabbitmq.pid")

    @property
    def stdout_log(self) -> Path:
        """What the start script and the Erlang VM printed (boot failures land here)."""
        return self.logs / "stdout.log"

    def node_log(self, node: str) -> Path:
        """The node's own log."""
        return self.logs / f"{node}.log"


def node_name(settings: Settings) -> str:
    """The node's name, derived from its run folder so that two FLOWSCOPE_HOMEs sharing an
    epmd port cannot clash."""
    digest = hashlib.sha256(str(settings.rabbitmq_dir.resolve()).encode()).hexdigest()[:8]
    return f"flowscope-{digest}@localhost"


def render_config(rabbitmq: RabbitmqSettings) -> str:
    """rabbitmq.conf: every listener on loopback, queue statistics every second."""
    config = {
        "listeners.tcp.default": f"{LOOPBACK}:{rabbitmq.port}",
        "management.tcp.ip": LOOPBACK,
        "management.tcp.port": str(rabbitmq.management_port),
        "distribution.listener.interface": LOOPBACK,
        # Queue statistics refresh every second instead of every 5 (a collector polls them).
        "collect_statistics_interval": "1000",
        # The log file only (in the foreground the node would copy it all to stdout.log too),
        # rotated as the native Kafka's is.
        "log.console": "false",
        "log.file.rotation.size": str(50 * 1024 * 1024),
        "log.file.rotation.count": "3",
    }
    return "".join(f"{key} = {value}\n" for key, value in config.items())


def package_version(package: Path = PACKAGE_ROOT) -> str | None:
    """The installed rabbitmq-server version, from the folder its start script lives in."""
    target = (package / "bin" / "rabbitmq-server").resolve()
    for parent in target.parents:
        if parent.name.startswith("rabbitmq_server-"):
            return parent.name.removeprefix("rabbitmq_server-")
    return None


def find_epmd() -> str:
    """Erlang's port mapper daemon, which the node registers with."""
    found = shutil.which("epmd") or next(
        iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"), reverse=True)), None)
    if found is None:
        raise FlowscopeError(COMPONENT, "epmd (Erlang's port mapper, from the erlang-base "
                             "package) was not found", hint=f"run `{APT_INSTALL}`")
    return found


def install(settings: Settings, package: Path = PACKAGE_ROOT) -> str:
    """Check that Debian's rabbitmq-server package is installed; its version and start script."""
    paths = RabbitmqPaths.of(settings, package)
    management = glob.glob(str(package / "lib" / "rabbitmq_server-*" / "plugins"
                               / "rabbitmq_management-*"))
    missing = [str(path) for path in (paths.server, paths.ctl) if not path.exists()]
    if not missing and not management:
        missing.append(str(package / "lib" / "rabbitmq_server-*/plugins/rabbitmq_management-*"))
    if missing:
        raise FlowscopeError(COMPONENT, "Debian's rabbitmq-server package is not installed "
                             f"({', '.join(missing)} missing)",
                             hint=f"run `{APT_INSTALL}`, or point FLOWSCOPE_RABBITMQ_URL and "
                             "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL at an existing broker")
    find_epmd()
    return f"rabbitmq-server {package_version(package) or '(unknown version)'} ({paths.server})"


def node_environment(rabbitmq: RabbitmqSettings, paths: RabbitmqPaths, node: str
                     ) -> dict[str, str]:
    """The environment of the node and of rabbitmqctl calls to it: nothing of /etc/rabbitmq,
    everything under the run folder, every port ours."""
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env.update(
        HOME=str(paths.run),
        RABBITMQ_CONF_ENV_FILE=str(paths.env_file),
        RABBITMQ_NODENAME=node,
        RABBITMQ_MNESIA_BASE=str(paths.mnesia),
        RABBITMQ_LOG_BASE=str(paths.logs),
        RABBITMQ_CONFIG_FILE=str(paths.config),
        # Else /etc/rabbitmq/conf.d/*.conf and /etc/rabbitmq/advanced.config are read too.
        RABBITMQ_CONFIG_FILES=str(paths.config_dir / "*.conf"),
        RABBITMQ_ADVANCED_CONFIG_FILE=str(paths.run / "advanced.config"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(paths.plugins_file),
        RABBITMQ_DIST_PORT=str(rabbitmq.dist_port),
        ERL_EPMD_ADDRESS=LOOPBACK,
        ERL_EPMD_PORT=str(rabbitmq.epmd_port),
        # rabbitmqctl's own short-lived node listens for distribution too: on loopback.
        RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
    )
    return env


def _write_run_files(rabbitmq: RabbitmqSettings, paths: RabbitmqPaths) -> None:
    for folder in (paths.run, paths.config_dir, paths.mnesia, paths.logs):
        folder.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("# Flowscope's node reads no /etc/rabbitmq/rabbitmq-env.conf; "
                              "its settings come from the environment.\n")
    paths.config.write_text(render_config(rabbitmq))
    paths.plugins_file.write_text(ENABLED_PLUGINS)  # RabbitMQ needs it writable


def api_get(base_url: str, path: str, timeout_s: float = 2.0) -> tuple[int | None, object]:
    """GET a management API path, with the base URL's credentials as basic auth:
    (HTTP status or None when nothing answers, the JSON body or None)."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)) + path,
                                     headers={"Accept": "application/json"})
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization",
                           "Basic " + base64.b64encode(token.encode()).decode())
    handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK_HOSTS else []
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout_s) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return None, None


def node_ready(rabbitmq: RabbitmqSettings) -> bool:
    """True when the management API answers and lists the AMQP listener (RabbitMQ opens its
    client listeners last, after the plugins)."""
    code, overview = api_get(rabbitmq.management_url, "/api/overview")
    if code != 200 or not isinstance(overview, dict):
        return False
    return any(isinstance(item, dict) and item.get("protocol") == "amqp"
               and item.get("port") == rabbitmq.port for item in overview.get("listeners", []))


def _running_settings(settings: Settings, record: process.ProcessRecord) -> RabbitmqSettings:
    """The settings the running node was started with (the pid file's ports)."""
    ends = record.endpoints
    return dataclasses.replace(settings.rabbitmq, port=int(str(ends["amqp"])),
                               management_port=int(str(ends["management"])),
                               dist_port=int(str(ends["dist"])),
                               epmd_port=int(str(ends["epmd"])))


def status(settings: Settings) -> RabbitmqStatus:
    """Is the broker up, and where."""
    rabbitmq = settings.rabbitmq
    if rabbitmq.external:
        code, _ = api_get(rabbitmq.management_url, "/api/overview")
        return RabbitmqStatus(code == 200, None, rabbitmq.amqp_url, rabbitmq.management_url,
                              True, None)
    paths = RabbitmqPaths.of(settings)
    node = node_name(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        return RabbitmqStatus(False, None, rabbitmq.amqp_url, rabbitmq.management_url, False,
                              paths.node_log(node), node)
    live = _running_settings(settings, record)
    return RabbitmqStatus(node_ready(live), record.pid, live.amqp_url, live.management_url,
                          False, paths.node_log(node), node)


def _check_external(settings: Settings) -> RabbitmqStatus:
    rabbitmq = settings.rabbitmq
    code, _ = api_get(rabbitmq.management_url, "/api/overview", timeout_s=5.0)
    where = f"FLOWSCOPE_RABBITMQ_MANAGEMENT_URL={redact_url(rabbitmq.management_url)}"
    if code is None:
        raise FlowscopeError(COMPONENT, f"the management API at {where} does not answer")
    if code != 200:
        raise FlowscopeError(COMPONENT, f"the management API at {where} answered HTTP {code} "
                             "to GET /api/overview",
                             hint="check the user and password in the URL" if code in (401, 403)
                             else None)
    return RabbitmqStatus(True, None, rabbitmq.amqp_url, rabbitmq.management_url, True, None)


def start(settings: Settings, progress: process.Progress | None = None) -> RabbitmqStatus:
    """Start the native node (or find it running, or check the external broker); wait for it."""
    progress = progress or process.Progress(COMPONENT)
    if settings.rabbitmq.external:
        progress.say(f"using the broker at FLOWSCOPE_RABBITMQ_URL="
                     f"{redact_url(settings.rabbitmq.amqp_url)}; starting none")
        return _check_external(settings)
    paths = RabbitmqPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is not None:
        if node_ready(_running_settings(settings, record)):
            progress.say(f"already running (pid {record.pid}); starting nothing")
            return status(settings)
        return _await_ready(settings, paths, record, progress)
    install(settings)
    node = node_name(settings)
    rabbitmq = settings.rabbitmq
    env = node_environment(rabbitmq, paths, node)
    _check_ports(rabbitmq, env, node, progress)
    _write_run_files(rabbitmq, paths)
    progress.say(f"starting node {node}: AMQP on {LOOPBACK}:{rabbitmq.port}, management on "
                 f"{LOOPBACK}:{rabbitmq.management_port} (log: {paths.node_log(node)})")
    # The marker argument is an Erlang user flag: it tags the script and the VM as ours.
    launcher = process.spawn([str(paths.server), "-flowscope_config", str(paths.config)],
                             paths.stdout_log, cwd=paths.run, env=env)
    pid = _await_vm(launcher, paths)
    record = process.ProcessRecord(pid, str(paths.config), time.time(), {
        **rabbitmq.ports, "node": node, "launcher": launcher.pid})
    record.write(paths.pid_file)
    return _await_ready(settings, paths, record, progress)


def _check_ports(rabbitmq: RabbitmqSettings, env: dict[str, str], node: str,
                 progress: process.Progress) -> None:
    """Every port must be free, except that an epmd already there is shared, as Erlang does."""
    ports = dict(rabbitmq.ports)
    if process.port_in_use(rabbitmq.epmd_port):
        names = epmd_names(rabbitmq, env)
        if names is not None and node.partition("@")[0] in names:
            raise FlowscopeError(COMPONENT, f"a node named {node} is already registered with "
                                 f"epmd on {LOOPBACK}:{rabbitmq.epmd_port}, but no pid file "
                                 "names it", hint="stop it with `rabbitmqctl -n "
                                 f"{node} shutdown` (HOME and ERL_EPMD_PORT as for the node)")
        if names is not None:
            progress.say(f"sharing the epmd already on {LOOPBACK}:{rabbitmq.epmd_port}")
            del ports["epmd"]
    process.check_ports_free(COMPONENT, ports, PORT_VARIABLES)


def _await_vm(launcher: subprocess.Popen[bytes], paths: RabbitmqPaths) -> int:
    """The Erlang VM's pid: the start script's child, once it has become beam.smp."""
    found: list[int] = []

    def vm_started() -> bool:
        found[:] = [pid for pid in process.find_processes(str(paths.config))
                    if Path((process.cmdline(pid) or [""])[0]).name.startswith("beam")]
        return bool(found) or not process.pid_alive(launcher.pid)

    process.wait_until(vm_started, timeout_s=30, interval_s=0.05)
    if found:
        return found[0]
    alive = process.pid_alive(launcher.pid)
    if alive:
        process.terminate(launcher.pid, timeout_s=10)
    raise FlowscopeError(COMPONENT, "the start script did not start the Erlang VM within 30s"
                         if alive else "the start script exited before the Erlang VM started",
                         log=paths.stdout_log, log_tail=process.log_tail(paths.stdout_log))


def _await_ready(settings: Settings, paths: RabbitmqPaths, record: process.ProcessRecord,
                 progress: process.Progress) -> RabbitmqStatus:
    live = _running_settings(settings, record)
    timeout_s = settings.rabbitmq.start_timeout_s
    deadline_report = [time.monotonic() + 10]

    def ready() -> bool:
        if time.monotonic() >= deadline_report[0]:
            progress.say("still booting; waiting for the management API to list AMQP")
            deadline_report[0] += 10
        return node_ready(live)

    if process.wait_until(ready, timeout_s=timeout_s, interval_s=0.25,
                          alive=lambda: process.pid_alive(record.pid)):
        progress.say(f"node ready on {redact_url(live.amqp_url)} (pid {record.pid})")
        return status(settings)
    alive = process.pid_alive(record.pid)
    node = str(record.endpoints["node"])
    _stop_record(settings, paths, record, progress)
    log = paths.node_log(node) if paths.node_log(node).exists() else paths.stdout_log
    tail = "\n".join(filter(None, [process.log_tail(paths.stdout_log, 10),
                                   process.log_tail(paths.node_log(node), 20)]))
    cause = (f"the node did not answer on its management API ({LOOPBACK}:"
             f"{live.management_port}) within {timeout_s:g}s" if alive
             else "the node exited during start-up")
    raise FlowscopeError(COMPONENT, cause, log=log, log_tail=tail,
                         hint="FLOWSCOPE_RABBITMQ_START_TIMEOUT gives it longer" if alive
                         else None)


def epmd_names(rabbitmq: RabbitmqSettings, env: dict[str, str]) -> list[str] | None:
    """Node names registered with the epmd on our port; None when no epmd answers there."""
    try:
        done = subprocess.run([find_epmd(), "-port", str(rabbitmq.epmd_port), "-names"],
                              env=env, capture_output=True, text=True, timeout=3, check=False)
    except subprocess.TimeoutExpired:  # something listens there, but it is no epmd
        return None
    if done.returncode != 0 or "up and running" not in done.stdout:
        return None
    return [line.split()[1] for line in done.stdout.splitlines()
            if line.startswith("name ") and len(line.split()) > 1]


def _stop_epmd(rabbitmq: RabbitmqSettings, env: dict[str, str]) -> None:
    """Stop the epmd on our port when no node uses it any more (epmd refuses otherwise)."""
    if epmd_names(rabbitmq, env) != []:
        return
    subprocess.run([find_epmd(), "-port", str(rabbitmq.epmd_port), "-kill"], env=env,
                   capture_output=True, timeout=10, check=False)
    process.wait_until(lambda: not process.port_in_use(rabbitmq.epmd_port), timeout_s=5,
                       interval_s=0.05)


def _stop_record(settings: Settings, paths: RabbitmqPaths, record: process.ProcessRecord,
                 progress: process.Progress) -> None:
    """rabbitmqctl shutdown (it waits for the VM to exit); SIGTERM, then SIGKILL, if that
    fails; then whatever of ours is left, and epmd."""
    live = _running_settings(settings, record)
    env = node_environment(live, paths, str(record.endpoints["node"]))
    timeout_s = settings.rabbitmq.stop_timeout_s
    try:
        done = subprocess.run([str(paths.ctl), "-n", str(record.endpoints["node"]), "shutdown"],
                              env=env, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        failed = done.returncode != 0
    except (subprocess.TimeoutExpired, OSError):
        failed = True
    if failed or process.pid_alive(record.pid):
        progress.say("rabbitmqctl shutdown did not stop it; stopping the VM with SIGTERM")
        process.terminate(record.pid, timeout_s=timeout_s)
    marker = str(paths.config)
    if not process.wait_until(lambda: not process.find_processes(marker), timeout_s=10,
                              interval_s=0.1):
        for pid in process.find_processes(marker):
            process.terminate(pid, timeout_s=10)
    _stop_epmd(live, env)
    paths.pid_file.unlink(missing_ok=True)


def stop(settings: Settings, progress: process.Progress | None = None) -> int | None:
    """Stop the native node cleanly, and its epmd; the pid stopped, or None."""
    if settings.rabbitmq.external:
        return None
    progress = progress or process.Progress(COMPONENT)
    paths = RabbitmqPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        # A node killed outright leaves its epmd behind: clean that up too.
        if process.port_in_use(settings.rabbitmq.epmd_port) and paths.run.exists():
            _stop_epmd(settings.rabbitmq,
                       node_environment(settings.rabbitmq, paths, node_name(settings)))
        return None
    progress.say(f"stopping node {record.endpoints['node']} (pid {record.pid})")
    _stop_record(settings, paths, record, progress)
    progress.say("stopped")
    return record.pid
