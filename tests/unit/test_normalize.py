from collectors.normalize import NormalizeReport, normalize_request
from store.records import SpanRecord
from tests.otlp_factory import new_span_id, new_trace_id, request, span


def _one(service: str, **kwargs: object) -> tuple[SpanRecord, NormalizeReport]:
    report = NormalizeReport()
    records = list(normalize_request(request({service: [span(**kwargs)]}), report))  # type: ignore[arg-type]
    assert len(records) == 1
    return records[0], report


def test_current_conventions_map_onto_the_record() -> None:
    record, report = _one("payments", name="process orders", kind="consumer", attributes={
        "messaging.system": "kafka", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "2", "messaging.kafka.offset": 17,
        "messaging.consumer.group.name": "payments",
        "messaging.message.conversation_id": "order-9", "messaging.kafka.message.key": "k",
        "messaging.message.retry_attempt": 3, "error.type": "Timeout"})
    assert record.service == "payments"
    assert (record.operation, record.topic, record.partition, record.offset) == \
        ("process", "orders", 2, 17)
    assert record.message_id == "orders.2.17"
    assert (record.consumer_group, record.correlation_id, record.message_key) == \
        ("payments", "order-9", "k")
    assert record.retry_attempt == 3
    assert record.error
    assert record.error_type == "Timeout"
    assert record.is_consume
    assert report.problems == {}


def test_pre_1_17_names_map_onto_the_same_record() -> None:
    record, _ = _one("legacy", name="orders send", kind="producer", attributes={
        "messaging.system": "kafka", "messaging.destination": "orders",
        "messaging.destination_kind": "topic", "messaging.kafka.partition": 1,
        "messaging.message_id": "m-1", "messaging.conversation_id": "c-1",
        "messaging.kafka.message_key": "key-1", "messaging.kafka.consumer_group": "g"})
    assert (record.operation, record.topic, record.partition) == ("send", "orders", 1)
    assert (record.correlation_id, record.message_key, record.consumer_group) == \
        ("c-1", "key-1", "g")
    assert record.message_id == "m-1"
    assert record.is_send


def test_intermediate_names_and_publish_operation() -> None:
    record, _ = _one("svc", name="publish orders", kind="producer", attributes={
        "messaging.system": "kafka", "messaging.operation": "publish",
        "messaging.destination.name": "orders", "messaging.kafka.destination.partition": 0,
        "messaging.kafka.message.offset": 5, "messaging.kafka.consumer.group": "g"})
    assert (record.operation, record.partition, record.offset, record.message_id) == \
        ("send", 0, 5, "orders.0.5")


def test_official_aiokafka_receive_span_is_a_consume_with_message_id() -> None:
    record, _ = _one("consumer", name="orders receive", kind="consumer", attributes={
        "messaging.system": "kafka", "messaging.operation.name": "receive",
        "messaging.operation.type": "receive", "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "0", "messaging.kafka.message.offset": 3,
        "messaging.message.id": "orders.0.3", "server.address": '["127.0.0.1:9092"]'})
    assert (record.operation, record.topic) == ("receive", "orders")
    assert record.message_id == "orders.0.3"
    assert record.is_consume


def test_confluent_style_process_span_with_only_a_link() -> None:
    producer = (new_trace_id(), new_span_id())
    record, _ = _one("svc", name="orders process", kind="consumer", links=[producer],
                     attributes={"messaging.system": "kafka"})
    assert (record.operation, record.topic, record.parent_span_id) == ("process", "orders", None)
    assert record.links == (producer,)


def test_topic_and_partition_come_from_a_message_id_when_missing() -> None:
    record, _ = _one("svc", name="handle", kind="consumer", attributes={
        "messaging.system": "kafka", "messaging.message.id": "files.uploaded.2.41"})
    assert (record.topic, record.partition, record.offset) == ("files.uploaded", 2, 41)


def test_batch_receive_span_keeps_its_links_and_count() -> None:
    links = [(new_trace_id(), new_span_id()) for _ in range(3)]
    record, _ = _one("svc", name="receive orders", kind="consumer", links=links, attributes={
        "messaging.system": "kafka", "messaging.destination.name": "orders",
        "messaging.batch.message_count": 3})
    assert record.batch_count == 3
    assert len(record.links) == 3


def test_non_messaging_span_is_kept_without_messaging_fields() -> None:
    record, report = _one("uploads", name="POST /files", kind="server",
                          attributes={"http.request.method": "POST"})
    assert (record.topic, record.operation, record.kind) == (None, None, "server")
    assert report.spans == 1


def test_odd_values_are_kept_as_far_as_they_go_and_counted() -> None:
    record, report = _one("svc", name="mystery", kind="producer", attributes={
        "messaging.system": "kafka", "messaging.destination.partition.id": "not-a-number",
        "messaging.kafka.offset": True})
    assert record.topic is None
    assert (record.partition, record.offset) == (None, None)
    assert report.problems == {"messaging span without a destination": 1}


def test_spans_with_invalid_ids_are_counted_not_kept() -> None:
    export = request({"svc": [span(name="ok"), span(name="bad")]})
    export.resource_spans[0].scope_spans[0].spans[1].trace_id = b"\x01\x02"
    report = NormalizeReport()
    records = list(normalize_request(export, report))
    assert [r.name for r in records] == ["ok"]
    assert report.problems == {"invalid trace or span id": 1}
    assert report.spans == 2


def test_missing_service_name_is_unknown_service() -> None:
    export = request({"x": [span(name="a")]})
    del export.resource_spans[0].resource.attributes[:]
    records = list(normalize_request(export, NormalizeReport()))
    assert records[0].service == "unknown_service"
