import json

import pytest
from opentelemetry import trace

from demo_services import instrumentation as inst
from demo_services.config import ConfigError, DemoConfig
from demo_services.faults import Simulation, draw
from demo_services.loadgen import LoadPlan, flow_requests
from demo_services.orders import validate_order
from demo_services.processor import outcome
from demo_services.retry import Backoff, RetryPolicy
from demo_services.runtime import BadMessage, decode_payload, read_attempt
from demo_services.uploads import validate_upload

DEFAULTS = Simulation(0.1, 0.02, 0.05, 0.15, 20)


def test_backoff_doubles_up_to_its_maximum() -> None:
    policy = RetryPolicy(max_attempts=6, base_ms=200, max_ms=1000)
    assert [policy.backoff_ms(a) for a in range(1, 6)] == [200, 400, 800, 1000, 1000]


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(0, 1, 2)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(3, 500, 100)


def test_loop_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(0.2, 1.0)
    assert [backoff.next_s() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_s() == 0.2
    with pytest.raises(ValueError, match="backoff"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="backoff"):
        Backoff(2.0, 1.0)


def test_draw_is_deterministic_uniform_and_seed_dependent() -> None:
    values = [draw(1, "transient", f"c{i}", 1) for i in range(2000)]
    assert values == [draw(1, "transient", f"c{i}", 1) for i in range(2000)]
    assert all(0 <= v < 1 for v in values)
    assert 0.45 < sum(values) / len(values) < 0.55
    assert values != [draw(2, "transient", f"c{i}", 1) for i in range(2000)]


def test_simulation_overrides_take_valid_fields_only() -> None:
    merged = Simulation.of(DEFAULTS, {"transient_failure": 0.5, "work_ms": 3, "permanent_failure":
                                      "lots", "callback_failure": 7, "inventory_failure": True})
    assert merged == Simulation(0.5, 0.02, 1.0, 0.15, 3)
    assert Simulation.of(DEFAULTS, ["not", "a", "dict"]) == DEFAULTS


def test_processor_outcome_follows_probabilities() -> None:
    never = Simulation(0.0, 0.0, 0, 0, 0)
    always_transient = Simulation(1.0, 0.0, 0, 0, 0)
    always_permanent = Simulation(1.0, 1.0, 0, 0, 0)
    assert outcome(0, never, "c", 1) == "processed"
    assert outcome(0, always_transient, "c", 3) == "transient"
    assert outcome(0, always_permanent, "c", 1) == "permanent"


def test_demo_config_reads_environment_and_names_every_bad_value() -> None:
    config = DemoConfig.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "FLOWSCOPE_DEMO_SEED": "7",
                                  "FLOWSCOPE_DEMO_TOPIC_PREFIX": "x.",
                                  "FLOWSCOPE_DEMO_TRANSIENT_FAILURE": "0.5"})
    assert (config.bootstrap, config.seed, config.transient_failure) == ("k:1", 7, 0.5)
    assert config.topic("files.dlq") == "x.files.dlq"
    with pytest.raises(ConfigError) as caught:
        DemoConfig.from_env({"FLOWSCOPE_DEMO_TRANSIENT_FAILURE": "2",
                             "FLOWSCOPE_DEMO_MAX_ATTEMPTS": "many"})
    assert "FLOWSCOPE_DEMO_TRANSIENT_FAILURE" in str(caught.value)
    assert "FLOWSCOPE_DEMO_MAX_ATTEMPTS" in str(caught.value)


@pytest.mark.parametrize(("value", "reason"), [
    (None, "empty message value"), (b"", "empty message value"),
    (b"\xff\xfe", "value is not JSON"), (b"{oops", "value is not JSON"),
    (b"[1, 2]", "value is JSON list, not an object"),
])
def test_decode_payload_explains_bad_values(value: bytes | None, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        decode_payload(value)


def test_decode_payload_returns_the_object() -> None:
    assert decode_payload(b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize(("headers", "attempt"), [
    ([], 1), ([("retry-attempt", b"3")], 3), ([("retry-attempt", b"x")], 1),
    ([("retry-attempt", b"\xff")], 1), ([("retry-attempt", b"-2")], 1),
    ([("retry-attempt", b"99999")], 1),
])
def test_read_attempt_tolerates_garbage(headers: list[tuple[str, bytes]], attempt: int) -> None:
    assert read_attempt(headers) == attempt


def test_header_getter_ignores_non_utf8_and_extract_survives_garbage() -> None:
    headers = [("traceparent", b"\xff\xfe"), ("correlation-id", b"abc")]
    assert inst.GETTER.get(headers, "traceparent") is None
    assert inst.header_text(headers, "correlation-id") == "abc"
    for bad in (headers, [("traceparent", b"00-zz-garbage-01")], [], None):
        context = inst.extract_context(bad)
        assert not trace.get_current_span(context).get_span_context().is_valid


def test_header_setter_replaces_earlier_values() -> None:
    headers: list[tuple[str, bytes]] = [("traceparent", b"old"), ("x", b"1")]
    inst.SETTER.set(headers, "traceparent", "new")
    assert headers == [("x", b"1"), ("traceparent", b"new")]


def test_process_attributes_follow_messaging_conventions() -> None:
    attributes = inst.process_attributes(topic="orders", partition=2, offset=41, key=b"k1",
                                         group="payments", client_id="payments",
                                         correlation_id="c-1", attempt=2, size=10)
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.partition.id"] == "2"
    assert attributes["messaging.message.id"] == "orders.2.41"
    assert attributes["messaging.kafka.offset"] == 41
    assert attributes["messaging.consumer.group.name"] == "payments"
    assert attributes["messaging.message.conversation_id"] == "c-1"
    assert attributes["messaging.kafka.message.key"] == "k1"


def test_validate_upload_lists_every_problem() -> None:
    assert validate_upload({"name": "a.pdf", "size": 3, "callback_url": "http://h/x"}) == []
    problems = validate_upload({"name": "", "size": True, "callback_url": "ftp://h",
                                "simulate": 3})
    assert len(problems) == 4


def test_validate_order_lists_every_problem() -> None:
    good = {"customer": "c", "items": [{"sku": "s", "quantity": 1}], "amount": 3.5}
    assert validate_order(good) == []
    assert len(validate_order({"customer": "", "items": [{"sku": "s", "quantity": 0}],
                               "amount": -1})) == 3


def test_loadgen_plan_is_reproducible_and_alternates_flows() -> None:
    config = DemoConfig()
    plan = LoadPlan(rate=10, duration_s=1, seed=5, transient_failure=0.3)
    first, again = flow_requests(plan, config, 6), flow_requests(plan, config, 6)
    assert first == again
    assert [kind for kind, _, _ in first] == ["upload", "order"] * 3
    assert all(body["simulate"] == {"transient_failure": 0.3} for _, _, body in first)
    assert json.dumps(first)  # every body is plain JSON
    assert flow_requests(LoadPlan(rate=10, duration_s=1, seed=6), config, 6) != first
    with pytest.raises(ValueError, match="probability"):
        LoadPlan(rate=1, duration_s=1, permanent_failure=1.5)
