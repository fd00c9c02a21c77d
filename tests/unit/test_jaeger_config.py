import json

from base.settings import Settings
from flowscope.infra.jaeger import render_config


def _endpoints(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("endpoint", "host") and isinstance(v, str)]
        return found + [e for v in node.values() for e in _endpoints(v)]
    if isinstance(node, list):
        return [e for v in node for e in _endpoints(v)]
    return []


def test_jaeger_config_binds_every_listener_to_loopback_on_configured_ports() -> None:
    settings = Settings.from_env({"FLOWSCOPE_JAEGER_QUERY_PORT": "26686",
                                  "FLOWSCOPE_JAEGER_OTLP_HTTP_PORT": "24318"})
    config = json.loads(render_config(settings.jaeger))
    endpoints = _endpoints(config)
    assert len(endpoints) == 6
    assert all(e.startswith("127.0.0.1") for e in endpoints)
    assert config["extensions"]["jaeger_query"]["http"]["endpoint"] == "127.0.0.1:26686"
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "127.0.0.1:24318"
    metrics = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
    assert metrics["prometheus"]["port"] == settings.jaeger.metrics_port


def test_jaeger_config_does_not_trace_its_own_queries() -> None:
    config = json.loads(render_config(Settings.from_env({}).jaeger))
    assert config["extensions"]["jaeger_query"]["enable_tracing"] is False
    assert config["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
