"""`flowscope postgres` against the real server (Debian's PostgreSQL): status, a loopback-only
listener, a cluster that outlives a restart, the role's password required (another local user
without it is refused), an idempotent start, a stop that leaves nothing behind, and a clear
error for a port already held.

Each test has its own FLOWSCOPE_HOME and a free port, so a server somebody else runs is left
alone.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from base.settings import Settings
from flowscope.infra import postgres, process
from tests.integration.conftest import run_flowscope
from tests.integration.demo_stack import free_ports
from tests.integration.test_rabbitmq_infra import LOOPBACKS, _listening, _sockets_of


@pytest.fixture
def postgres_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment for a server of its own: a new home and a free port."""
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_POSTGRES_")}
    env.update(FLOWSCOPE_HOME=str(tmp_path / "home"), FLOWSCOPE_POSTGRES_PORT=str(port))
    yield env
    run_flowscope(env, "postgres", "stop")
    # A cluster the server's account could not keep under the home (run as root, a home under
    # a folder only root can enter) is in SHARED_ROOT: it goes with the test.
    root = postgres.PostgresPaths.of(Settings.from_env(env), postgres.server_account()).server_root
    if root.is_relative_to(postgres.SHARED_ROOT):
        shutil.rmtree(root, ignore_errors=True)


def _status(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    done = run_flowscope(env, "postgres", "status", "--json")
    return done.returncode, json.loads(done.stdout)


def _psql(env: dict[str, str], sql: str, *, password: str | None,
          account: str | None = None) -> subprocess.CompletedProcess[str]:
    """sql through psql over TCP as the role flowscope (as another account when given)."""
    bin_dir = postgres.binaries()
    assert bin_dir is not None
    client_env = {"PATH": os.environ["PATH"], "PGCONNECT_TIMEOUT": "10",
                  **({"PGPASSWORD": password} if password is not None else {})}
    identity = {}
    if account is not None:
        entry = pwd.getpwnam(account)
        identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    return subprocess.run(
        [str(bin_dir / "psql"), "-w", "-h", "127.0.0.1", "-p", env["FLOWSCOPE_POSTGRES_PORT"],
         "-U", "flowscope", "-d", "flowscope", "-tAc", sql], env=client_env, cwd="/",
        capture_output=True, text=True, timeout=30, check=False, **identity)


def test_postgres_start_binds_loopback_only_keeps_data_and_stop_leaves_nothing(
        postgres_env: dict[str, str]) -> None:
    env, port = postgres_env, int(postgres_env["FLOWSCOPE_POSTGRES_PORT"])
    installed = run_flowscope(env, "postgres", "install")
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.strip().endswith("/bin")

    code, before = _status(env)
    assert code == 3
    expected = {"url": f"postgresql://***@127.0.0.1:{port}/flowscope",
                "log": f"{env['FLOWSCOPE_HOME']}/postgres/postgres.log"}
    assert before == {"running": False, "pid": None, **expected}

    first = run_flowscope(env, "postgres", "start")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"url {expected['url']}"]
    assert "creating the cluster" in first.stderr
    code, running = _status(env)
    assert code == 0
    pid = running["pid"]
    assert isinstance(pid, int)
    assert running == {"running": True, "pid": pid, **expected}
    sockets = _sockets_of({pid})
    assert {address for address, _ in sockets} <= LOOPBACKS, sockets
    assert {p for _, p in sockets} == {port}, sockets

    password_file = Path(env["FLOWSCOPE_HOME"]) / "postgres" / "password"
    assert password_file.stat().st_mode & 0o077 == 0  # its owner's only
    password = password_file.read_text().strip()
    made = _psql(env, "CREATE TABLE probe (n int); INSERT INTO probe VALUES (7); "
                 "SELECT current_user", password=password)
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == ["CREATE TABLE", "INSERT 0 1", "flowscope"]
    refused = _psql(env, "SELECT 1", password=None,
                    account="nobody" if os.geteuid() == 0 else None)
    assert refused.returncode != 0
    assert "password" in refused.stderr

    again = run_flowscope(env, "postgres", "start")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert f"already running (pid {pid}); starting nothing" in again.stderr

    stopped = run_flowscope(env, "postgres", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"postgres: stopped (pid {pid})"
    assert not process.pid_alive(pid)
    assert not [item for item in _listening() if item[1] == port]
    assert _status(env) == (3, before)
    assert run_flowscope(env, "postgres", "stop").stdout.strip() == "postgres: not running"

    # Started again, the cluster still holds what was written before the stop.
    restarted = run_flowscope(env, "postgres", "start")
    assert restarted.returncode == 0, restarted.stderr
    assert "creating the cluster" not in restarted.stderr
    assert _psql(env, "SELECT n FROM probe", password=password).stdout.strip() == "7"


def test_postgres_start_names_the_port_another_process_holds(
        postgres_env: dict[str, str]) -> None:
    port = int(postgres_env["FLOWSCOPE_POSTGRES_PORT"])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = run_flowscope(postgres_env, "postgres", "start")
    assert done.returncode != 0
    assert str(port) in done.stderr
    assert "FLOWSCOPE_POSTGRES_PORT" in done.stderr
    assert _status(postgres_env)[1]["running"] is False
