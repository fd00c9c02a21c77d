import os
from pathlib import Path

import pytest

from base.errors import FlowscopeError
from base.settings import Settings
from flowscope.infra.rabbitmq import (
    RabbitmqPaths,
    RabbitmqStatus,
    install,
    node_environment,
    node_name,
    package_version,
    render_config,
)


def _conf(text: str) -> dict[str, str]:
    return dict((part.strip() for part in line.split("=", 1)) for line in text.splitlines()
                if line.strip())


def test_rabbitmq_config_binds_every_listener_to_loopback_on_configured_ports() -> None:
    settings = Settings.from_env({"FLOWSCOPE_RABBITMQ_PORT": "26001",
                                  "FLOWSCOPE_RABBITMQ_MANAGEMENT_PORT": "26002"})
    conf = _conf(render_config(settings.rabbitmq))
    assert conf["listeners.tcp.default"] == "127.0.0.1:26001"
    assert conf["management.tcp.ip"] == "127.0.0.1"
    assert conf["management.tcp.port"] == "26002"
    assert conf["distribution.listener.interface"] == "127.0.0.1"
    assert conf["collect_statistics_interval"] == "1000"


def test_rabbitmq_node_environment_reads_nothing_of_etc_and_uses_our_ports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_NODE_PORT", "5672")  # a system broker's, must not leak in
    monkeypatch.setenv("NODENAME", "rabbit")  # RabbitMQ reads unprefixed names too
    settings = Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path),
                                  "FLOWSCOPE_RABBITMQ_DIST_PORT": "26003",
                                  "FLOWSCOPE_RABBITMQ_EPMD_PORT": "26004"})
    paths = RabbitmqPaths.of(settings)
    env = node_environment(settings.rabbitmq, paths, node_name(settings))
    assert env["HOME"] == str(tmp_path / "rabbitmq")
    assert env["RABBITMQ_DIST_PORT"] == "26003"
    assert env["ERL_EPMD_PORT"] == "26004"
    assert env["ERL_EPMD_ADDRESS"] == "127.0.0.1"
    assert "RABBITMQ_NODE_PORT" not in env
    assert "NODENAME" not in env
    assert env["PATH"] == os.environ["PATH"]
    files = [value for name, value in env.items() if name.startswith("RABBITMQ_")
             and name.endswith(("_FILE", "_FILES", "_BASE"))]
    assert len(files) == 7
    assert all(value.startswith(str(tmp_path)) for value in files), files


def test_rabbitmq_node_name_is_stable_per_home_and_differs_between_homes(tmp_path: Path
                                                                        ) -> None:
    one = Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path / "one")})
    two = Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path / "two")})
    assert node_name(one) == node_name(Settings.from_env({"FLOWSCOPE_HOME":
                                                          str(tmp_path / "one")}))
    assert node_name(one) != node_name(two)
    assert node_name(one).startswith("flowscope-")
    assert node_name(one).endswith("@localhost")


def test_rabbitmq_install_without_the_package_names_the_apt_command(tmp_path: Path) -> None:
    with pytest.raises(FlowscopeError) as caught:
        install(Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path)}), package=tmp_path / "no")
    rendered = caught.value.render()
    assert rendered.startswith("flowscope: rabbitmq: Debian's rabbitmq-server package is not "
                               "installed")
    assert "/bin/rabbitmq-server" in rendered
    assert "sudo apt-get install -y rabbitmq-server" in rendered


def test_rabbitmq_package_version_comes_from_the_start_script_folder(tmp_path: Path) -> None:
    sbin = tmp_path / "lib" / "rabbitmq_server-3.10.8" / "sbin"
    sbin.mkdir(parents=True)
    (sbin / "rabbitmq-server").write_text("#!/bin/sh\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "rabbitmq-server").symlink_to(sbin / "rabbitmq-server")
    assert package_version(tmp_path) == "3.10.8"
    assert package_version(tmp_path / "missing") is None


def test_rabbitmq_status_json_redacts_credentials() -> None:
    status = RabbitmqStatus(True, None, "amqp://app:s3cret@mq:5672/", "http://app:s3cret@mq:15672",
                            True, None)
    assert status.as_json() == {"running": True, "pid": None, "amqp_url": "amqp://***@mq:5672/",
                                "management_url": "http://***@mq:15672", "log": None}
