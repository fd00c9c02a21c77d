"""A native ActiveMQ Artemis broker: the Apache distribution from Maven Central, an instance of
its own under FLOWSCOPE_HOME.

The distribution is fetched through mvn into the cache and unpacked once; `artemis create`
makes the broker instance in FLOWSCOPE_HOME/artemis/broker once, and every start rewrites its
configuration (artemis_config.py). The AMQP and CORE acceptors and the web server (console and
Jolokia, the management API) bind 127.0.0.1; login is required. When FLOWSCOPE_ARTEMIS_URL and
FLOWSCOPE_ARTEMIS_MANAGEMENT_URL are set, that broker is used and nothing is started.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from base.errors import FlowscopeError
from base.settings import LOOPBACK, ArtemisSettings, Settings, redact_url
from flowscope.infra import artemis_config, kafka, process
from flowscope.infra.jolokia import STARTED, broker_started, jolokia_request, reports_started

COMPONENT = "artemis"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
PORT_VARIABLES = {"amqp": "FLOWSCOPE_ARTEMIS_PORT", "core": "FLOWSCOPE_ARTEMIS_CORE_PORT",
                  "management": "FLOWSCOPE_ARTEMIS_MANAGEMENT_PORT"}
EXTERNAL_HINT = ("point FLOWSCOPE_ARTEMIS_URL and FLOWSCOPE_ARTEMIS_MANAGEMENT_URL (Jolokia: "
                 "http://user:password@host:8161/console/jolokia) at an existing broker")
# Only these of the caller's variables reach the start script: it also reads JAVA_ARGS,
# JAVA_ARGS_APPEND, DEBUG_ARGS, ARTEMIS_* and JAVA_HOME, which would override the instance's.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME")


@dataclass(frozen=True)
class ArtemisStatus:
    """Whether the broker answers, where, and (for the native one) its pid and log.

    The URLs hold credentials: as_json and the command line show them redacted."""

    running: bool
    pid: int | None
    amqp_url: str
    management_url: str
    external: bool
    log: Path | None

    def as_json(self) -> dict[str, object]:
        """The shape `flowscope artemis status --json` prints."""
        return {"running": self.running, "pid": self.pid,
                "amqp_url": redact_url(self.amqp_url),
                "management_url": redact_url(self.management_url),
                "log": str(self.log) if self.log else None}


@dataclass(frozen=True)
class ArtemisPaths:
    """Where the distribution is cached and where the broker instance keeps its run state."""

    maven_repo: Path
    archive: Path
    resolve_log: Path
    home: Path  # the unpacked distribution (ARTEMIS_HOME)
    run: Path
    instance: Path  # the broker instance (ARTEMIS_INSTANCE): bin, etc, data, log
    create_log: Path
    stdout_log: Path
    pid_file: Path

    @classmethod
    def of(cls, settings: Settings) -> ArtemisPaths:
        """Paths for these settings."""
        version, cache, run = settings.artemis.version, settings.cache_dir, settings.artemis_dir
        repo = cache / "m2"
        return cls(maven_repo=repo,
                   archive=repo / "org/apache/activemq/apache-artemis" / version
                   / f"apache-artemis-{version}-bin.tar.gz",
                   resolve_log=cache / f"apache-artemis-{version}-resolve.log",
                   home=cache / f"apache-artemis-{version}", run=run, instance=run / "broker",
                   create_log=run / "create.log", stdout_log=run / "stdout.log",
                   pid_file=run / "artemis.pid")

    @property
    def etc(self) -> Path:
        """The instance's configuration folder."""
        return self.instance / "etc"

    @property
    def broker_log(self) -> Path:
        """The broker's own log."""
        return self.instance / "log" / "artemis.log"

    @property
    def created(self) -> Path:
        """Written last by `artemis create`'s step: an instance without it is half made."""
        return self.instance / ".flowscope-created"


def check_java() -> str:
    """The java executable (Java 17 or newer, as for Kafka), or a clear error."""
    try:
        return kafka.check_java()
    except FlowscopeError as exc:
        raise FlowscopeError(COMPONENT, exc.cause, hint=exc.hint) from None


def script_environment(java: str) -> dict[str, str]:
    """The environment of Artemis' scripts: none of the variables they read from the caller,
    and the java that was checked."""
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env["JAVACMD"] = java
    return env


def install(settings: Settings, progress: process.Progress | None = None) -> Path:
    """Fetch the Artemis distribution from Maven Central into the cache and unpack it, once;
    return its folder."""
    paths = ArtemisPaths.of(settings)
    if (paths.home / "bin" / "artemis").exists():
        return paths.home
    progress = progress or process.Progress(COMPONENT)
    check_java()
    if not paths.archive.exists():
        _download(settings, paths, progress)
    _unpack(paths, progress)
    return paths.home


def _download(settings: Settings, paths: ArtemisPaths, progress: process.Progress) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FlowscopeError(COMPONENT, "mvn (Apache Maven) was not found on PATH; it fetches "
                             "the Artemis distribution from Maven Central",
                             hint=f"install maven, or {EXTERNAL_HINT}")
    version = settings.artemis.version
    paths.resolve_log.parent.mkdir(parents=True, exist_ok=True)
    progress.say(f"fetching Apache ActiveMQ Artemis {version} from Maven Central "
                 f"(log: {paths.resolve_log})")
    process.run_step(
        [mvn, "-B", f"-Dmaven.repo.local={paths.maven_repo}", f"{DEPENDENCY_PLUGIN}:get",
         f"-Dartifact=org.apache.activemq:apache-artemis:{version}:tar.gz:bin",
         "-Dtransitive=false"],
        component=COMPONENT, what="Maven download of the Artemis distribution",
        log=paths.resolve_log, cwd=paths.resolve_log.parent, env=None, timeout_s=1800,
        progress=progress)
    if not paths.archive.exists():
        raise FlowscopeError(COMPONENT, f"Maven reported success but {paths.archive} is missing",
                             log=paths.resolve_log, log_tail=process.log_tail(paths.resolve_log))


def _unpack(paths: ArtemisPaths, progress: process.Progress) -> None:
    """Unpack into a folder of its own, then rename: a half-unpacked distribution is never
    taken for a whole one."""
    progress.say(f"unpacking {paths.archive.name} into {paths.home}")
    staging = Path(tempfile.mkdtemp(prefix=".apache-artemis-", dir=paths.home.parent))
    try:
        with tarfile.open(paths.archive) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(staging, filter="data")
            else:  # Python before 3.11.4 has no extraction filters: check each member
                archive.extractall(staging, members=checked_members(archive, staging))
        unpacked = staging / paths.home.name
        if not (unpacked / "bin" / "artemis").exists():
            raise FlowscopeError(COMPONENT, f"{paths.archive} holds no {paths.home.name}/bin/"
                                 "artemis", hint=f"delete {paths.archive} to fetch it again")
        try:
            unpacked.rename(paths.home)
        except OSError:
            if not (paths.home / "bin" / "artemis").exists():  # else: unpacked by another
                raise
    except (tarfile.TarError, OSError) as exc:
        raise FlowscopeError(COMPONENT, f"cannot unpack {paths.archive}: {exc}",
                             hint=f"delete {paths.archive} to fetch it again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def checked_members(archive: tarfile.TarFile, into: Path) -> list[tarfile.TarInfo]:
    """The archive's members, each checked as the "data" extraction filter would: nothing
    outside `into` (absolute names, '..', links pointing out), no device or FIFO, no set-id
    bits; tarfile.TarError naming the first member that is not."""
    root = into.resolve()
    members = []
    for member in archive.getmembers():
        target = (root / member.name).resolve()
        if not target.is_relative_to(root):
            raise tarfile.TarError(f"{member.name!r} would be unpacked outside {into}")
        if member.isdev() or member.isfifo():
            raise tarfile.TarError(f"{member.name!r} is a device or FIFO")
        if member.issym() or member.islnk():
            base = target.parent if member.issym() else root
            if not (base / member.linkname).resolve().is_relative_to(root):
                raise tarfile.TarError(f"{member.name!r} links outside {into}")
        member.mode &= 0o755  # no set-id or sticky bit, no write for group or others
        members.append(member)
    return members


def _create_instance(artemis: ArtemisSettings, paths: ArtemisPaths, java: str,
                     progress: process.Progress) -> None:
    if paths.created.exists():
        return
    shutil.rmtree(paths.instance, ignore_errors=True)
    paths.run.mkdir(parents=True, exist_ok=True)
    progress.say(f"creating the broker instance in {paths.instance}")
    process.run_step(
        [str(paths.home / "bin" / "artemis"), "create", str(paths.instance), "--silent",
         "--force", "--host", LOOPBACK, "--http-host", LOOPBACK,
         "--http-port", str(artemis.management_port), "--default-port", str(artemis.core_port),
         "--user", artemis.user, "--password", artemis.password, "--require-login",
         "--no-mqtt-acceptor", "--no-hornetq-acceptor", "--no-stomp-acceptor", "--nio",
         "--no-autotune", "--java-memory", artemis.heap],
        component=COMPONENT, what="creating the broker instance (artemis create)",
        log=paths.create_log, cwd=paths.run, env=script_environment(java), timeout_s=120,
        progress=progress)
    paths.created.write_text(artemis.version)


def _write_config(artemis: ArtemisSettings, paths: ArtemisPaths) -> None:
    """Rewrite the instance's configuration from the settings (at every start)."""
    etc = paths.etc
    try:
        (etc / "broker.xml").write_text(artemis_config.render_broker_xml(artemis))
        (etc / "jolokia-access.xml").write_text(artemis_config.render_jolokia_access())
        bootstrap = etc / "bootstrap.xml"
        bootstrap.write_text(artemis_config.bind_web(bootstrap.read_text(),
                                                     artemis.management_port))
        profile = etc / "artemis.profile"
        profile.write_text(artemis_config.set_heap(profile.read_text(), artemis.heap))
    except (OSError, ValueError) as exc:
        raise FlowscopeError(COMPONENT, f"cannot write the configuration of its instance in "
                             f"{paths.instance}: {exc}",
                             hint=f"delete {paths.instance} to create it again") from None


def _running_settings(settings: Settings, record: process.ProcessRecord) -> ArtemisSettings:
    """The settings the running broker was started with (the pid file's ports)."""
    ends = record.endpoints
    return dataclasses.replace(settings.artemis, port=int(str(ends["amqp"])),
                               core_port=int(str(ends["core"])),
                               management_port=int(str(ends["management"])))


def status(settings: Settings) -> ArtemisStatus:
    """Is the broker up, and where."""
    artemis = settings.artemis
    if artemis.external:
        return ArtemisStatus(broker_started(artemis.management_url), None, artemis.amqp_url,
                             artemis.management_url, True, None)
    paths = ArtemisPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        return ArtemisStatus(False, None, artemis.amqp_url, artemis.management_url, False,
                             paths.broker_log)
    live = _running_settings(settings, record)
    return ArtemisStatus(broker_started(live.management_url), record.pid, live.amqp_url,
                         live.management_url, False, paths.broker_log)


def _check_external(settings: Settings) -> ArtemisStatus:
    artemis = settings.artemis
    code, answer = jolokia_request(artemis.management_url, STARTED, timeout_s=5.0)
    where = f"FLOWSCOPE_ARTEMIS_MANAGEMENT_URL={redact_url(artemis.management_url)}"
    if code is None:
        raise FlowscopeError(COMPONENT, f"Jolokia at {where} does not answer",
                             hint=EXTERNAL_HINT)
    if code != 200 or not reports_started(answer):
        raise FlowscopeError(
            COMPONENT, f"Jolokia at {where} answered HTTP {code} without a started broker",
            hint="check the user and password in the URL, and that the broker accepts this "
                 "origin (its jolokia-access.xml, or `artemis create --relax-jolokia`)")
    return ArtemisStatus(True, None, artemis.amqp_url, artemis.management_url, True, None)


def start(settings: Settings, progress: process.Progress | None = None) -> ArtemisStatus:
    """Start the native broker (or find it running, or check the external one); wait for it."""
    progress = progress or process.Progress(COMPONENT)
    artemis = settings.artemis
    if artemis.external:
        progress.say(f"using the broker at FLOWSCOPE_ARTEMIS_URL="
                     f"{redact_url(artemis.amqp_url)}; starting none")
        return _check_external(settings)
    paths = ArtemisPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is not None:
        if broker_started(_running_settings(settings, record).management_url):
            progress.say(f"already running (pid {record.pid}); starting nothing")
            return status(settings)
        return _await_ready(settings, paths, record, progress)
    process.check_ports_free(COMPONENT, artemis.ports, PORT_VARIABLES)
    install(settings, progress)
    java = check_java()
    _create_instance(artemis, paths, java, progress)
    _write_config(artemis, paths)
    progress.say(f"starting the broker: AMQP on {LOOPBACK}:{artemis.port}, Jolokia on "
                 f"{redact_url(artemis.management_url)} (log: {paths.broker_log})")
    # The start script execs java: the pid is the broker's JVM, tagged by its instance path.
    proc = process.spawn([str(paths.instance / "bin" / "artemis"), "run"], paths.stdout_log,
                         cwd=paths.instance, env=script_environment(java))
    record = process.ProcessRecord(proc.pid, str(paths.instance), time.time(),
                                   dict(artemis.ports))
    record.write(paths.pid_file)
    return _await_ready(settings, paths, record, progress)


def _await_ready(settings: Settings, paths: ArtemisPaths, record: process.ProcessRecord,
                 progress: process.Progress) -> ArtemisStatus:
    live = _running_settings(settings, record)
    timeout_s = settings.artemis.start_timeout_s
    if process.wait_until(lambda: broker_started(live.management_url), timeout_s=timeout_s,
                          interval_s=0.2, alive=lambda: process.pid_alive(record.pid)):
        progress.say(f"ready on {redact_url(live.amqp_url)} (pid {record.pid})")
        return status(settings)
    alive = process.pid_alive(record.pid)
    if alive:
        process.terminate(record.pid, timeout_s=settings.artemis.stop_timeout_s)
    paths.pid_file.unlink(missing_ok=True)
    log = paths.broker_log if paths.broker_log.exists() else paths.stdout_log
    tail = "\n".join(filter(None, [process.log_tail(paths.stdout_log, 10),
                                   process.log_tail(paths.broker_log, 20)]))
    cause = (f"the broker did not report Started on Jolokia ({LOOPBACK}:"
             f"{live.management_port}) within {timeout_s:g}s" if alive
             else "the broker exited during start-up")
    raise FlowscopeError(COMPONENT, cause, log=log, log_tail=tail,
                         hint="FLOWSCOPE_ARTEMIS_START_TIMEOUT gives it longer" if alive
                         else None)


def stop(settings: Settings, progress: process.Progress | None = None) -> int | None:
    """Stop the native broker (SIGTERM: its shutdown hook closes clients and the journal; then
    SIGKILL); the pid stopped, or None."""
    if settings.artemis.external:
        return None
    paths = ArtemisPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        return None
    if progress is not None:
        progress.say(f"stopping the broker (pid {record.pid})")
    process.terminate(record.pid, timeout_s=settings.artemis.stop_timeout_s)
    paths.pid_file.unlink(missing_ok=True)
    return record.pid
