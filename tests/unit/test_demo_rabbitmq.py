"""The demo's RabbitMQ leg, its pure parts: destination names and span attributes as the
current conventions write them, header checks and propagation, the attempt header, the retry
and dead-letter decisions, the configuration, and which services run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from base.errors import FlowscopeError
from base.settings import Settings
from demo_services import amqp_tracing as tracing
from demo_services.amqp_consumer import dead_letter_headers
from demo_services.config import ConfigError, DemoConfig
from demo_services.exchanges import BINDINGS, THUMBNAILS_DELAY, queue_arguments
from demo_services.faults import Simulation
from demo_services.retry import RetryPolicy
from demo_services.thumbnailer import backoff_after, render_fails, retry_headers
from flowscope.services import (
    ARTEMIS_SERVICES,
    NATS_SERVICES,
    RABBITMQ_SERVICES,
    SERVICES,
    rabbitmq_url,
    services_to_run,
)

SERVER = ("127.0.0.1", 5682)


@pytest.mark.parametrize(("exchange", "key", "queue", "expected"), [
    ("thumbnails", "render", None, "thumbnails:render"),  # a send
    ("files.events", "", None, "files.events"),  # a fanout: no routing key
    ("", "jobs", None, "jobs"),  # the default exchange
    ("", "", None, "amq.default"),
    ("thumbnails", "render", "thumbnails.jobs", "thumbnails:render:thumbnails.jobs"),
    ("files.events", "", "files.events.audit", "files.events:files.events.audit"),
    ("", "thumbnails.jobs", "thumbnails.jobs", "thumbnails.jobs"),  # key == queue: once
    ("x", "q", "q", "x:q"),
])
def test_destination_name_leaves_out_empty_parts_and_a_queue_named_as_its_key(
        exchange: str, key: str, queue: str | None, expected: str) -> None:
    assert tracing.destination_name(exchange, key, queue) == expected


def test_send_attributes_follow_the_current_rabbitmq_conventions() -> None:
    assert tracing.send_attributes(exchange="thumbnails", routing_key="render",
                                   message_id="m-1", correlation_id="c-1", size=42,
                                   server=SERVER) == {
        "messaging.system": "rabbitmq", "messaging.operation.name": "send",
        "messaging.operation.type": "send", "messaging.destination.name": "thumbnails:render",
        "messaging.rabbitmq.destination.routing_key": "render", "messaging.message.id": "m-1",
        "messaging.message.conversation_id": "c-1", "messaging.message.body.size": 42,
        "server.address": "127.0.0.1", "server.port": 5682}
    fanout = tracing.send_attributes(exchange="files.events", routing_key="", message_id="m",
                                     correlation_id="c", size=1, server=SERVER)
    assert fanout["messaging.destination.name"] == "files.events"
    assert "messaging.rabbitmq.destination.routing_key" not in fanout


def test_process_attributes_name_the_queue_and_the_attempt_only_after_the_first() -> None:
    first = tracing.process_attributes(
        exchange="thumbnails", routing_key="render", queue="thumbnails.jobs", message_id="m-1",
        correlation_id="c-1", delivery_tag=7, attempt=1, size=42, server=SERVER)
    assert first == {
        "messaging.system": "rabbitmq", "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "thumbnails:render:thumbnails.jobs",
        "messaging.destination.subscription.name": "thumbnails.jobs",
        "messaging.rabbitmq.destination.routing_key": "render", "messaging.message.id": "m-1",
        "messaging.message.conversation_id": "c-1", "messaging.rabbitmq.message.delivery_tag": 7,
        "messaging.message.body.size": 42, "server.address": "127.0.0.1", "server.port": 5682}
    again = tracing.process_attributes(
        exchange="thumbnails", routing_key="render", queue="thumbnails.jobs", message_id=None,
        correlation_id="c-1", delivery_tag=None, attempt=3, size=42, server=SERVER)
    assert again["messaging.message.retry_attempt"] == 3
    assert "messaging.message.id" not in again
    assert "messaging.rabbitmq.message.delivery_tag" not in again


@pytest.mark.parametrize(("url", "expected"), [
    ("amqp://guest:guest@127.0.0.1:5682/", ("127.0.0.1", 5682)),
    ("amqp://rabbit.example/vhost", ("rabbit.example", 5672)),
    ("amqps://u:p@rabbit.example/", ("rabbit.example", 5671)),
])
def test_server_of_reads_host_and_port_without_credentials(url: str,
                                                           expected: tuple[str, int]) -> None:
    assert tracing.server_of(url) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("3", 3), (b"2", 2), (bytearray(b"4"), 4), (5, 5), (None, 1), ("", 1), ("abc", 1),
    ("0", 1), ("-2", 1), ("99999", 1), ("²", 1), (b"\xff", 1), (True, 1), (0, 1), (2.0, 1),
])
def test_read_attempt_takes_text_or_integers_and_falls_back_to_one(value: object,
                                                                   expected: int) -> None:
    headers = {} if value is None else {"retry-attempt": value}
    assert tracing.read_attempt(headers) == expected


def test_header_problems_name_undecodable_odd_and_huge_headers() -> None:
    assert tracing.header_problems({"correlation-id": "c-1", "traceparent": "00-ab",
                                    "x-death": [{"count": 1}], "other": b"\xff"}) == []
    assert tracing.header_problems(None) == []
    assert tracing.header_problems({"correlation-id": b"\xff\xfe"}) == [
        "header 'correlation-id' is not UTF-8"]
    assert tracing.header_problems({"traceparent": bytearray(b"\xc3")}) == [
        "header 'traceparent' is not UTF-8"]
    assert tracing.header_problems({"retry-attempt": ["1"]}) == [
        "header 'retry-attempt' is a list, not text"]
    assert tracing.header_problems({"correlation-id": "é" * 600}) == [
        "header 'correlation-id' is 1200 bytes (at most 1024)"]
    assert tracing.header_problems({"blob": "x" * 70_000}) == [
        "headers hold 70000 bytes of text (at most 65536)"]


def test_header_text_is_none_for_what_is_not_text() -> None:
    headers = {"a": "x", "b": b"y", "c": b"\xff", "d": 5, "e": "", "f": "z" * 2000}
    assert [tracing.header_text(headers, k) for k in "abcdeg"] == ["x", "y", None, None,
                                                                   None, None]
    assert tracing.header_text(headers, "f") == "z" * tracing.MAX_HEADER_TEXT


def test_trace_context_travels_in_amqp_headers() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("send") as span:
        headers: dict[str, object] = {"correlation-id": "c-1"}
        tracing.inject_headers(headers, trace.set_span_in_context(span))
    assert str(headers["traceparent"]).startswith("00-")
    parent = trace.get_current_span(tracing.extract_context(headers)).get_span_context()
    assert parent.trace_id == span.get_span_context().trace_id
    assert parent.span_id == span.get_span_context().span_id
    for garbage in ({}, {"traceparent": b"\xff"}, {"traceparent": "not a traceparent"},
                    {"traceparent": 17}):
        lost = trace.get_current_span(tracing.extract_context(garbage)).get_span_context()
        assert not lost.is_valid  # a new trace, never an exception


def test_a_job_is_retried_with_backoff_until_its_attempts_are_spent() -> None:
    policy = RetryPolicy(max_attempts=4, base_ms=100, max_ms=300)
    assert [backoff_after(attempt, policy) for attempt in (1, 2, 3, 4, 5)] == [
        100, 200, 300, None, None]
    assert backoff_after(1, RetryPolicy(1, 0, 0)) is None


def test_retry_headers_carry_the_next_attempt_and_keep_the_others() -> None:
    headers = {"correlation-id": "c-1", "retry-attempt": "2", "retry-reason": "old",
               "retry-original": "x", "x-death": [{"count": 1}]}
    assert retry_headers(headers, 2, "r" * 600) == {
        "correlation-id": "c-1", "x-death": [{"count": 1}], "retry-attempt": "3",
        "retry-reason": "r" * 500}
    assert headers["retry-attempt"] == "2"  # the original is left alone


def test_dead_letter_headers_keep_valid_ones_and_say_why_and_what_was_dropped() -> None:
    out = dead_letter_headers({"correlation-id": b"\xff", "retry-attempt": "3", "n": 1},
                              "invalid message: " + "x" * 2000, queue="p.thumbnails.jobs",
                              service="thumbnailer")
    assert out == {"retry-attempt": "3", "n": 1,
                   "x-dead-letter-reason": ("invalid message: " + "x" * 2000)[:1000],
                   "x-dead-letter-queue": "p.thumbnails.jobs",
                   "x-dead-letter-service": "thumbnailer",
                   "x-dead-letter-dropped-headers": "correlation-id"}
    clean = dead_letter_headers({}, "why", queue="q", service="s")
    assert "x-dead-letter-dropped-headers" not in clean


def test_render_failures_are_drawn_from_the_seed_per_attempt() -> None:
    never = Simulation(0, 0, 0, 0, 0, thumbnail_failure=0.0)
    always = Simulation(0, 0, 0, 0, 0, thumbnail_failure=1.0)
    half = Simulation(0, 0, 0, 0, 0, thumbnail_failure=0.5)
    assert not render_fails(1, never, "c", 1)
    assert render_fails(1, always, "c", 1)
    draws = [render_fails(1, half, f"c-{i}", 1) for i in range(200)]
    assert draws == [render_fails(1, half, f"c-{i}", 1) for i in range(200)]
    assert 60 < sum(draws) < 140
    overridden = Simulation.of(never, {"thumbnail_failure": 3})
    assert overridden.thumbnail_failure == 1.0


def test_only_the_delay_queue_dead_letters_back_to_the_jobs_exchange() -> None:
    config = DemoConfig(topic_prefix="t.")
    arguments = {b.queue: queue_arguments(config, b) for b in BINDINGS}
    assert arguments.pop(THUMBNAILS_DELAY) == {"x-dead-letter-exchange": "t.thumbnails",
                                               "x-dead-letter-routing-key": "render"}
    assert list(arguments.values()) == [{}] * len(arguments)


def test_config_reads_the_rabbitmq_knobs_and_names_bad_ones() -> None:
    config = DemoConfig.from_env({"FLOWSCOPE_DEMO_RABBITMQ_URL": "amqp://u:secret@h:5682/",
                                  "FLOWSCOPE_DEMO_THUMBNAIL_FAILURE": "0.3",
                                  "FLOWSCOPE_DEMO_THUMBNAIL_PREFETCH": "8"})
    assert (config.rabbitmq_url, config.thumbnail_failure, config.thumbnail_prefetch) == (
        "amqp://u:secret@h:5682/", 0.3, 8)
    assert "secret" not in repr(config)
    assert DemoConfig().rabbitmq_url == ""  # no RabbitMQ leg by default
    with pytest.raises(ConfigError) as caught:
        DemoConfig.from_env({"FLOWSCOPE_DEMO_RABBITMQ_URL": "http://u:secret@h/",
                             "FLOWSCOPE_DEMO_THUMBNAIL_PREFETCH": "0",
                             "FLOWSCOPE_DEMO_THUMBNAIL_FAILURE": "2"})
    message = str(caught.value)
    assert "secret" not in message
    for name in ("RABBITMQ_URL", "THUMBNAIL_PREFETCH", "THUMBNAIL_FAILURE"):
        assert f"FLOWSCOPE_DEMO_{name}" in message


def test_the_services_use_the_demo_url_else_the_external_broker_else_none(
        tmp_path: Path) -> None:
    home = {"FLOWSCOPE_HOME": str(tmp_path)}
    native = Settings.from_env(home)  # no node runs in this home
    assert rabbitmq_url(native, {}) == ""
    assert rabbitmq_url(native, {"FLOWSCOPE_DEMO_RABBITMQ_URL": "amqp://x/"}) == "amqp://x/"
    external = Settings.from_env({**home, "FLOWSCOPE_RABBITMQ_URL": "amqp://u:p@rabbit:5672/",
                                  "FLOWSCOPE_RABBITMQ_MANAGEMENT_URL": "http://u:p@rabbit:15672"})
    assert rabbitmq_url(external, {}) == "amqp://u:p@rabbit:5672/"
    assert rabbitmq_url(external, {"FLOWSCOPE_DEMO_RABBITMQ_URL": ""}) == ""  # turned off


def test_the_rabbitmq_services_run_only_with_rabbitmq() -> None:
    off, on = DemoConfig(), replace(DemoConfig(), rabbitmq_url="amqp://h/")
    assert set(services_to_run(SERVICES, off)) == \
        set(SERVICES) - set(RABBITMQ_SERVICES) - set(NATS_SERVICES) - set(ARTEMIS_SERVICES)
    assert set(services_to_run(SERVICES, on)) == \
        set(SERVICES) - set(NATS_SERVICES) - set(ARTEMIS_SERVICES)
    assert services_to_run(("uploads", "processor"), off) == ("uploads", "processor")
    with pytest.raises(FlowscopeError, match="thumbnailer consume RabbitMQ"):
        services_to_run(("processor", "thumbnailer"), off)
