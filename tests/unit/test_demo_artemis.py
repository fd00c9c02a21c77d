"""The demo's Artemis leg, its pure parts: names of addresses and queues, span attributes,
property propagation and clean-up with hostile values, what a received message is read as, the
settle decision, the billing failure draws and messages, the configuration, which services run,
the demo's environment and the incident scenario's invoice backlog phase."""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from base.errors import FlowscopeError
from base.settings import Settings
from demo_services import addresses
from demo_services import artemis_tracing as tracing
from demo_services.artemis_consumer import correlation_of, settle_outcome
from demo_services.artemis_delivery import (
    Outcome,
    Received,
    body_bytes,
    field_text,
    fully_qualified_address,
)
from demo_services.artemis_link import ArtemisLink
from demo_services.billing import billing_fails, invoice_id, invoice_of
from demo_services.config import ConfigError, DemoConfig
from demo_services.faults import Simulation
from demo_services.orders import invoice_request_id, invoice_request_of
from demo_services.producer import SendFailed
from demo_services.runtime import BadMessage, PermanentFailure, TransientFailure
from flowscope.demo import child_environment
from flowscope.scenario import DemoOptions, plan_steps
from flowscope.services import ARTEMIS_SERVICES, SERVICES, artemis_url, services_to_run

SERVER = ("127.0.0.1", 5692)
PREFIX = DemoConfig(topic_prefix="r1a2b.")
ARTEMIS = DemoConfig(artemis_url="amqp://u:secret@127.0.0.1:5692")


def _received(properties: dict[str, Any] | None = None, *, message_id: str | None = "m-1",
              correlation_id: str | None = "amqp-c", delivery_count: int = 0) -> Received:
    return Received(b"{}", properties or {}, message_id, correlation_id, delivery_count, 1,
                    (0, None))  # type: ignore[arg-type]


def test_addresses_and_queues_take_the_prefix() -> None:
    assert addresses.address(PREFIX, addresses.INVOICES) == "r1a2b.invoices"
    queue = addresses.subscription_queue(PREFIX, addresses.BILLING_EVENTS, addresses.LEDGER)
    assert queue == "r1a2b.billing.events.ledger"
    assert addresses.fully_qualified("r1a2b.billing.events", queue) == \
        "r1a2b.billing.events::r1a2b.billing.events.ledger"
    assert fully_qualified_address("r1a2b.billing.events::x") == "r1a2b.billing.events"
    assert fully_qualified_address("r1a2b.invoices") == "r1a2b.invoices"
    assert addresses.dead_letter_queue(PREFIX, addresses.INVOICES) == "DLQ.r1a2b.invoices"
    assert addresses.dead_letter_queue(DemoConfig(), addresses.INVOICES) == "DLQ.invoices"


def test_send_attributes_follow_the_current_conventions_for_activemq() -> None:
    assert tracing.send_attributes(address="p.invoices", message_id="m-1",
                                   correlation_id="c-1", size=42, server=SERVER) == {
        "messaging.system": "activemq", "messaging.operation.name": "send",
        "messaging.operation.type": "send", "messaging.destination.name": "p.invoices",
        "messaging.message.id": "m-1", "messaging.message.conversation_id": "c-1",
        "messaging.message.body.size": 42, "server.address": "127.0.0.1", "server.port": 5692}


def test_process_attributes_name_the_queue_and_the_attempt_from_the_delivery_count() -> None:
    attributes = tracing.process_attributes(
        address="p.billing.events", queue="p.billing.events.ledger", message_id=None,
        correlation_id="c-1", delivery_count=2, size=9, server=SERVER)
    assert attributes == {
        "messaging.system": "activemq", "messaging.operation.name": "process",
        "messaging.operation.type": "process", "messaging.destination.name": "p.billing.events",
        "messaging.destination.subscription.name": "p.billing.events.ledger",
        "messaging.message.retry_attempt": 3, "messaging.message.conversation_id": "c-1",
        "messaging.message.body.size": 9, "server.address": "127.0.0.1", "server.port": 5692}
    first = tracing.process_attributes(address="a", queue="a", message_id="m", correlation_id="c",
                                       delivery_count=0, size=1, server=SERVER)
    assert (first["messaging.message.retry_attempt"], first["messaging.message.id"]) == (1, "m")
    assert tracing.attempt_of(-5) == 1


@pytest.mark.parametrize(("url", "expected"), [
    ("amqp://flowscope:secret@127.0.0.1:5692", ("127.0.0.1", 5692)),
    ("amqp://artemis.example", ("artemis.example", 5672)),
    ("amqps://artemis.example", ("artemis.example", 5671)),
])
def test_server_of_reads_host_and_port_without_credentials(url: str,
                                                           expected: tuple[str, int]) -> None:
    assert tracing.server_of(url) == expected


def test_property_text_is_none_for_what_is_not_text() -> None:
    properties: dict[str, Any] = {"a": "x", "b": b"bytes", "c": "", "d": 5, "f": "z" * 5000}
    assert [tracing.property_text(properties, k) for k in "abcdg"] == ["x", None, None, None,
                                                                      None]
    assert tracing.property_text(properties, "f") == "z" * tracing.MAX_PROPERTY_TEXT
    assert tracing.property_text(None, "a") is None


def test_hostile_property_values_are_cleaned_and_bounded() -> None:
    hostile: dict[Any, Any] = {
        "why\r\nTraceparent: forged": "line\r\nbreak\x00", "huge": "x" * 10_000,
        "big": 2**70, "small": -(2**63), "nan": math.nan, "ratio": 0.5, "flag": True,
        "raw": b"\xff\xfeok", "nested": {"a": [1, 2]}, 17: "key not text", "\x00\x01": "gone",
        "n" * 500: "long name"}
    cleaned = tracing.clean_properties(hostile)
    assert cleaned["why Traceparent: forged"] == "line break"
    assert cleaned["huge"] == "x" * tracing.MAX_PROPERTY_TEXT
    assert (cleaned["big"], cleaned["small"]) == (str(2**70), -(2**63))
    assert (cleaned["nan"], cleaned["ratio"], cleaned["flag"]) == ("nan", 0.5, True)
    assert cleaned["raw"] == "\ufffd\ufffdok"
    assert cleaned["nested"] == "{'a': [1, 2]}"
    assert cleaned["17"] == "key not text"
    assert cleaned["n" * tracing.MAX_PROPERTY_NAME] == "long name"
    assert "" not in cleaned
    assert len(cleaned) == len(hostile) - 1
    many = tracing.clean_properties({f"k{i}": i for i in range(500)})
    assert len(many) == tracing.MAX_PROPERTIES


def test_trace_context_travels_in_application_properties_and_garbage_starts_a_new_trace(
        ) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("send") as span:
        properties: dict[str, Any] = {"correlation-id": "c-1"}
        tracing.inject_properties(properties, trace.set_span_in_context(span))
    assert properties["traceparent"].startswith("00-")
    parent = trace.get_current_span(tracing.extract_context(properties)).get_span_context()
    assert (parent.trace_id, parent.span_id) == (span.get_span_context().trace_id,
                                                 span.get_span_context().span_id)
    for garbage in ({}, None, {"traceparent": "garbage"}, {"traceparent": 17},
                    {"traceparent": b"00-bytes"}, {"traceparent": "00-" + "0" * 32 + "-" +
                                                   "0" * 16 + "-01"}, {17: "x"}):
        lost = trace.get_current_span(
            tracing.extract_context(garbage)).get_span_context()  # type: ignore[arg-type]
        assert not lost.is_valid  # a new trace, never an exception


def test_injecting_never_raises_into_the_caller() -> None:
    class Broken(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            raise RuntimeError("no")

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("send") as span:
        tracing.inject_properties(Broken(), trace.set_span_in_context(span))


def test_a_received_body_and_its_fields_are_read_as_bytes_and_clean_text() -> None:
    assert body_bytes('{"a": "é"}') == '{"a": "é"}'.encode()
    assert body_bytes(b"\x00raw") == b"\x00raw"
    assert body_bytes(memoryview(b"m")) == b"m"
    assert [body_bytes(None), body_bytes({"a": 1}), body_bytes(7)] == [None, None, None]
    known = uuid.UUID(int=7)
    assert field_text(known) == str(known)
    assert field_text(42) == "42"
    assert field_text(b"id\n\xff") == "id \ufffd"
    assert field_text("x" * 5000) == "x" * 1024
    assert [field_text(None), field_text(""), field_text(b"")] == [None, None, None]


@pytest.mark.parametrize(("failure", "outcome"), [
    (None, Outcome.ACCEPT),
    (TransientFailure("timed out"), Outcome.RETRY),
    (SendFailed("down", error_type="NotConnected", replaced=False), Outcome.RELEASE),
    (BadMessage("not JSON"), Outcome.REJECT),
    (PermanentFailure("corrupt"), Outcome.REJECT),
    (KeyError("a bug"), Outcome.REJECT),
])
def test_a_delivery_is_settled_by_what_became_of_it(failure: BaseException | None,
                                                    outcome: Outcome) -> None:
    assert settle_outcome(failure) is outcome


def test_the_correlation_id_is_the_property_else_the_amqp_fields_else_new() -> None:
    assert correlation_of(_received({"correlation-id": "c-1"})) == "c-1"
    assert correlation_of(_received({"correlation-id": 5})) == "amqp-c"
    assert correlation_of(_received(correlation_id=None)) == "m-1"
    made = correlation_of(_received(correlation_id=None, message_id=None))
    assert uuid.UUID(made).version == 4


def test_billing_failures_are_drawn_from_the_seed_per_attempt() -> None:
    never = Simulation(0, 0, 0, 0, 0, billing_failure=0.0)
    always = Simulation(0, 0, 0, 0, 0, billing_failure=1.0)
    half = Simulation(0, 0, 0, 0, 0, billing_failure=0.5)
    assert not billing_fails(1, never, "c", 1)
    assert billing_fails(1, always, "c", 1)
    draws = [billing_fails(1, half, f"c-{i}", 1) for i in range(200)]
    assert draws == [billing_fails(1, half, f"c-{i}", 1) for i in range(200)]
    assert 60 < sum(draws) < 140
    assert [billing_fails(1, half, "c-0", a) for a in range(1, 30)].count(True) not in (0, 29)
    assert Simulation.of(never, {"billing_failure": 3}).billing_failure == 1.0


def test_invoice_messages_keep_their_ids_across_tries() -> None:
    request = invoice_request_of({"order_id": "o-1", "customer": "ann", "amount": 5,
                                  "items": [], "simulate": {"billing_failure": 0}})
    assert {k: v for k, v in request.items() if k != "requested_at"} == {
        "type": "invoice.requested", "order_id": "o-1", "customer": "ann", "amount": 5,
        "simulate": {"billing_failure": 0}}
    assert invoice_request_id("o-1") == invoice_request_id("o-1") != invoice_request_id("o-2")
    invoice = invoice_of(request, 3)
    assert (invoice["type"], invoice["invoice_id"], invoice["attempts"]) == (
        "invoice.issued", invoice_id("o-1"), 3)
    assert invoice_id("o-1") != invoice_request_id("o-1")


def test_config_reads_the_artemis_knobs_and_names_bad_ones() -> None:
    config = DemoConfig.from_env({"FLOWSCOPE_DEMO_ARTEMIS_URL": "amqp://u:secret@h:5692",
                                  "FLOWSCOPE_DEMO_BILLING_FAILURE": "0.3"})
    assert (config.artemis_url, config.billing_failure) == ("amqp://u:secret@h:5692", 0.3)
    assert "secret" not in repr(config)
    assert DemoConfig().artemis_url == ""  # no Artemis leg by default
    with pytest.raises(ConfigError) as caught:
        DemoConfig.from_env({"FLOWSCOPE_DEMO_ARTEMIS_URL": "stomp://u:secret@h:61613",
                             "FLOWSCOPE_DEMO_BILLING_FAILURE": "2"})
    message = str(caught.value)
    assert "secret" not in message
    for name in ("ARTEMIS_URL", "BILLING_FAILURE"):
        assert f"FLOWSCOPE_DEMO_{name}" in message


def test_a_link_needs_a_url_and_sends_nothing_before_it_connects() -> None:
    with pytest.raises(ValueError, match="FLOWSCOPE_DEMO_ARTEMIS_URL"):
        ArtemisLink(DemoConfig(), "x", trace.get_tracer("test"))
    with pytest.raises(ValueError, match="positive"):
        ArtemisLink(ARTEMIS, "x", trace.get_tracer("test"), send_timeout_s=0)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    link = ArtemisLink(ARTEMIS, "x", provider.get_tracer("test"))
    assert (link.where, link.connected) == ("127.0.0.1:5692", False)
    with pytest.raises(SendFailed, match=r"not connected to Artemis at 127\.0\.0\.1:5692") as sent:
        asyncio.run(link.send("p.invoices", {"a": 1}, correlation_id="c-1"))
    assert sent.value.error_type == "NotConnected"
    (span,) = exporter.get_finished_spans()
    assert (span.name, span.kind, span.status.status_code.name) == (
        "send p.invoices", trace.SpanKind.PRODUCER, "ERROR")
    assert dict(span.attributes or {})["error.type"] == "NotConnected"


def test_the_services_use_the_demo_url_else_the_external_broker_else_none(
        tmp_path: Path) -> None:
    home = {"FLOWSCOPE_HOME": str(tmp_path)}
    native = Settings.from_env(home)  # no broker runs in this home
    assert artemis_url(native, {}) == ""
    assert artemis_url(native, {"FLOWSCOPE_DEMO_ARTEMIS_URL": "amqp://x:1"}) == "amqp://x:1"
    external = Settings.from_env({
        **home, "FLOWSCOPE_ARTEMIS_URL": "amqp://u:p@artemis:5672",
        "FLOWSCOPE_ARTEMIS_MANAGEMENT_URL": "http://u:p@artemis:8161/console/jolokia"})
    assert artemis_url(external, {}) == "amqp://u:p@artemis:5672"
    assert artemis_url(external, {"FLOWSCOPE_DEMO_ARTEMIS_URL": ""}) == ""  # turned off


def test_the_demo_hands_its_artemis_url_to_every_child_and_none_means_none(
        tmp_path: Path) -> None:
    settings = Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path)})
    env = child_environment(settings, "127.0.0.1:9092", None,
                            artemis_url="amqp://u:p@127.0.0.1:5692")
    assert env["FLOWSCOPE_DEMO_ARTEMIS_URL"] == "amqp://u:p@127.0.0.1:5692"
    assert child_environment(settings, "127.0.0.1:9092", None)[
        "FLOWSCOPE_DEMO_ARTEMIS_URL"] == ""


def test_the_artemis_services_run_only_with_artemis() -> None:
    off = DemoConfig()
    on = replace(off, artemis_url="amqp://h:5692")
    assert not set(services_to_run(SERVICES, off)) & set(ARTEMIS_SERVICES)
    assert set(ARTEMIS_SERVICES) <= set(services_to_run(SERVICES, on))
    assert services_to_run(("orders", "billing", "ledger"), on) == ("orders", "billing",
                                                                    "ledger")
    with pytest.raises(FlowscopeError, match="billing, mailer consume Artemis"):
        services_to_run(("orders", "billing", "mailer"), off)


def _option(args: tuple[str, ...], name: str) -> str:
    return args[args.index(name) + 1]


def test_with_artemis_an_invoice_backlog_phase_comes_before_the_burst() -> None:
    steps = plan_steps(DemoOptions(duration_s=140, scenario="incident", rate=10, seed=3,
                                   rabbitmq=True, nats=True, artemis=True))
    assert [s.at_s for s in steps] == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0]
    invoices, burst = steps[5:]
    assert invoices.text.startswith("phase 6/7 invoice backlog: billing detaches")
    assert burst.text.startswith("phase 7/7 failure burst")
    assert _option(invoices.load, "--pause-group") == "billing"
    assert (_option(invoices.load, "--pause-after"), _option(invoices.load, "--duration")) == (
        "0", "20")
    assert 0 < float(_option(invoices.load, "--pause-for")) < 20  # time left to drain
    assert len({_option(s.load, "--seed") for s in steps if s.load}) == 5
    alone = plan_steps(DemoOptions(duration_s=100, scenario="incident", artemis=True))
    assert [s.text.split(":")[0] for s in alone[3:]] == ["phase 4/5 invoice backlog",
                                                         "phase 5/5 failure burst"]
