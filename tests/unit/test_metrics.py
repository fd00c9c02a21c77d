from collectors.metrics import render_prometheus
from store.records import GroupLag, LagRow


def test_prometheus_text_has_every_family_and_escapes_labels() -> None:
    rows = [LagRow('we"ird\ngroup', "orders", 2, 10, 15, 5, 1.5, "WARN", 100.0),
            LagRow("g", "orders", 0, None, 3, None, None, "OK", 100.0)]
    groups = [GroupLag("g", "ERR", "STOP", 5, 1.5, 1.0, 0.5, None, 100.0)]
    text = render_prometheus(rows, groups, {"spans_written": 7})
    lines = text.splitlines()
    assert 'flowscope_consumergroup_lag{group="we\\"ird\\ngroup",topic="orders",partition="2"} 5' \
        in lines
    assert 'flowscope_consumergroup_lag_seconds{group="we\\"ird\\ngroup",topic="orders",' \
        'partition="2"} 1.5' in lines
    assert 'flowscope_consumergroup_partition_status{group="g",topic="orders",partition="0"} 0' \
        in lines
    assert 'flowscope_consumergroup_status{group="g"} 2' in lines
    assert 'flowscope_collector_events_total{name="spans_written"} 7' in lines
    assert "# TYPE flowscope_collector_events_total counter" in lines
    assert not any("committed_offset" in line and 'partition="0"' in line for line in lines)
    assert text.endswith("\n")


def test_queues_have_their_own_series_and_every_backlog_a_system_label() -> None:
    rows = [LagRow("thumbnails.jobs", "thumbnails", None, None, None, 9, 4.0, "STOP", 100.0,
                   "rabbitmq", ready=7, unacknowledged=2, consumers=0),
            LagRow("g", "orders", 0, 5, 8, 3, 1.0, "OK", 100.0)]
    groups = [GroupLag("thumbnails.jobs", "ERR", "STOP", 9, 4.0, None, None, None, 100.0,
                       "rabbitmq"),
              GroupLag("g", "OK", None, 3, 1.0, 2.0, -1.0, 3.0, 100.0)]
    lines = render_prometheus(rows, groups, {}).splitlines()
    queue = 'system="rabbitmq",queue="thumbnails.jobs",exchange="thumbnails"'
    assert f"flowscope_queue_messages_ready{{{queue}}} 7" in lines
    assert f"flowscope_queue_messages_unacknowledged{{{queue}}} 2" in lines
    assert f"flowscope_queue_consumers{{{queue}}} 0" in lines
    assert 'flowscope_backlog_messages{system="rabbitmq",group="thumbnails.jobs"} 9' in lines
    assert 'flowscope_backlog_status{system="rabbitmq",group="thumbnails.jobs"} 2' in lines
    assert 'flowscope_backlog_seconds{system="kafka",group="g"} 1.0' in lines
    # A queue is not a consumer group of Kafka's: none of its figures are in those series.
    assert not any(line.startswith("flowscope_consumergroup") and "thumbnails" in line
                   for line in lines)
    assert 'flowscope_consumergroup_lag{group="g",topic="orders",partition="0"} 3' in lines


def test_jetstream_consumers_have_their_own_series_and_a_backlog_with_system_nats() -> None:
    rows = [LagRow("tracking", "SHIPMENTS", None, 90, 130, 40, 12.0, "STALL", 100.0, "nats",
                   ready=38, unacknowledged=2)]
    groups = [GroupLag("tracking", "ERR", "STALL", 40, 12.0, 0.0, 3.0, None, 100.0, "nats")]
    lines = render_prometheus(rows, groups, {}).splitlines()
    consumer = 'stream="SHIPMENTS",consumer="tracking"'
    assert f"flowscope_jetstream_consumer_pending{{{consumer}}} 38" in lines
    assert f"flowscope_jetstream_consumer_ack_pending{{{consumer}}} 2" in lines
    assert f"flowscope_jetstream_consumer_ack_floor{{{consumer}}} 90" in lines
    assert f"flowscope_jetstream_stream_last_sequence{{{consumer}}} 130" in lines
    assert 'flowscope_backlog_messages{system="nats",group="tracking"} 40' in lines
    assert 'flowscope_backlog_status{system="nats",group="tracking"} 2' in lines
    assert not any(line.startswith(("flowscope_queue", "flowscope_consumergroup"))
                   and "tracking" in line for line in lines)


def test_artemis_queues_have_the_queue_series_with_their_address() -> None:
    rows = [LagRow("DLQ.invoices", "DLA", None, 0, 3, 3, None, "STOP", 100.0, "activemq",
                   ready=3, unacknowledged=0, consumers=0)]
    groups = [GroupLag("DLQ.invoices", "ERR", "STOP", 3, None, None, None, None, 100.0,
                       "activemq")]
    lines = render_prometheus(rows, groups, {}).splitlines()
    queue = 'system="activemq",queue="DLQ.invoices",address="DLA"'
    assert f"flowscope_queue_messages_ready{{{queue}}} 3" in lines
    assert f"flowscope_queue_consumers{{{queue}}} 0" in lines
    assert 'flowscope_backlog_messages{system="activemq",group="DLQ.invoices"} 3' in lines
    assert not any("exchange=" in line and "DLQ.invoices" in line for line in lines)
