"""A native single-node Apache Kafka (KRaft, broker and controller in one JVM).

The jars come from Maven Central through mvn into the cache once; run state (config, data,
logs, pid file) lives in FLOWSCOPE_HOME/kafka. When KAFKA_BOOTSTRAP_SERVERS is set, that
cluster is used and nothing is started.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

from base.errors import FlowscopeError
from base.settings import LOOPBACK, Settings
from flowscope.infra import process

COMPONENT = "kafka"
MAIN_CLASS = "kafka.Kafka"
MIN_JAVA = 17
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
LOG4J_VERSION = "2.25.3"
# The broker's POM asks for slf4j-api 1.7, which ignores log4j's SLF4J 2 provider:
# declaring slf4j-api 2 directly makes Maven pick it, and the broker logs.
SLF4J_VERSION = "2.0.17"
PORT_VARIABLES = {"broker": "FLOWSCOPE_KAFKA_PORT",
                  "controller": "FLOWSCOPE_KAFKA_CONTROLLER_PORT"}


@dataclass(frozen=True)
class KafkaStatus:
    """Whether the broker answers, where, and (for the native one) its pid and log."""

    running: bool
    bootstrap: str
    pid: int | None
    external: bool
    log: Path | None

    def as_json(self) -> dict[str, object]:
        """The shape `flowscope kafka status --json` prints."""
        return {"running": self.running, "bootstrap": self.bootstrap, "pid": self.pid}


@dataclass(frozen=True)
class KafkaPaths:
    """Where the native broker keeps its jars and its run state."""

    libs: Path
    pom: Path
    resolve_log: Path
    maven_repo: Path
    config: Path
    log4j_config: Path
    data: Path
    logs: Path
    pid_file: Path

    @classmethod
    def of(cls, settings: Settings) -> KafkaPaths:
        """Paths for these settings."""
        dist = settings.cache_dir / f"kafka-{settings.kafka.version}"
        run = settings.kafka_dir
        return cls(libs=dist / "libs", pom=dist / "pom.xml", resolve_log=dist / "resolve.log",
                   maven_repo=settings.cache_dir / "m2", config=run / "server.properties",
                   log4j_config=run / "log4j2.properties", data=run / "data",
                   logs=run / "logs", pid_file=run / "kafka.pid")

    @property
    def server_log(self) -> Path:
        """The broker's own log."""
        return self.logs / "server.log"

    @property
    def stdout_log(self) -> Path:
        """What the JVM printed (start-up failures land here)."""
        return self.logs / "stdout.log"

    @property
    def classpath(self) -> str:
        """The classpath, as a wildcard Java expands itself."""
        return f"{self.libs}/*"


def parse_java_major(version_output: str) -> int | None:
    """The major version from `java -version` output ('1.8.0_x' -> 8, '17.0.15' -> 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> str:
    """The java executable, or a clear error when it is missing or older than 17."""
    java = shutil.which("java")
    if java is None:
        raise FlowscopeError(COMPONENT, "java was not found on PATH; the native broker needs "
                             f"Java {MIN_JAVA} or newer", hint="install a JDK (e.g. openjdk-17)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60,
                         check=False)
    major = parse_java_major(out.stderr + out.stdout)
    if major is None or major < MIN_JAVA:
        found = (out.stderr + out.stdout).strip().splitlines()[:1]
        raise FlowscopeError(COMPONENT, f"Java {MIN_JAVA} or newer is needed; {java} is "
                             f"{found[0] if found else 'of unknown version'}",
                             hint="put a newer JDK first on PATH")
    return java


def render_pom(version: str) -> str:
    """A pom.xml whose runtime dependencies are the broker, its tools and a log4j2 provider."""
    deps = [("org.apache.kafka", "kafka_2.13", version),
            ("org.apache.kafka", "kafka-tools", version),
            ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
            ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
            ("org.slf4j", "slf4j-api", SLF4J_VERSION)]
    body = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>" for g, a, v in deps)
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>flowscope.native</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
{body}
  </dependencies>
</project>
"""


def install(settings: Settings, progress: process.Progress | None = None) -> Path:
    """Resolve the broker's jars from Maven Central into the cache, once; return the folder."""
    paths = KafkaPaths.of(settings)
    if (paths.libs / ".complete").exists():
        return paths.libs
    progress = progress or process.Progress(COMPONENT)
    check_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FlowscopeError(COMPONENT, "mvn (Apache Maven) was not found on PATH; it fetches "
                             "the Kafka jars from Maven Central", hint="install maven")
    paths.pom.parent.mkdir(parents=True, exist_ok=True)
    paths.pom.write_text(render_pom(settings.kafka.version))
    staging = paths.libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    progress.say(f"resolving Apache Kafka {settings.kafka.version} from Maven Central "
                 f"(log: {paths.resolve_log})")
    process.run_step(
        [mvn, "-B", f"-Dmaven.repo.local={paths.maven_repo}", "-f", str(paths.pom),
         f"{DEPENDENCY_PLUGIN}:copy-dependencies", f"-DoutputDirectory={staging}",
         "-DincludeScope=runtime"],
        component=COMPONENT, what="Maven resolution of the Kafka jars", log=paths.resolve_log,
        cwd=paths.pom.parent, env=None, timeout_s=1800, progress=progress)
    (staging / ".complete").write_text(settings.kafka.version)
    shutil.rmtree(paths.libs, ignore_errors=True)
    staging.replace(paths.libs)
    jars = len(list(paths.libs.glob("*.jar")))
    progress.say(f"resolved {jars} jars into {paths.libs}")
    return paths.libs


def render_server_properties(settings: Settings, data_dir: Path) -> str:
    """Combined-mode properties for one node bound to loopback (static controller quorum)."""
    port, cport = settings.kafka.port, settings.kafka.controller_port
    listeners = f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{cport}"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # Static voters: the controller address comes from this file at every start,
        # so ports may change without reformatting the storage.
        "controller.quorum.voters": f"1@{LOOPBACK}:{cport}",
        "listeners": listeners,
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir.resolve()),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = warn
"""


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, and, as Kafka's
    own Uuid.randomUuid ensures, not starting with '-' (a command line would read an option)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def java_command(settings: Settings, main_class: str, *args: str, heap: str = "256m"
                 ) -> list[str]:
    """A java command line running one of Kafka's main classes with our jars and logging."""
    paths = KafkaPaths.of(settings)
    return [check_java(), f"-Xmx{heap}", "-cp", paths.classpath,
            f"-Dlog4j2.configurationFile={paths.log4j_config}",
            f"-Dkafka.logs.dir={paths.logs}", main_class, *args]


def run_tool(settings: Settings, main_class: str, *args: str, timeout_s: float = 120
             ) -> subprocess.CompletedProcess[str]:
    """Run one of Kafka's command-line tools (e.g. ConsumerGroupCommand) and capture its output."""
    install(settings)
    paths = KafkaPaths.of(settings)
    paths.logs.mkdir(parents=True, exist_ok=True)
    if not paths.log4j_config.exists():
        paths.log4j_config.write_text(LOG4J2_PROPERTIES)
    cmd = java_command(settings, main_class, *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def _format_storage(settings: Settings, paths: KafkaPaths, progress: process.Progress) -> None:
    if (paths.data / "meta.properties").exists():
        return
    progress.say(f"formatting storage in {paths.data}")
    paths.data.mkdir(parents=True, exist_ok=True)
    cmd = java_command(settings, "kafka.tools.StorageTool", "format",
                       f"--cluster-id={new_cluster_id()}", "-c", str(paths.config), "-g")
    process.run_step(cmd, component=COMPONENT, what="formatting the broker's storage",
                     log=paths.logs / "format.log", cwd=paths.data.parent, env=None,
                     timeout_s=120, progress=progress)


async def _answers_metadata(bootstrap: str, timeout_s: float) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap,
                            request_timeout_ms=int(timeout_s * 1000),
                            metadata_max_age_ms=60_000)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return bool(client.cluster.brokers())
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


def answers_metadata(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True when a broker at bootstrap answers a metadata request within timeout_s."""
    # aiokafka logs every refused connection while the broker is still starting.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(_answers_metadata(bootstrap, timeout_s))


def status(settings: Settings) -> KafkaStatus:
    """Is the broker up, and where."""
    bootstrap = settings.kafka.bootstrap
    if settings.kafka.external_bootstrap:
        return KafkaStatus(answers_metadata(bootstrap), bootstrap, None, True, None)
    paths = KafkaPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        return KafkaStatus(False, bootstrap, None, False, paths.server_log)
    return KafkaStatus(answers_metadata(str(record.endpoints["bootstrap"])),
                       str(record.endpoints["bootstrap"]), record.pid, False, paths.server_log)


def start(settings: Settings, progress: process.Progress | None = None) -> KafkaStatus:
    """Start the native broker (or find it running, or check the external one) and wait for it."""
    progress = progress or process.Progress(COMPONENT)
    if settings.kafka.external_bootstrap:
        current = status(settings)
        if not current.running:
            raise FlowscopeError(COMPONENT, f"the cluster at KAFKA_BOOTSTRAP_SERVERS="
                                 f"{current.bootstrap} does not answer metadata requests")
        return current
    paths = KafkaPaths.of(settings)
    current = status(settings)
    if current.pid is not None:
        if current.running:
            return current
        return _await_ready(settings, paths, current.pid, progress)
    process.check_ports_free(COMPONENT, {"broker": settings.kafka.port,
                                         "controller": settings.kafka.controller_port},
                             PORT_VARIABLES)
    install(settings, progress)
    for folder in (paths.data, paths.logs):
        folder.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(render_server_properties(settings, paths.data))
    paths.log4j_config.write_text(LOG4J2_PROPERTIES)
    _format_storage(settings, paths, progress)
    progress.say(f"starting the broker on {settings.kafka.bootstrap} (log: {paths.server_log})")
    proc = process.spawn(java_command(settings, MAIN_CLASS, str(paths.config),
                                      heap=settings.kafka.heap),
                         paths.stdout_log, cwd=settings.kafka_dir)
    process.ProcessRecord(proc.pid, str(paths.config), time.time(),
                          {"bootstrap": settings.kafka.bootstrap}).write(paths.pid_file)
    return _await_ready(settings, paths, proc.pid, progress)


def _await_ready(settings: Settings, paths: KafkaPaths, pid: int, progress: process.Progress
                 ) -> KafkaStatus:
    bootstrap = settings.kafka.bootstrap
    record = process.ProcessRecord.read(paths.pid_file)
    if record is not None:
        bootstrap = str(record.endpoints["bootstrap"])
    ready = process.wait_until(lambda: answers_metadata(bootstrap, 2.0),
                               timeout_s=settings.kafka.start_timeout_s, interval_s=0.5,
                               alive=lambda: process.pid_alive(pid))
    if ready:
        progress.say(f"broker ready on {bootstrap} (pid {pid})")
        return KafkaStatus(True, bootstrap, pid, False, paths.server_log)
    alive = process.pid_alive(pid)
    if alive:
        process.terminate(pid, timeout_s=settings.kafka.stop_timeout_s)
    paths.pid_file.unlink(missing_ok=True)
    log = paths.server_log if paths.server_log.exists() else paths.stdout_log
    tail = "\n".join(filter(None, [process.log_tail(paths.stdout_log, 10),
                                   process.log_tail(paths.server_log, 20)]))
    cause = (f"the broker did not answer a metadata request on {bootstrap} within "
             f"{settings.kafka.start_timeout_s:g}s" if alive
             else "the broker exited during start-up")
    raise FlowscopeError(COMPONENT, cause, log=log, log_tail=tail,
                         hint="FLOWSCOPE_KAFKA_START_TIMEOUT gives it longer" if alive else None)


def stop(settings: Settings) -> int | None:
    """Stop the native broker cleanly (SIGTERM, wait, then SIGKILL); the pid stopped, or None."""
    if settings.kafka.external_bootstrap:
        return None
    paths = KafkaPaths.of(settings)
    record = process.running_record(paths.pid_file)
    if record is None:
        return None
    process.terminate(record.pid, timeout_s=settings.kafka.stop_timeout_s)
    paths.pid_file.unlink(missing_ok=True)
    return record.pid
