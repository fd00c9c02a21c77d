"""The demo's NATS leg, its pure parts: names of streams and subjects, regions, the consumer's
redelivery backoff, span attributes, header propagation and clean-up with garbage values,
dead-letter headers, the tracking failure draws, the configuration, which services run and the
incident scenario's stream backlog phase."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.api import AckPolicy, RetentionPolicy, StorageType
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from base.errors import FlowscopeError
from base.settings import Settings
from demo_services import nats_tracing as tracing
from demo_services import subjects
from demo_services.config import ConfigError, DemoConfig
from demo_services.faults import Simulation
from demo_services.nats_consumer import dead_letter_headers, dead_letter_id
from demo_services.retry import RetryPolicy
from demo_services.shipping import shipment_id, shipment_of
from demo_services.tracking import status_of, tracking_fails
from flowscope.demo import child_environment
from flowscope.scenario import DemoOptions, plan_steps
from flowscope.services import (
    ARTEMIS_SERVICES,
    NATS_SERVICES,
    RABBITMQ_SERVICES,
    SERVICES,
    nats_url,
    services_to_run,
)

SERVER = ("127.0.0.1", 4232)
PREFIX = DemoConfig(topic_prefix="r1a2b.c-d.")


def test_stream_names_take_the_prefix_made_a_valid_stream_name() -> None:
    assert subjects.stream_name(PREFIX, subjects.SHIPMENTS) == "r1a2b_c_d_SHIPMENTS"
    assert subjects.stream_name(DemoConfig(), subjects.SHIPMENTS_DLQ) == "SHIPMENTS_DLQ"
    assert subjects.stream_name(DemoConfig(topic_prefix="a b/*>"), "S") == "a_b___S"


def test_subjects_take_the_prefix_and_the_region() -> None:
    assert subjects.subject(PREFIX, subjects.SHIPMENTS_TEMPLATE, "eu") == \
        "r1a2b.c-d.shipments.eu.dispatched"
    assert subjects.subject(PREFIX, subjects.SHIPMENTS_TEMPLATE) == \
        "r1a2b.c-d.shipments.*.dispatched"
    assert subjects.subject(PREFIX, subjects.STATUS_TEMPLATE, "ap") == \
        "r1a2b.c-d.tracking.status.ap"
    assert subjects.subject(DemoConfig(), subjects.SHIPMENTS_DLQ_SUBJECT) == "shipments.dlq"


def test_the_region_is_a_stable_hash_of_the_order_over_every_region() -> None:
    orders = [f"order-{i}" for i in range(300)]
    regions = [subjects.region_of(order) for order in orders]
    assert regions == [subjects.region_of(order) for order in orders]
    assert set(regions) == set(subjects.REGIONS)
    assert all(60 < regions.count(region) < 140 for region in subjects.REGIONS)
    assert subjects.region_of("\udcff odd") in subjects.REGIONS  # never raises


def test_redelivery_backoff_holds_the_ack_wait_plus_the_retry_backoff() -> None:
    policy = RetryPolicy(max_attempts=4, base_ms=200, max_ms=500)
    assert subjects.redelivery_backoff_s(policy, ack_wait_s=5.0) == [5.2, 5.4, 5.5]
    assert subjects.redelivery_backoff_s(RetryPolicy(1, 0, 0)) == []  # one delivery: none


def test_the_consumer_is_durable_explicit_and_bounded_by_max_attempts() -> None:
    config = replace(PREFIX, max_attempts=3, backoff_base_ms=100, backoff_max_ms=150)
    consumer = subjects.consumer_config(config)
    assert (consumer.durable_name, consumer.name) == ("tracking", "tracking")
    assert consumer.ack_policy == AckPolicy.EXPLICIT
    assert consumer.max_deliver == 3
    assert consumer.backoff == [5.1, 5.15]
    assert consumer.ack_wait == 5.1  # JetStream takes the first backoff as the ack wait
    assert consumer.filter_subject == "r1a2b.c-d.shipments.*.dispatched"
    single = subjects.consumer_config(replace(config, max_attempts=1))
    assert (single.backoff, single.ack_wait, single.max_deliver) == (None, 5.0, 1)


def test_both_streams_are_on_file_with_limits_retention() -> None:
    shipments, dlq = subjects.stream_configs(PREFIX)
    assert (shipments.name, shipments.subjects) == (
        "r1a2b_c_d_SHIPMENTS", ["r1a2b.c-d.shipments.*.dispatched"])
    assert (dlq.name, dlq.subjects) == ("r1a2b_c_d_SHIPMENTS_DLQ", ["r1a2b.c-d.shipments.dlq"])
    for stream in (shipments, dlq):
        assert (stream.storage, stream.retention) == (StorageType.FILE, RetentionPolicy.LIMITS)
        assert stream.duplicate_window == subjects.DUPLICATE_WINDOW_S


def test_send_attributes_name_the_subject_its_template_and_the_message() -> None:
    attributes = tracing.send_attributes(
        subject="p.shipments.eu.dispatched", template="p.shipments.*.dispatched",
        message_id="m-1", correlation_id="c-1", size=42, server=SERVER)
    assert attributes == {
        "messaging.system": "nats", "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "p.shipments.eu.dispatched",
        "messaging.destination.template": "p.shipments.*.dispatched",
        "messaging.message.id": "m-1", "messaging.message.conversation_id": "c-1",
        "messaging.message.body.size": 42, "server.address": "127.0.0.1", "server.port": 4232}
    assert tracing.stored_attributes("P_SHIPMENTS", 7) == {
        "messaging.nats.stream": "P_SHIPMENTS", "messaging.nats.stream.sequence": 7}
    dlq = tracing.send_attributes(subject="p.shipments.dlq", template=None, message_id="m",
                                  correlation_id="c", size=1, server=SERVER)
    assert "messaging.destination.template" not in dlq


def test_jetstream_process_attributes_carry_stream_consumer_and_deliveries() -> None:
    attributes = tracing.jetstream_process_attributes(
        subject="p.shipments.us.dispatched", template="p.shipments.*.dispatched",
        stream="P_SHIPMENTS", sequence=12, consumer="tracking", deliveries=2,
        message_id="m-1", correlation_id="c-1", size=42, server=SERVER)
    assert attributes == {
        "messaging.system": "nats", "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "p.shipments.us.dispatched",
        "messaging.destination.template": "p.shipments.*.dispatched",
        "messaging.nats.stream": "P_SHIPMENTS", "messaging.nats.stream.sequence": 12,
        "messaging.nats.consumer": "tracking", "messaging.consumer.group.name": "tracking",
        "messaging.nats.num_delivered": 2, "messaging.message.retry_attempt": 2,
        "messaging.message.id": "m-1", "messaging.message.conversation_id": "c-1",
        "messaging.message.body.size": 42, "server.address": "127.0.0.1", "server.port": 4232}


def test_core_process_attributes_name_the_queue_group_only_when_there_is_one() -> None:
    grouped = tracing.process_attributes(
        subject="p.tracking.status.eu", template="p.tracking.status.*", message_id=None,
        correlation_id="c-1", size=9, server=SERVER, group="portal")
    assert grouped["messaging.consumer.group.name"] == "portal"
    assert "messaging.message.id" not in grouped
    assert not any(key.startswith("messaging.nats.") for key in grouped)
    alone = tracing.process_attributes(subject="s", template=None, message_id="m",
                                       correlation_id="c", size=1, server=SERVER)
    assert "messaging.consumer.group.name" not in alone
    assert alone["messaging.message.id"] == "m"


@pytest.mark.parametrize(("url", "expected"), [
    ("nats://127.0.0.1:4232", ("127.0.0.1", 4232)),
    ("nats://u:secret@nats.example", ("nats.example", 4222)),
    ("tls://nats.example:4443", ("nats.example", 4443)),
])
def test_server_of_reads_host_and_port_without_credentials(url: str,
                                                           expected: tuple[str, int]) -> None:
    assert tracing.server_of(url) == expected


def test_header_text_is_none_for_what_is_not_readable_text() -> None:
    headers: dict[str, Any] = {"a": "x", "b": "bad \ufffd bytes", "c": "", "d": 5,
                               "Correlation-ID": "c-1", "f": "z" * 2000}
    assert [tracing.header_text(headers, k) for k in "abcdg"] == ["x", None, None, None, None]
    assert tracing.header_text(headers, "correlation-id") == "c-1"  # any case
    assert tracing.header_text(headers, "f") == "z" * tracing.MAX_HEADER_TEXT
    assert tracing.header_text(None, "a") is None


def test_clean_header_keeps_a_value_on_its_line() -> None:
    assert tracing.clean_header("why:\r\nTraceparent: forged\x00") == "why: Traceparent: forged"
    assert tracing.clean_header("x" * 5000, 10) == "x" * 10


def test_trace_context_travels_in_nats_headers_and_garbage_starts_a_new_trace() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("send") as span:
        headers = {"correlation-id": "c-1", "TraceParent": "old"}
        tracing.inject_headers(headers, trace.set_span_in_context(span))
    assert "TraceParent" not in headers  # replaced, whatever its case
    assert headers["traceparent"].startswith("00-")
    parent = trace.get_current_span(tracing.extract_context(headers)).get_span_context()
    assert (parent.trace_id, parent.span_id) == (span.get_span_context().trace_id,
                                                 span.get_span_context().span_id)
    for garbage in ({}, None, {"traceparent": "00-\ufffd\ufffd"}, {"traceparent": "garbage"},
                    {"traceparent": 17}, {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 +
                                          "-01"}, {17: "x"}):
        lost = trace.get_current_span(
            tracing.extract_context(garbage)).get_span_context()  # type: ignore[arg-type]
        assert not lost.is_valid  # a new trace, never an exception


def test_injecting_never_raises_into_the_caller() -> None:
    class Broken(dict[str, str]):
        def __setitem__(self, key: str, value: str) -> None:
            raise RuntimeError("no")

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("send") as span:
        tracing.inject_headers(Broken(), trace.set_span_in_context(span))


def _message(headers: dict[str, str] | None = None, *, stream: str = "P_SHIPMENTS",
             sequence: int = 9, deliveries: int = 3) -> Any:
    metadata = SimpleNamespace(stream=stream, num_delivered=deliveries,
                               sequence=SimpleNamespace(stream=sequence, consumer=1))
    return SimpleNamespace(subject="p.shipments.eu.dispatched", headers=headers,
                           metadata=metadata, data=b"{}")


def test_dead_letter_headers_keep_readable_ones_and_say_why_and_where_from() -> None:
    headers = {"correlation-id": "c-1", "traceparent": "00-x", "garbled": "a\ufffd",
               "Nats-Msg-Id": "m-1", "Nats-Expected-Stream": "OTHER", "dlq-reason": "old"}
    out = dead_letter_headers(headers, "gave up:\nafter 3" + "x" * 2000,
                              message=_message(headers), consumer="tracking",
                              service="tracking")
    assert out == {
        "correlation-id": "c-1", "traceparent": "00-x",
        "dlq-reason": ("gave up: after 3" + "x" * 2000)[:1000],
        "dlq-original-subject": "p.shipments.eu.dispatched",
        "dlq-original-stream": "P_SHIPMENTS", "dlq-original-sequence": "9",
        "dlq-deliveries": "3", "dlq-consumer": "tracking", "dlq-service": "tracking",
        "dlq-dropped-headers": "garbled"}


def test_a_dead_letter_id_is_the_same_on_every_try_and_differs_per_message() -> None:
    first = dead_letter_id(_message(), {"Nats-Msg-Id": "m-1"})
    assert first == dead_letter_id(_message(deliveries=1), {"Nats-Msg-Id": "m-1"})
    assert first != dead_letter_id(_message(sequence=10), {"Nats-Msg-Id": "m-1"})
    assert first != dead_letter_id(_message(), {"Nats-Msg-Id": "m-2"})
    assert first != dead_letter_id(_message(stream="Q_SHIPMENTS"), {"Nats-Msg-Id": "m-1"})


def test_tracking_failures_are_drawn_from_the_seed_per_attempt() -> None:
    never = Simulation(0, 0, 0, 0, 0, tracking_failure=0.0)
    always = Simulation(0, 0, 0, 0, 0, tracking_failure=1.0)
    half = Simulation(0, 0, 0, 0, 0, tracking_failure=0.5)
    assert not tracking_fails(1, never, "c", 1)
    assert tracking_fails(1, always, "c", 1)
    draws = [tracking_fails(1, half, f"c-{i}", 1) for i in range(200)]
    assert draws == [tracking_fails(1, half, f"c-{i}", 1) for i in range(200)]
    assert 60 < sum(draws) < 140
    assert Simulation.of(never, {"tracking_failure": 3}).tracking_failure == 1.0


def test_a_shipment_names_its_region_and_keeps_its_id_across_tries() -> None:
    shipment = shipment_of({"order_id": "o-1", "amount": 5, "simulate": {"work_ms": 1}},
                           "t-1", 12.5)
    assert shipment == {"type": "shipment.dispatched", "order_id": "o-1", "tracking": "t-1",
                        "region": subjects.region_of("o-1"), "dispatched_at": 12.5,
                        "simulate": {"work_ms": 1}}
    assert shipment_id("o-1") == shipment_id("o-1") != shipment_id("o-2")
    status = status_of(shipment, 2)
    assert (status["status"], status["attempts"], status["region"]) == (
        "in_transit", 2, shipment["region"])


def test_config_reads_the_nats_knobs_and_names_bad_ones() -> None:
    config = DemoConfig.from_env({"FLOWSCOPE_DEMO_NATS_URL": "nats://u:secret@h:4232",
                                  "FLOWSCOPE_DEMO_TRACKING_FAILURE": "0.3"})
    assert (config.nats_url, config.tracking_failure) == ("nats://u:secret@h:4232", 0.3)
    assert "secret" not in repr(config)
    assert DemoConfig().nats_url == ""  # no NATS leg by default
    assert DemoConfig.from_env({"FLOWSCOPE_DEMO_NATS_URL": "TLS://h:4443"}).nats_url
    with pytest.raises(ConfigError) as caught:
        DemoConfig.from_env({"FLOWSCOPE_DEMO_NATS_URL": "http://u:secret@h/",
                             "FLOWSCOPE_DEMO_TRACKING_FAILURE": "2"})
    message = str(caught.value)
    assert "secret" not in message
    for name in ("NATS_URL", "TRACKING_FAILURE"):
        assert f"FLOWSCOPE_DEMO_{name}" in message


@pytest.mark.parametrize("prefix", ["a b.", "x*.", "x>", ".x", "a..b"])
def test_a_prefix_no_subject_can_start_with_is_refused_only_with_nats(prefix: str) -> None:
    env = {"FLOWSCOPE_DEMO_TOPIC_PREFIX": prefix}
    assert DemoConfig.from_env(env).topic_prefix == prefix  # fine for Kafka alone
    with pytest.raises(ConfigError, match="FLOWSCOPE_DEMO_TOPIC_PREFIX"):
        DemoConfig.from_env({**env, "FLOWSCOPE_DEMO_NATS_URL": "nats://h:4222"})


def test_the_services_use_the_demo_url_else_the_external_server_else_none(
        tmp_path: Path) -> None:
    home = {"FLOWSCOPE_HOME": str(tmp_path)}
    native = Settings.from_env(home)  # no server runs in this home
    assert nats_url(native, {}) == ""
    assert nats_url(native, {"FLOWSCOPE_DEMO_NATS_URL": "nats://x:1"}) == "nats://x:1"
    external = Settings.from_env({**home, "FLOWSCOPE_NATS_URL": "nats://u:p@nats:4222"})
    assert nats_url(external, {}) == "nats://u:p@nats:4222"
    assert nats_url(external, {"FLOWSCOPE_DEMO_NATS_URL": ""}) == ""  # turned off


def test_the_demo_hands_its_nats_url_to_every_child_and_none_means_none(
        tmp_path: Path) -> None:
    settings = Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path)})
    env = child_environment(settings, "127.0.0.1:9092", None, nats_url="nats://127.0.0.1:4232")
    assert env["FLOWSCOPE_DEMO_NATS_URL"] == "nats://127.0.0.1:4232"
    assert child_environment(settings, "127.0.0.1:9092", None)["FLOWSCOPE_DEMO_NATS_URL"] == ""


def test_the_nats_services_run_only_with_nats() -> None:
    off = DemoConfig()
    nats_only = replace(off, nats_url="nats://h:4222")
    every = replace(nats_only, rabbitmq_url="amqp://h/", artemis_url="amqp://h:5692")
    assert set(services_to_run(SERVICES, off)) == \
        set(SERVICES) - set(RABBITMQ_SERVICES) - set(NATS_SERVICES) - set(ARTEMIS_SERVICES)
    assert set(services_to_run(SERVICES, nats_only)) == \
        set(SERVICES) - set(RABBITMQ_SERVICES) - set(ARTEMIS_SERVICES)
    assert services_to_run(SERVICES, every) == SERVICES
    assert services_to_run(("shipping", "tracking", "portal"), nats_only) == (
        "shipping", "tracking", "portal")
    with pytest.raises(FlowscopeError, match="tracking, portal consume NATS"):
        services_to_run(("shipping", "tracking", "portal"), off)


def _option(args: tuple[str, ...], name: str) -> str:
    return args[args.index(name) + 1]


def test_with_nats_a_stream_backlog_phase_comes_before_the_burst() -> None:
    steps = plan_steps(DemoOptions(duration_s=120, scenario="incident", rate=10, seed=3,
                                   rabbitmq=True, nats=True))
    assert [s.at_s for s in steps] == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    queue, stream, burst = steps[3:]
    assert queue.text.startswith("phase 4/6 queue backlog")
    assert stream.text.startswith("phase 5/6 stream backlog: the tracking consumer")
    assert burst.text.startswith("phase 6/6 failure burst")
    assert _option(stream.load, "--pause-group") == "tracking"
    assert (_option(stream.load, "--pause-after"), _option(stream.load, "--duration")) == (
        "0", "20")
    assert 0 < float(_option(stream.load, "--pause-for")) < 20  # time left to drain
    assert len({_option(s.load, "--seed") for s in (steps[0], queue, stream, burst)}) == 4
    alone = plan_steps(DemoOptions(duration_s=100, scenario="incident", nats=True))
    assert [s.text.split(":")[0] for s in alone[3:]] == ["phase 4/5 stream backlog",
                                                         "phase 5/5 failure burst"]
