from pathlib import Path

import pytest

from base.errors import SettingsError
from base.settings import Settings


def test_settings_defaults_bind_loopback_and_standard_kafka_port() -> None:
    settings = Settings.from_env({"HOME": "/home/u", "FLOWSCOPE_HOME": "/data/fs"})
    assert settings.home == Path("/data/fs")
    assert settings.cache_dir == Path("/data/fs/cache")
    assert settings.kafka.bootstrap == "127.0.0.1:9092"
    assert settings.jaeger.query_url == "http://127.0.0.1:16686"
    assert settings.jaeger.otlp_http_endpoint == "http://127.0.0.1:14318"
    assert 4318 not in settings.jaeger.ports.values()


def test_settings_external_cluster_and_jaeger_replace_native_ones() -> None:
    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
        "FLOWSCOPE_JAEGER_OTLP_ENDPOINT": "http://jaeger:4318/",
        "FLOWSCOPE_JAEGER_QUERY_URL": "http://jaeger:16686",
    })
    assert settings.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.jaeger.external
    assert settings.jaeger.otlp_http_endpoint == "http://jaeger:4318"
    assert settings.jaeger.query_url == "http://jaeger:16686"


def test_settings_port_overrides_are_read() -> None:
    settings = Settings.from_env({"FLOWSCOPE_KAFKA_PORT": "19092",
                                  "FLOWSCOPE_JAEGER_QUERY_PORT": "26686"})
    assert settings.kafka.bootstrap == "127.0.0.1:19092"
    assert settings.jaeger.query_url == "http://127.0.0.1:26686"


def test_settings_names_every_bad_variable_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"FLOWSCOPE_KAFKA_PORT": "ninety", "FLOWSCOPE_JAEGER_HEALTH_PORT": "0",
                           "FLOWSCOPE_KAFKA_START_TIMEOUT": "-3",
                           "FLOWSCOPE_JAEGER_QUERY_URL": "jaeger:16686"})
    message = str(caught.value)
    for name in ("FLOWSCOPE_KAFKA_PORT", "FLOWSCOPE_JAEGER_HEALTH_PORT",
                 "FLOWSCOPE_KAFKA_START_TIMEOUT", "FLOWSCOPE_JAEGER_QUERY_URL"):
        assert name in message
    assert len(caught.value.problems) == 4


def test_settings_jaeger_endpoints_must_come_together() -> None:
    with pytest.raises(SettingsError, match="must be set together"):
        Settings.from_env({"FLOWSCOPE_JAEGER_QUERY_URL": "http://jaeger:16686"})


def test_settings_rejects_one_port_for_two_roles() -> None:
    with pytest.raises(SettingsError, match="port 9092 is given to both kafka and jaeger query"):
        Settings.from_env({"FLOWSCOPE_JAEGER_QUERY_PORT": "9092"})


def test_settings_rabbitmq_defaults_keep_clear_of_a_system_rabbitmq() -> None:
    rabbitmq = Settings.from_env({}).rabbitmq
    assert not rabbitmq.external
    assert rabbitmq.ports == {"amqp": 5682, "management": 15682, "dist": 25682, "epmd": 4379}
    assert not set(rabbitmq.ports.values()) & {5672, 15672, 25672, 4369}
    assert rabbitmq.amqp_url == "amqp://guest:guest@127.0.0.1:5682/"
    assert rabbitmq.management_url == "http://guest:guest@127.0.0.1:15682"


def test_settings_rabbitmq_port_overrides_are_read() -> None:
    rabbitmq = Settings.from_env({"FLOWSCOPE_RABBITMQ_PORT": "26001",
                                  "FLOWSCOPE_RABBITMQ_MANAGEMENT_PORT": "26002",
                                  "FLOWSCOPE_RABBITMQ_DIST_PORT": "26003",
                                  "FLOWSCOPE_RABBITMQ_EPMD_PORT": "26004",
                                  "FLOWSCOPE_RABBITMQ_START_TIMEOUT": "5"}).rabbitmq
    assert rabbitmq.ports == {"amqp": 26001, "management": 26002, "dist": 26003, "epmd": 26004}
    assert rabbitmq.amqp_url == "amqp://guest:guest@127.0.0.1:26001/"
    assert rabbitmq.management_url == "http://guest:guest@127.0.0.1:26002"
    assert rabbitmq.start_timeout_s == 5


def test_settings_external_rabbitmq_replaces_the_native_one() -> None:
    rabbitmq = Settings.from_env({
        "FLOWSCOPE_RABBITMQ_URL": "amqps://app:s3cret@mq.example:5671/orders",
        "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL": "https://app:s3cret@mq.example:15671/",
    }).rabbitmq
    assert rabbitmq.external
    assert rabbitmq.amqp_url == "amqps://app:s3cret@mq.example:5671/orders"  # the vhost stays
    assert rabbitmq.management_url == "https://app:s3cret@mq.example:15671"
    assert "s3cret" not in repr(rabbitmq)


@pytest.mark.parametrize(("given", "missing"), [
    ("FLOWSCOPE_RABBITMQ_URL", "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL"),
    ("FLOWSCOPE_RABBITMQ_MANAGEMENT_URL", "FLOWSCOPE_RABBITMQ_URL"),
])
def test_settings_rabbitmq_urls_must_come_together(given: str, missing: str) -> None:
    url = "amqp://u:p@mq:5672/" if given == "FLOWSCOPE_RABBITMQ_URL" else "http://u:p@mq:15672"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({given: url})
    assert caught.value.problems == [
        f"{given} is set but {missing} is not: to use an existing RabbitMQ set both (the AMQP "
        "URL and the management API's http://user:password@host:15672); to run the native node "
        "set neither"]


def test_settings_rabbitmq_bad_urls_are_named_without_their_password() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"FLOWSCOPE_RABBITMQ_URL": "http://app:s3cret@mq:5672/",
                           "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL": "mq:15672"})
    assert caught.value.problems == [
        "FLOWSCOPE_RABBITMQ_URL='http://***@mq:5672/' is not an amqp:// or amqps:// URL",
        "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL='mq:15672' is not an http:// or https:// URL"]


def test_settings_rejects_a_rabbitmq_port_another_component_has() -> None:
    with pytest.raises(SettingsError, match="port 16686 is given to both jaeger query and "
                                            "rabbitmq management"):
        Settings.from_env({"FLOWSCOPE_RABBITMQ_MANAGEMENT_PORT": "16686"})
    with pytest.raises(SettingsError, match="FLOWSCOPE_RABBITMQ_EPMD_PORT='70000'"):
        Settings.from_env({"FLOWSCOPE_RABBITMQ_EPMD_PORT": "70000"})


def test_settings_postgres_defaults_keep_clear_of_a_system_postgres_and_read_overrides() -> None:
    native = Settings.from_env({"FLOWSCOPE_HOME": "/data/fs"})
    assert (native.postgres.port, native.postgres.user, native.postgres.database) == \
        (5442, "flowscope", "flowscope")
    assert not native.postgres.external
    assert native.postgres_dir == Path("/data/fs/postgres")
    moved = Settings.from_env({"FLOWSCOPE_POSTGRES_PORT": "6543",
                               "FLOWSCOPE_POSTGRES_START_TIMEOUT": "5"})
    assert (moved.postgres.port, moved.postgres.start_timeout_s) == (6543, 5.0)
    external = Settings.from_env({"FLOWSCOPE_POSTGRES_URL": "postgresql://u:p@db:5432/fs"})
    assert external.postgres.external
    assert "p@" not in repr(external.postgres)


def test_settings_postgres_bad_url_and_taken_port_are_named() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"FLOWSCOPE_POSTGRES_URL": "mysql://u:s3cret@db/fs",
                           "FLOWSCOPE_POSTGRES_PORT": "9092"})
    problems = " ".join(caught.value.problems)
    assert "FLOWSCOPE_POSTGRES_URL='mysql://***@db/fs'" in problems
    assert "s3cret" not in problems
    assert "port 9092 is given to both kafka and postgres server" in problems
