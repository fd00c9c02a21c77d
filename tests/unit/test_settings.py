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
