"""Start (or reuse) the native Kafka and Jaeger for a benchmark, and stop what it started."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from base.settings import Settings
from flowscope.infra import jaeger, kafka


@contextlib.contextmanager
def running_infra(settings: Settings, *, with_jaeger: bool = True) -> Iterator[tuple[str, str]]:
    """(Kafka bootstrap, Jaeger OTLP/HTTP base URL) of running components."""
    started = []
    if not kafka.status(settings).running:
        started.append(kafka)
    bootstrap = kafka.start(settings).bootstrap
    otlp = ""
    if with_jaeger:
        if not jaeger.status(settings).running:
            started.append(jaeger)
        otlp = jaeger.start(settings).otlp_http
    try:
        yield bootstrap, otlp
    finally:
        for component in started:
            component.stop(settings)
