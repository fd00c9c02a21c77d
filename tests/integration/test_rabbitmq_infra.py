"""`flowscope rabbitmq` against the real node (Debian's rabbitmq-server): status, loopback-only
listeners, an idempotent start, a stop that leaves nothing behind, and clear errors.

Each test has its own FLOWSCOPE_HOME and free ports, so a node somebody else runs is left alone.
A machine without the package fails these tests (with the apt-get command), it skips none.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from base.settings import Settings
from flowscope.infra import process, rabbitmq
from tests.integration.conftest import run_flowscope
from tests.integration.demo_stack import free_ports

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
LOOPBACKS = {"127.0.0.1", "::1"}


@pytest.fixture
def rabbitmq_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment for a node of its own: a new home and four free ports."""
    amqp, management, dist, epmd = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_RABBITMQ_")}
    env.update(FLOWSCOPE_HOME=str(tmp_path / "home"), FLOWSCOPE_RABBITMQ_PORT=str(amqp),
               FLOWSCOPE_RABBITMQ_MANAGEMENT_PORT=str(management),
               FLOWSCOPE_RABBITMQ_DIST_PORT=str(dist), FLOWSCOPE_RABBITMQ_EPMD_PORT=str(epmd))
    yield env
    run_flowscope(env, "rabbitmq", "stop")


def _ports(env: dict[str, str]) -> dict[str, int]:
    return {role: int(env[variable]) for role, variable in rabbitmq.PORT_VARIABLES.items()}


def _marker(env: dict[str, str]) -> str:
    return str(Path(env["FLOWSCOPE_HOME"]) / "rabbitmq" / "rabbitmq.conf")


def _listening() -> list[tuple[str, int, str]]:
    """(address, port, socket inode) of every listening TCP socket, IPv4 and IPv6."""
    found = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # each 32-bit word is in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((str(ipaddress.ip_address(packed[:width])), int(port, 16), fields[9]))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    except OSError:  # the process ended, or an fd closed while we read
        pass
    return inodes


def _children(pid: int) -> set[int]:
    """Every descendant of pid."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def _holders(port: int) -> set[int]:
    """Pids holding a listening socket on port (any address)."""
    inodes = {inode for _, p, inode in _listening() if p == port}
    return {int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _socket_inodes(int(entry.name)) & inodes}


def _node_tree(beam: int, epmd_port: int) -> set[int]:
    """The VM, everything it started, and the epmd it registered with."""
    return {beam} | _children(beam) | _holders(epmd_port)


def _sockets_of(pids: set[int]) -> set[tuple[str, int]]:
    inodes = set().union(*(_socket_inodes(pid) for pid in pids))
    return {(address, port) for address, port, inode in _listening() if inode in inodes}


def _amqp_handshake(port: int) -> bytes:
    """The first frame a broker sends after the AMQP 0-9-1 protocol header."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"AMQP\x00\x00\x09\x01")
        return conn.recv(7)


def _overview(management_port: int) -> dict[str, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{management_port}/api/overview")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as answer:
        body: dict[str, object] = json.loads(answer.read())
        return body


def _check_broker_on_loopback(ports: dict[str, int], beam: int) -> set[int]:
    """It is RabbitMQ, and every socket its process tree listens on is a loopback one of our
    ports; the tree's pids."""
    # AMQP 0-9-1 answers the protocol header with a method frame on channel 0, and the
    # management API (guest, from loopback) lists the AMQP listener on our port.
    assert _amqp_handshake(ports["amqp"])[:3] == b"\x01\x00\x00"
    listeners = _overview(ports["management"])["listeners"]
    assert isinstance(listeners, list)
    assert {(item["protocol"], item["port"]) for item in listeners} >= {
        ("amqp", ports["amqp"]), ("http", ports["management"])}
    tree = _node_tree(beam, ports["epmd"])
    sockets = _sockets_of(tree)
    assert {address for address, _ in sockets} <= LOOPBACKS, sockets
    assert {port for _, port in sockets} == set(ports.values()), sockets
    return tree


def _status(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    done = run_flowscope(env, "rabbitmq", "status", "--json")
    return done.returncode, json.loads(done.stdout)


def test_rabbitmq_start_binds_loopback_only_is_idempotent_and_stop_leaves_nothing(
        rabbitmq_env: dict[str, str]) -> None:
    env, ports, marker = rabbitmq_env, _ports(rabbitmq_env), _marker(rabbitmq_env)
    installed = run_flowscope(env, "rabbitmq", "install")
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.startswith("rabbitmq-server 3.")

    code, before = _status(env)
    assert code == 3
    log = Path(env["FLOWSCOPE_HOME"]) / "rabbitmq" / "logs" / \
        f"{rabbitmq.node_name(Settings.from_env(env))}.log"
    expected = {"amqp_url": f"amqp://***@127.0.0.1:{ports['amqp']}/",
                "management_url": f"http://***@127.0.0.1:{ports['management']}",
                "log": str(log)}
    assert before == {"running": False, "pid": None, **expected}

    began = time.monotonic()
    first = run_flowscope(env, "rabbitmq", "start")
    took = time.monotonic() - began
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"amqp {expected['amqp_url']}",
                                         f"management {expected['management_url']}"]
    assert "[rabbitmq" in first.stderr
    assert "starting node flowscope-" in first.stderr
    assert "node ready" in first.stderr
    print(f"rabbitmq start took {took:.1f}s")

    code, running = _status(env)
    assert code == 0
    beams = [pid for pid in process.find_processes(marker)
             if Path(process.cmdline(pid)[0]).name == "beam.smp"]
    assert len(beams) == 1
    assert running == {"running": True, "pid": beams[0], **expected}
    assert log.exists()
    tree = _check_broker_on_loopback(ports, beams[0])

    ours = set(process.find_processes(marker))
    again = run_flowscope(env, "rabbitmq", "start")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert f"already running (pid {beams[0]}); starting nothing" in again.stderr
    assert set(process.find_processes(marker)) == ours
    assert _status(env)[1]["pid"] == beams[0]

    began = time.monotonic()
    stopped = run_flowscope(env, "rabbitmq", "stop")
    print(f"rabbitmq stop took {time.monotonic() - began:.1f}s")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"rabbitmq: stopped (pid {beams[0]})"
    assert process.find_processes(marker) == []
    assert not any(process.pid_alive(pid) for pid in tree | ours)
    assert not [item for item in _listening() if item[1] in ports.values()]
    assert not (Path(env["FLOWSCOPE_HOME"]) / "rabbitmq" / "rabbitmq.pid").exists()
    code, after = _status(env)
    assert code == 3
    assert after == before
    assert run_flowscope(env, "rabbitmq", "stop").stdout.strip() == "rabbitmq: not running"


def test_rabbitmq_external_broker_is_used_and_nothing_started(
        rabbitmq_env: dict[str, str], tmp_path: Path) -> None:
    started = run_flowscope(rabbitmq_env, "rabbitmq", "start")
    assert started.returncode == 0, started.stderr
    ports = _ports(rabbitmq_env)
    env = dict(rabbitmq_env, FLOWSCOPE_HOME=str(tmp_path / "other-home"),
               FLOWSCOPE_RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{ports['amqp']}/",
               FLOWSCOPE_RABBITMQ_MANAGEMENT_URL=f"http://guest:guest@127.0.0.1:"
                                                 f"{ports['management']}")
    expected = {"running": True, "pid": None,
                "amqp_url": f"amqp://***@127.0.0.1:{ports['amqp']}/",
                "management_url": f"http://***@127.0.0.1:{ports['management']}", "log": None}
    assert _status(env) == (0, expected)
    done = {verb: run_flowscope(env, "rabbitmq", verb) for verb in ("start", "stop", "install")}
    assert all(result.returncode == 0 for result in done.values()), done
    assert "starting none" in done["start"].stderr
    assert "nothing to stop" in done["stop"].stdout
    assert "nothing to install" in done["install"].stdout
    assert not (tmp_path / "other-home" / "rabbitmq").exists()
    assert not any("guest" in result.stdout + result.stderr for result in done.values())

    env["FLOWSCOPE_RABBITMQ_MANAGEMENT_URL"] = \
        f"http://guest:wrong-secret@127.0.0.1:{ports['management']}"
    refused = run_flowscope(env, "rabbitmq", "start")
    assert refused.returncode == 1
    assert "rabbitmq: the management API at FLOWSCOPE_RABBITMQ_MANAGEMENT_URL=" \
           f"http://***@127.0.0.1:{ports['management']} answered HTTP 401" in refused.stderr
    assert "check the user and password" in refused.stderr
    assert "wrong-secret" not in refused.stderr


@pytest.mark.parametrize("role", ["amqp", "epmd"])
def test_rabbitmq_start_names_the_port_another_process_holds(
        rabbitmq_env: dict[str, str], role: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        rabbitmq_env[rabbitmq.PORT_VARIABLES[role]] = str(port)
        done = run_flowscope(rabbitmq_env, "rabbitmq", "start")
    assert done.returncode == 1
    assert f"rabbitmq: {role} port {port} on 127.0.0.1 already in use" in done.stderr
    assert rabbitmq.PORT_VARIABLES[role] in done.stderr
    assert "Traceback" not in done.stderr
    assert process.find_processes(_marker(rabbitmq_env)) == []


def test_rabbitmq_not_ready_in_time_shows_its_log_and_leaves_no_process(
        rabbitmq_env: dict[str, str]) -> None:
    rabbitmq_env["FLOWSCOPE_RABBITMQ_START_TIMEOUT"] = "0.5"
    done = run_flowscope(rabbitmq_env, "rabbitmq", "start")
    assert done.returncode == 1
    assert "rabbitmq: the node did not answer on its management API" in done.stderr
    assert "within 0.5s" in done.stderr
    assert f"log: {rabbitmq_env['FLOWSCOPE_HOME']}/rabbitmq/logs/" in done.stderr
    assert "last lines of the log" in done.stderr
    assert "FLOWSCOPE_RABBITMQ_START_TIMEOUT" in done.stderr
    assert process.find_processes(_marker(rabbitmq_env)) == []
    ports = _ports(rabbitmq_env)
    assert not [item for item in _listening() if item[1] in ports.values()]


def test_rabbitmq_shares_an_idle_epmd_and_stops_it_with_the_node(
        rabbitmq_env: dict[str, str]) -> None:
    """An epmd left behind (say, by a node killed outright) is no port conflict."""
    epmd_port = _ports(rabbitmq_env)["epmd"]
    subprocess.run([rabbitmq.find_epmd(), "-daemon", "-port", str(epmd_port),
                    "-address", "127.0.0.1"], check=True, timeout=10)
    try:
        assert process.wait_until(lambda: process.port_in_use(epmd_port), timeout_s=10)
        started = run_flowscope(rabbitmq_env, "rabbitmq", "start")
        assert started.returncode == 0, started.stderr
        assert f"sharing the epmd already on 127.0.0.1:{epmd_port}" in started.stderr
        stopped = run_flowscope(rabbitmq_env, "rabbitmq", "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not _holders(epmd_port)
    finally:
        subprocess.run([rabbitmq.find_epmd(), "-port", str(epmd_port), "-kill"],
                       capture_output=True, timeout=10, check=False)
