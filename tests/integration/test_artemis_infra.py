"""`flowscope artemis` against the real broker (the Apache distribution from Maven Central):
status, loopback-only listeners, messages that outlive a restart, an idempotent start, a stop
that leaves nothing behind, an external broker used as is, and clear errors.

Each test has its own FLOWSCOPE_HOME and free ports (the distribution's cache is shared), so a
broker somebody else runs is left alone. A machine without Java or Maven fails, it skips none.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from proton import Message
from proton.utils import BlockingConnection

from flowscope.infra import artemis, process
from tests.integration.conftest import ArtemisBroker, run_flowscope
from tests.integration.demo_stack import free_ports
from tests.integration.test_rabbitmq_infra import _listening, _sockets_of


@pytest.fixture
def artemis_env(tmp_path: Path, artemis_broker: ArtemisBroker) -> Iterator[dict[str, str]]:
    """An environment for a broker of its own: a new home and three free ports (artemis_broker
    makes sure the distribution is in the cache first, once per session)."""
    amqp, core, management = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_ARTEMIS_")}
    env.update(FLOWSCOPE_HOME=str(tmp_path / "home"),
               FLOWSCOPE_CACHE_DIR=str(artemis_broker.settings.cache_dir),
               FLOWSCOPE_ARTEMIS_PORT=str(amqp), FLOWSCOPE_ARTEMIS_CORE_PORT=str(core),
               FLOWSCOPE_ARTEMIS_MANAGEMENT_PORT=str(management))
    yield env
    run_flowscope(env, "artemis", "stop")


def _ports(env: dict[str, str]) -> dict[str, int]:
    return {role: int(env[variable]) for role, variable in artemis.PORT_VARIABLES.items()}


def _marker(env: dict[str, str]) -> str:
    return str(Path(env["FLOWSCOPE_HOME"]) / "artemis" / "broker")


def _status(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    done = run_flowscope(env, "artemis", "status", "--json")
    return done.returncode, json.loads(done.stdout)


def _is_loopback(address: str) -> bool:
    """127.0.0.1 or ::1, also as an IPv4-mapped IPv6 address (Java listens on those)."""
    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)
    return (mapped or parsed).is_loopback


def _send(amqp_port: int, queue: str, body: str) -> None:
    connection = BlockingConnection(f"amqp://127.0.0.1:{amqp_port}", timeout=10,
                                    user="flowscope", password="flowscope")
    try:
        connection.create_sender(queue).send(Message(body=body, durable=True))
    finally:
        connection.close()


def _receive(amqp_port: int, queue: str) -> str:
    connection = BlockingConnection(f"amqp://127.0.0.1:{amqp_port}", timeout=10,
                                    user="flowscope", password="flowscope")
    try:
        receiver = connection.create_receiver(queue, credit=1)
        message = receiver.receive(timeout=10)
        receiver.accept()
        return str(message.body)
    finally:
        connection.close()


def test_artemis_start_binds_loopback_only_keeps_messages_and_stop_leaves_nothing(
        artemis_env: dict[str, str]) -> None:
    env, ports, marker = artemis_env, _ports(artemis_env), _marker(artemis_env)
    installed = run_flowscope(env, "artemis", "install")
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.strip().endswith("/apache-artemis-2.40.0")

    code, before = _status(env)
    assert code == 3
    expected = {"amqp_url": f"amqp://***@127.0.0.1:{ports['amqp']}",
                "management_url": f"http://***@127.0.0.1:{ports['management']}/console/jolokia",
                "log": f"{marker}/log/artemis.log"}
    assert before == {"running": False, "pid": None, **expected}

    first = run_flowscope(env, "artemis", "start")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"amqp {expected['amqp_url']}",
                                         f"management {expected['management_url']}"]
    code, running = _status(env)
    assert code == 0
    [pid] = process.find_processes(marker)
    assert running == {"running": True, "pid": pid, **expected}
    assert Path(process.cmdline(pid)[0]).name == "java"  # the start script exec'd the JVM
    sockets = _sockets_of({pid})
    assert all(_is_loopback(address) for address, _ in sockets), sockets
    assert {port for _, port in sockets} == set(ports.values()), sockets
    # AMQP to a queue nobody declared (ANYCAST by default), kept in the instance's journal.
    _send(ports["amqp"], "probe.restart", "kept")
    assert any((Path(marker) / "data" / "journal").iterdir())

    again = run_flowscope(env, "artemis", "start")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert f"already running (pid {pid}); starting nothing" in again.stderr
    assert process.find_processes(marker) == [pid]

    stopped = run_flowscope(env, "artemis", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"artemis: stopped (pid {pid})"
    assert process.find_processes(marker) == []
    assert not [item for item in _listening() if item[1] in ports.values()]
    assert _status(env) == (3, before)
    assert run_flowscope(env, "artemis", "stop").stdout.strip() == "artemis: not running"

    # Started again (the instance is reused, not created again), the message is still there.
    restarted = run_flowscope(env, "artemis", "start")
    assert restarted.returncode == 0, restarted.stderr
    assert "creating the broker instance" not in restarted.stderr
    assert _receive(ports["amqp"], "probe.restart") == "kept"


def test_artemis_external_broker_is_used_and_nothing_started(
        artemis_broker: ArtemisBroker, tmp_path: Path) -> None:
    env = dict(artemis_broker.env, FLOWSCOPE_HOME=str(tmp_path / "other-home"),
               FLOWSCOPE_ARTEMIS_URL=artemis_broker.amqp_url,
               FLOWSCOPE_ARTEMIS_MANAGEMENT_URL=artemis_broker.management_url)
    code, shown = _status(env)
    assert (code, shown["running"], shown["pid"], shown["log"]) == (0, True, None, None)
    assert "flowscope:flowscope" not in json.dumps(shown)
    done = {verb: run_flowscope(env, "artemis", verb) for verb in ("start", "stop", "install")}
    assert all(result.returncode == 0 for result in done.values()), done
    assert "starting none" in done["start"].stderr
    assert "nothing to stop" in done["stop"].stdout
    assert "nothing to install" in done["install"].stdout
    assert not (tmp_path / "other-home" / "artemis").exists()

    wrong = urlsplit(artemis_broker.management_url)
    env["FLOWSCOPE_ARTEMIS_MANAGEMENT_URL"] = wrong._replace(
        netloc=f"flowscope:wrong@{wrong.hostname}:{wrong.port}").geturl()
    refused = run_flowscope(env, "artemis", "start")
    assert refused.returncode == 1
    assert "artemis: Jolokia at FLOWSCOPE_ARTEMIS_MANAGEMENT_URL=http://***@" in refused.stderr
    assert "check the user and password" in refused.stderr
    [free] = free_ports(1)
    env["FLOWSCOPE_ARTEMIS_MANAGEMENT_URL"] = f"http://a:b@127.0.0.1:{free}/console/jolokia"
    silent = run_flowscope(env, "artemis", "start")
    assert silent.returncode == 1
    assert f"127.0.0.1:{free}/console/jolokia does not answer" in silent.stderr
    assert "Traceback" not in refused.stderr + silent.stderr


@pytest.mark.parametrize("role", ["amqp", "core", "management"])
def test_artemis_start_names_the_port_another_process_holds(
        artemis_env: dict[str, str], role: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        artemis_env[artemis.PORT_VARIABLES[role]] = str(port)
        done = run_flowscope(artemis_env, "artemis", "start")
    assert done.returncode == 1
    assert f"artemis: {role} port {port} on 127.0.0.1 already in use" in done.stderr
    assert artemis.PORT_VARIABLES[role] in done.stderr
    assert "Traceback" not in done.stderr
    assert process.find_processes(_marker(artemis_env)) == []


def test_artemis_instance_folder_in_the_way_is_a_clear_error_and_leaves_no_process(
        artemis_env: dict[str, str]) -> None:
    run = Path(artemis_env["FLOWSCOPE_HOME"]) / "artemis"
    run.mkdir(parents=True)
    (run / "broker").write_text("in the way")
    done = run_flowscope(artemis_env, "artemis", "start")
    assert done.returncode == 1
    assert "artemis: creating the broker instance (artemis create) failed" in done.stderr
    assert f"log: {run}/create.log" in done.stderr
    assert "Traceback" not in done.stderr
    assert process.find_processes(_marker(artemis_env)) == []
