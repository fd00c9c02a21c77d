"""`flowscope kafka` and `flowscope jaeger` as a person or a script uses them."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from flowscope.infra import process
from flowscope.infra.jaeger import JaegerStatus
from tests.integration.conftest import run_flowscope


def test_kafka_start_twice_gives_one_broker_and_stop_leaves_none(
        own_broker_env: dict[str, str], kafka_bootstrap: str) -> None:
    marker = str(Path(own_broker_env["FLOWSCOPE_HOME"]) / "kafka" / "server.properties")
    first = run_flowscope(own_broker_env, "kafka", "start")
    second = run_flowscope(own_broker_env, "kafka", "start")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    expected = f"127.0.0.1:{own_broker_env['FLOWSCOPE_KAFKA_PORT']}"
    assert first.stdout.strip() == second.stdout.strip() == expected
    jvms = process.find_processes(marker)
    assert len(jvms) == 1

    status = json.loads(run_flowscope(own_broker_env, "kafka", "status", "--json").stdout)
    assert status == {"running": True, "bootstrap": expected, "pid": jvms[0]}

    stopped = run_flowscope(own_broker_env, "kafka", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert process.find_processes(marker) == []
    after = run_flowscope(own_broker_env, "kafka", "status", "--json")
    assert after.returncode == 3
    assert json.loads(after.stdout) == {"running": False, "bootstrap": expected, "pid": None}


def test_kafka_start_names_the_port_another_process_holds(
        own_broker_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        own_broker_env["FLOWSCOPE_KAFKA_PORT"] = str(port)
        done = run_flowscope(own_broker_env, "kafka", "start")
    assert done.returncode == 1
    assert f"broker port {port} on 127.0.0.1 already in use" in done.stderr
    assert "FLOWSCOPE_KAFKA_PORT" in done.stderr
    assert "Traceback" not in done.stderr


def test_kafka_start_without_java_is_a_clear_error(
        own_broker_env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    own_broker_env["PATH"] = str(empty)
    done = run_flowscope(own_broker_env, "kafka", "start")
    assert done.returncode == 1
    assert "kafka: java was not found on PATH" in done.stderr
    assert "Traceback" not in done.stderr


def test_kafka_start_with_external_cluster_starts_nothing(
        own_broker_env: dict[str, str], kafka_bootstrap: str) -> None:
    own_broker_env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    done = run_flowscope(own_broker_env, "kafka", "start")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == kafka_bootstrap
    marker = str(Path(own_broker_env["FLOWSCOPE_HOME"]) / "kafka" / "server.properties")
    assert process.find_processes(marker) == []
    status = json.loads(run_flowscope(own_broker_env, "kafka", "status", "--json").stdout)
    assert status == {"running": True, "bootstrap": kafka_bootstrap, "pid": None}


def test_jaeger_status_json_names_its_endpoints(jaeger_endpoints: JaegerStatus) -> None:
    done = run_flowscope(dict(os.environ), "jaeger", "status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert set(status) == {"running", "pid", "otlp_http", "otlp_grpc", "query"}
    assert status["running"] is True
    assert status["query"] == jaeger_endpoints.query
    assert status["otlp_http"] == jaeger_endpoints.otlp_http


def _bin_with(tmp_path: Path, **tools: str) -> str:
    """A PATH folder holding only the given tools (name -> target path or script text)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, target in tools.items():
        if target.startswith("#!"):
            (folder / name).write_text(target)
            (folder / name).chmod(0o755)
        else:
            (folder / name).symlink_to(target)
    return str(folder)


def test_kafka_start_with_old_java_names_the_version_needed(
        own_broker_env: dict[str, str], tmp_path: Path) -> None:
    old_java = "#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n"
    own_broker_env["PATH"] = _bin_with(tmp_path, java=old_java)
    done = run_flowscope(own_broker_env, "kafka", "start")
    assert done.returncode == 1
    assert "kafka: Java 17 or newer is needed" in done.stderr
    assert 'openjdk version "11.0.2"' in done.stderr


def test_kafka_install_without_maven_is_a_clear_error(
        own_broker_env: dict[str, str], tmp_path: Path) -> None:
    java = shutil.which("java")
    assert java is not None
    own_broker_env["PATH"] = _bin_with(tmp_path, java=os.path.realpath(java))
    own_broker_env["FLOWSCOPE_CACHE_DIR"] = str(tmp_path / "empty-cache")
    done = run_flowscope(own_broker_env, "kafka", "install")
    assert done.returncode == 1
    assert "kafka: mvn (Apache Maven) was not found on PATH" in done.stderr


def test_kafka_not_ready_in_time_shows_its_log_and_leaves_no_process(
        own_broker_env: dict[str, str]) -> None:
    own_broker_env["FLOWSCOPE_KAFKA_START_TIMEOUT"] = "0.2"
    marker = str(Path(own_broker_env["FLOWSCOPE_HOME"]) / "kafka" / "server.properties")
    done = run_flowscope(own_broker_env, "kafka", "start")
    assert done.returncode == 1
    assert "kafka: the broker did not answer a metadata request" in done.stderr
    assert "within 0.2s" in done.stderr
    assert f"log: {own_broker_env['FLOWSCOPE_HOME']}/kafka/logs/" in done.stderr
    assert "FLOWSCOPE_KAFKA_START_TIMEOUT" in done.stderr
    assert process.find_processes(marker) == []
