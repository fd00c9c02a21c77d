"""A native PostgreSQL server: Debian's server binaries, a cluster of its own.

The cluster is made once with initdb (role `flowscope`, a random password kept in
FLOWSCOPE_HOME/postgres/password, readable by its owner only; scram-sha-256 for every
connection, so other local users need that password), then the server runs with its TCP
listener on 127.0.0.1 and its Unix socket in a folder of its own, and the database `flowscope`
is made. PostgreSQL refuses to run as root: run as root, Flowscope runs initdb and the server as
the `postgres` account the Debian package makes; when that account cannot reach
FLOWSCOPE_HOME (a home under /root), the cluster lives in /var/lib/flowscope/postgres-<hash of
the home>, owned by that account, and FLOWSCOPE_HOME/postgres/data links to it. When
FLOWSCOPE_POSTGRES_URL is set, that server is used and nothing is started.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from base.errors import FlowscopeError
from base.settings import LOOPBACK, Settings, redact_url
from flowscope.infra import process

COMPONENT = "postgres"
PORT_VARIABLES = {"server": "FLOWSCOPE_POSTGRES_PORT"}
VERSIONS_DIR = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/<major>/bin
SERVER_ACCOUNT = "postgres"  # who runs the server when Flowscope runs as root
SHARED_ROOT = Path("/var/lib/flowscope")
INSTALL_HINT = ("install Debian's PostgreSQL server: sudo apt-get install -y postgresql (`make "
                "infra` does it when run as root); or point FLOWSCOPE_POSTGRES_URL at a server")
STEP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PostgresStatus:
    """Whether the server accepts connections, where, and (for the native one) its pid and
    log. The URL holds the password: as_json shows it redacted."""

    running: bool
    pid: int | None
    url: str
    external: bool
    log: Path | None

    def as_json(self) -> dict[str, object]:
        """The shape `flowscope postgres status --json` prints."""
        return {"running": self.running, "pid": self.pid, "url": redact_url(self.url),
                "log": str(self.log) if self.log else None}


@dataclass(frozen=True)
class PostgresPaths:
    """Where the native server keeps its cluster and its run state."""

    run: Path  # FLOWSCOPE_HOME/postgres
    server_root: Path  # what the server's account owns: run, or a folder it can reach
    data: Path
    socket: Path
    password_file: Path
    log: Path
    pid_file: Path
    init_log: Path

    @classmethod
    def of(cls, settings: Settings, account: tuple[int, int] | None) -> PostgresPaths:
        """Paths for these settings, the server run as account (None: as this user)."""
        run = settings.postgres_dir
        root = run
        if account is not None and not _reachable(run, *account):
            digest = hashlib.sha256(str(run.resolve()).encode()).hexdigest()[:12]
            root = SHARED_ROOT / f"postgres-{digest}"
        return cls(run=run, server_root=root, data=root / "data", socket=root / "socket",
                   password_file=run / "password", log=run / "postgres.log",
                   pid_file=run / "postgres.pid", init_log=run / "initdb.log")


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """True when the account can reach path (every existing folder above it searchable)."""
    for folder in [p for p in (path, *path.parents) if p.exists()]:
        mode = folder.stat()
        allowed = (mode.st_uid == uid and mode.st_mode & stat.S_IXUSR) or \
            (mode.st_gid == gid and mode.st_mode & stat.S_IXGRP) or mode.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def server_account() -> tuple[int, int] | None:
    """(uid, gid) the server runs as: None when Flowscope does not run as root, else the
    `postgres` account's."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise FlowscopeError(COMPONENT, f"PostgreSQL refuses to run as root, and there is no "
                             f"{SERVER_ACCOUNT!r} account to run it as",
                             hint=INSTALL_HINT) from None
    return entry.pw_uid, entry.pw_gid


def binaries() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder (initdb, postgres), or None."""
    found = [p / "bin" for p in VERSIONS_DIR.glob("*")
             if (p / "bin" / "initdb").exists() and (p / "bin" / "postgres").exists()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
               default=None)


def install(settings: Settings) -> Path:
    """Check that the server binaries are there (Debian's package; nothing to download)."""
    if settings.postgres.external:
        return Path()
    found = binaries()
    if found is None:
        raise FlowscopeError(COMPONENT, f"Debian's PostgreSQL server is not installed (no "
                             f"{VERSIONS_DIR}/<version>/bin/initdb)", hint=INSTALL_HINT)
    return found


def url_of(settings: Settings, password: str, port: int | None = None) -> str:
    """The native server's URL, password included (redact it before showing)."""
    postgres = settings.postgres
    return (f"postgresql://{postgres.user}:{quote(password, safe='')}@{LOOPBACK}:"
            f"{port or postgres.port}/{postgres.database}")


def _password(paths: PostgresPaths) -> str:
    try:
        return paths.password_file.read_text().strip()
    except OSError:
        return ""


def accepting(bin_dir: Path | None, *where: str) -> bool:
    """True when the server pg_isready finds at where (-h host -p port, or -d URL) accepts
    connections; False without the client binaries."""
    if bin_dir is None:
        return False
    done = subprocess.run([str(bin_dir / "pg_isready"), "-q", *where, "-t", "2"],
                          capture_output=True, check=False, timeout=10)
    return done.returncode == 0


def status(settings: Settings) -> PostgresStatus:
    """Is the server up, and where."""
    postgres = settings.postgres
    if postgres.external:
        assert postgres.external_url is not None
        return PostgresStatus(accepting(binaries(), "-d", postgres.external_url), None,
                              postgres.external_url, True, None)
    paths = PostgresPaths.of(settings, server_account())
    record = process.running_record(paths.pid_file)
    bin_dir = binaries()
    if record is None or bin_dir is None:
        return PostgresStatus(False, None, url_of(settings, _password(paths)), False, paths.log)
    port = int(str(record.endpoints["server"]))
    return PostgresStatus(accepting(bin_dir, "-h", LOOPBACK, "-p", str(port)), record.pid,
                          url_of(settings, _password(paths), port), False, paths.log)


def start(settings: Settings, progress: process.Progress | None = None) -> PostgresStatus:
    """Start the native server (or find it running, or check the external one); wait for it
    and make the database."""
    progress = progress or process.Progress(COMPONENT)
    postgres = settings.postgres
    if postgres.external:
        assert postgres.external_url is not None
        progress.say(f"using the server at FLOWSCOPE_POSTGRES_URL="
                     f"{redact_url(postgres.external_url)}; starting none")
        current = status(settings)
        if not current.running:
            raise FlowscopeError(COMPONENT, f"the server at {redact_url(current.url)} does not "
                                 "accept connections", hint="check FLOWSCOPE_POSTGRES_URL")
        return current
    account = server_account()
    paths = PostgresPaths.of(settings, account)
    bin_dir = install(settings)
    record = process.running_record(paths.pid_file)
    if record is not None:
        if status(settings).running:
            progress.say(f"already running (pid {record.pid}); starting nothing")
            return status(settings)
        return _await_ready(settings, paths, bin_dir, record, progress)
    process.check_ports_free(COMPONENT, postgres.ports, PORT_VARIABLES)
    _init_cluster(settings, paths, bin_dir, account, progress)
    progress.say(f"starting PostgreSQL on {LOOPBACK}:{postgres.port} (log: {paths.log})")
    proc = process.spawn(
        [str(bin_dir / "postgres"), "-D", str(paths.data), "-p", str(postgres.port),
         "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={paths.socket}",
         "-c", "logging_collector=off"],
        paths.log, cwd=paths.server_root, env={"PATH": os.environ.get("PATH", "/usr/bin")},
        account=account)
    record = process.ProcessRecord(proc.pid, str(paths.data), time.time(), dict(postgres.ports))
    record.write(paths.pid_file)
    return _await_ready(settings, paths, bin_dir, record, progress)


def _init_cluster(settings: Settings, paths: PostgresPaths, bin_dir: Path,
                  account: tuple[int, int] | None, progress: process.Progress) -> None:
    """initdb once: role flowscope with a new random password, scram-sha-256 everywhere."""
    if (paths.data / "PG_VERSION").exists():
        return
    progress.say(f"creating the cluster in {paths.data} (log: {paths.init_log})")
    try:
        paths.run.mkdir(parents=True, exist_ok=True)
        for folder in (paths.server_root, paths.socket):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if account is not None:
                os.chown(folder, *account)
        if paths.server_root != paths.run:
            link = paths.run / "data"
            if not link.is_symlink():
                link.symlink_to(paths.data)
        password = secrets.token_urlsafe(24)
        paths.password_file.write_text(password + "\n")
        paths.password_file.chmod(0o600)
        given = paths.server_root / ".initdb-password"  # initdb reads it as the account
        given.write_text(password + "\n")
        given.chmod(0o600)
        if account is not None:
            os.chown(given, *account)
    except OSError as exc:
        raise FlowscopeError(COMPONENT, f"cannot prepare the cluster's folders: "
                             f"{exc.strerror or exc} ({exc.filename})",
                             hint="check that FLOWSCOPE_HOME is writable") from None
    try:
        with paths.init_log.open("ab") as log:
            done = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(paths.data), "-U", settings.postgres.user,
                 "--auth=scram-sha-256", f"--pwfile={given}", "-E", "UTF8", "--locale=C",
                 "--no-instructions"],
                stdout=log, stderr=subprocess.STDOUT, cwd=paths.server_root, check=False,
                timeout=STEP_TIMEOUT_S, **process.run_as(account))
    finally:
        given.unlink(missing_ok=True)
    if done.returncode != 0:
        raise FlowscopeError(COMPONENT, f"initdb failed (exit {done.returncode})",
                             log=paths.init_log, log_tail=process.log_tail(paths.init_log))


def _await_ready(settings: Settings, paths: PostgresPaths, bin_dir: Path,
                 record: process.ProcessRecord, progress: process.Progress) -> PostgresStatus:
    postgres = settings.postgres
    port = int(str(record.endpoints["server"]))
    if process.wait_until(lambda: accepting(bin_dir, "-h", LOOPBACK, "-p", str(port)),
                          timeout_s=postgres.start_timeout_s,
                          interval_s=0.2, alive=lambda: process.pid_alive(record.pid)):
        _ensure_database(settings, paths, bin_dir, port)
        current = status(settings)
        progress.say(f"ready on {redact_url(current.url)} (pid {record.pid})")
        return current
    alive = process.pid_alive(record.pid)
    if alive:
        process.terminate(record.pid, timeout_s=postgres.stop_timeout_s, sig=signal.SIGINT)
    paths.pid_file.unlink(missing_ok=True)
    cause = (f"PostgreSQL did not accept connections within {postgres.start_timeout_s:g}s"
             if alive else "PostgreSQL exited during start-up")
    raise FlowscopeError(COMPONENT, cause, log=paths.log, log_tail=process.log_tail(paths.log),
                         hint="FLOWSCOPE_POSTGRES_START_TIMEOUT gives it longer" if alive
                         else None)


def _ensure_database(settings: Settings, paths: PostgresPaths, bin_dir: Path, port: int) -> None:
    """Make the database `flowscope` when the cluster has none."""
    postgres = settings.postgres
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "PGPASSWORD": _password(paths),
           "PGCONNECT_TIMEOUT": "10"}
    where = ["-h", LOOPBACK, "-p", str(port), "-U", postgres.user]
    found = subprocess.run([str(bin_dir / "psql"), *where, "-d", "postgres", "-tAc",
                            "SELECT 1 FROM pg_database WHERE datname = "
                            f"'{postgres.database}'"],
                           env=env, capture_output=True, text=True, check=False,
                           timeout=STEP_TIMEOUT_S)
    if found.returncode == 0 and found.stdout.strip() == "1":
        return
    made = subprocess.run([str(bin_dir / "createdb"), *where, postgres.database], env=env,
                          capture_output=True, text=True, check=False, timeout=STEP_TIMEOUT_S)
    if made.returncode != 0:
        raise FlowscopeError(COMPONENT, f"cannot make the database {postgres.database}: "
                             f"{(made.stderr or found.stderr).strip()[:500]}", log=paths.log)


def stop(settings: Settings, progress: process.Progress | None = None) -> int | None:
    """Stop the native server (SIGINT: PostgreSQL's fast shutdown, which ends the sessions
    and writes a checkpoint; then SIGKILL); the pid stopped, or None."""
    if settings.postgres.external:
        return None
    paths = PostgresPaths.of(settings, server_account())
    record = process.running_record(paths.pid_file)
    if record is None:
        return None
    if progress is not None:
        progress.say(f"stopping PostgreSQL (pid {record.pid})")
    process.terminate(record.pid, timeout_s=settings.postgres.stop_timeout_s, sig=signal.SIGINT)
    paths.pid_file.unlink(missing_ok=True)
    return record.pid
