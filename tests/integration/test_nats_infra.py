"""`flowscope nats` against the real server (nats-server built from the Go module proxy):
status, loopback-only listeners, JetStream storage under FLOWSCOPE_HOME that outlives a restart,
an idempotent start, a stop that leaves nothing behind, and clear errors.

Each test has its own FLOWSCOPE_HOME and free ports (the build cache is shared), so a server
somebody else runs is left alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import nats as nats_client
import pytest

from flowscope.infra import nats, process
from tests.integration.conftest import run_flowscope
from tests.integration.demo_stack import free_ports
from tests.integration.test_rabbitmq_infra import LOOPBACKS, _listening, _sockets_of


@pytest.fixture
def nats_env(tmp_path: Path, nats_server: nats.NatsStatus) -> Iterator[dict[str, str]]:
    """An environment for a server of its own: a new home and two free ports (nats_server
    makes sure the binary is built first, once per session)."""
    client, monitoring = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_NATS_")}
    env.update(FLOWSCOPE_HOME=str(tmp_path / "home"), FLOWSCOPE_NATS_PORT=str(client),
               FLOWSCOPE_NATS_MONITORING_PORT=str(monitoring))
    if "FLOWSCOPE_CACHE_DIR" not in env:
        env["FLOWSCOPE_CACHE_DIR"] = str(Path.home() / ".flowscope" / "cache")
    yield env
    run_flowscope(env, "nats", "stop")


def _ports(env: dict[str, str]) -> dict[str, int]:
    return {role: int(env[variable]) for role, variable in nats.PORT_VARIABLES.items()}


def _marker(env: dict[str, str]) -> str:
    return str(Path(env["FLOWSCOPE_HOME"]) / "nats" / "nats-server.conf")


def _status(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    done = run_flowscope(env, "nats", "status", "--json")
    return done.returncode, json.loads(done.stdout)


async def _publish_and_count(url: str, stream: str, publish: int) -> int:
    """Publish into a file-stored stream (made when missing); how many messages it holds."""
    client = await nats_client.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        jetstream = client.jetstream(timeout=10)
        await jetstream.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        for number in range(publish):
            await jetstream.publish(f"{stream.lower()}.x", str(number).encode())
        return int((await jetstream.stream_info(stream)).state.messages)
    finally:
        await client.close()


def test_nats_start_binds_loopback_only_keeps_jetstream_data_and_stop_leaves_nothing(
        nats_env: dict[str, str]) -> None:
    env, ports, marker = nats_env, _ports(nats_env), _marker(nats_env)
    installed = run_flowscope(env, "nats", "install")
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.strip().endswith("/bin/nats-server")

    code, before = _status(env)
    assert code == 3
    expected = {"url": f"nats://127.0.0.1:{ports['client']}",
                "monitoring_url": f"http://127.0.0.1:{ports['monitoring']}",
                "log": f"{env['FLOWSCOPE_HOME']}/nats/nats-server.log"}
    assert before == {"running": False, "pid": None, **expected}

    first = run_flowscope(env, "nats", "start")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"url {expected['url']}",
                                         f"monitoring {expected['monitoring_url']}"]
    assert "JetStream on" in first.stderr
    code, running = _status(env)
    assert code == 0
    [pid] = process.find_processes(marker)
    assert running == {"running": True, "pid": pid, **expected}
    sockets = _sockets_of({pid})
    assert {address for address, _ in sockets} <= LOOPBACKS, sockets
    assert {port for _, port in sockets} == set(ports.values()), sockets
    # A client speaks to it: JetStream keeps messages in FLOWSCOPE_HOME's store.
    assert asyncio.run(_publish_and_count(str(expected["url"]), "PROBE", 3)) == 3
    store = Path(env["FLOWSCOPE_HOME"]) / "nats" / "jetstream"
    assert any(path.name == "PROBE" for path in store.rglob("PROBE"))

    again = run_flowscope(env, "nats", "start")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert f"already running (pid {pid}); starting nothing" in again.stderr
    assert process.find_processes(marker) == [pid]

    stopped = run_flowscope(env, "nats", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"nats: stopped (pid {pid})"
    assert process.find_processes(marker) == []
    assert not [item for item in _listening() if item[1] in ports.values()]
    assert _status(env) == (3, before)
    assert run_flowscope(env, "nats", "stop").stdout.strip() == "nats: not running"

    # Started again, the stream still holds what was published before the stop.
    assert run_flowscope(env, "nats", "start").returncode == 0
    assert asyncio.run(_publish_and_count(str(expected["url"]), "PROBE", 1)) == 4


def test_nats_external_server_is_used_and_nothing_started(
        nats_env: dict[str, str], tmp_path: Path) -> None:
    started = run_flowscope(nats_env, "nats", "start")
    assert started.returncode == 0, started.stderr
    ports = _ports(nats_env)
    env = dict(nats_env, FLOWSCOPE_HOME=str(tmp_path / "other-home"),
               FLOWSCOPE_NATS_URL=f"nats://127.0.0.1:{ports['client']}",
               FLOWSCOPE_NATS_MONITORING_URL=f"http://127.0.0.1:{ports['monitoring']}")
    expected = {"running": True, "pid": None, "url": f"nats://127.0.0.1:{ports['client']}",
                "monitoring_url": f"http://127.0.0.1:{ports['monitoring']}", "log": None}
    assert _status(env) == (0, expected)
    done = {verb: run_flowscope(env, "nats", verb) for verb in ("start", "stop", "install")}
    assert all(result.returncode == 0 for result in done.values()), done
    assert "starting none" in done["start"].stderr
    assert "nothing to stop" in done["stop"].stdout
    assert "nothing to build" in done["install"].stdout
    assert not (tmp_path / "other-home" / "nats").exists()

    [free] = free_ports(1)
    env["FLOWSCOPE_NATS_MONITORING_URL"] = f"http://127.0.0.1:{free}"
    refused = run_flowscope(env, "nats", "start")
    assert refused.returncode == 1
    assert f"nats: the monitoring endpoint at FLOWSCOPE_NATS_MONITORING_URL=http://127.0.0.1:" \
           f"{free} does not answer" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("role", ["client", "monitoring"])
def test_nats_start_names_the_port_another_process_holds(
        nats_env: dict[str, str], role: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        nats_env[nats.PORT_VARIABLES[role]] = str(port)
        done = run_flowscope(nats_env, "nats", "start")
    assert done.returncode == 1
    assert f"nats: {role} port {port} on 127.0.0.1 already in use" in done.stderr
    assert nats.PORT_VARIABLES[role] in done.stderr
    assert "Traceback" not in done.stderr
    assert process.find_processes(_marker(nats_env)) == []


def test_nats_run_folder_in_the_way_is_a_clear_error_and_leaves_no_process(
        nats_env: dict[str, str]) -> None:
    # JetStream's store cannot be made where a file stands.
    home = Path(nats_env["FLOWSCOPE_HOME"]) / "nats"
    home.mkdir(parents=True)
    (home / "jetstream").write_text("in the way")
    done = run_flowscope(nats_env, "nats", "start")
    assert done.returncode == 1
    assert f"nats: cannot prepare its run folder {home}: File exists ({home}/jetstream)" \
        in done.stderr
    assert "FLOWSCOPE_HOME" in done.stderr
    assert "Traceback" not in done.stderr
    assert process.find_processes(_marker(nats_env)) == []
