import base64
from pathlib import Path

import pytest

from base.settings import Settings
from flowscope.infra.kafka import (
    new_cluster_id,
    parse_java_major,
    render_pom,
    render_server_properties,
)


@pytest.mark.parametrize(("output", "major"), [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('openjdk version "21" 2023-09-19', 21),
    ('java version "1.8.0_392"', 8),
    ('openjdk version "11.0.2" 2019-01-15', 11),
    ("no version here", None),
])
def test_parse_java_major_reads_old_and_new_schemes(output: str, major: int | None) -> None:
    assert parse_java_major(output) == major


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_server_properties_bind_loopback_and_fit_a_single_node(tmp_path: Path) -> None:
    settings = Settings.from_env({"FLOWSCOPE_KAFKA_PORT": "19092",
                                  "FLOWSCOPE_KAFKA_CONTROLLER_PORT": "19093"})
    props = _properties(render_server_properties(settings, tmp_path / "data"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["process.roles"] == "broker,controller"
    assert Path(props["log.dirs"]).is_absolute()
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor",
                "share.coordinator.state.topic.min.isr"):
        assert props[key] == "1"


def test_pom_pins_kafka_and_an_slf4j2_api_the_log4j_provider_works_with() -> None:
    pom = render_pom("4.4.0")
    assert "<artifactId>kafka_2.13</artifactId><version>4.4.0</version>" in pom
    assert "<artifactId>kafka-tools</artifactId><version>4.4.0</version>" in pom
    assert "<artifactId>log4j-slf4j2-impl</artifactId>" in pom
    assert "<artifactId>slf4j-api</artifactId><version>2." in pom


def test_cluster_id_is_16_bytes_url_safe_base64_never_starting_with_a_dash() -> None:
    ids = {new_cluster_id() for _ in range(2000)}  # about 31 would start with '-' unchecked
    assert len(ids) == 2000
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
        assert not cluster_id.startswith("-")
