"""Real-browser tests: Debian's Chromium driven by Playwright against `flowscope dashboard` on
a store the real collector fills from the real demo services, Kafka, RabbitMQ and Jaeger."""

from __future__ import annotations

import pytest

from tests.integration.conftest import (
    artemis_broker,
    jaeger_endpoints,
    kafka_bootstrap,
    nats_server,
    rabbitmq_node,
    settings,
)

__all__ = ["artemis_broker", "jaeger_endpoints", "kafka_bootstrap", "nats_server",
           "rabbitmq_node", "settings"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e needs the broker and a browser."""
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.browser)
