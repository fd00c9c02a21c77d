"""Lag and collector counters in the Prometheus text format (GET /metrics on the collector's
loopback port), the way Burrow, kafka-lag-exporter and kminion users wire lag into Grafana.

Kafka's groups and partitions keep the series those tools have (flowscope_consumergroup_*,
flowscope_partition_*); RabbitMQ queues have their own (flowscope_queue_*), JetStream
consumers theirs (flowscope_jetstream_*), Artemis queues flowscope_queue_* with an address
label instead of an exchange; and every group, queue or consumer of every system
is in flowscope_backlog_*, with a system label, for one panel of all of them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from collectors.supervise import ComponentHealth
from store.records import GroupLag, LagRow
from store.vocabulary import (
    ACTIVEMQ,
    KAFKA,
    NATS,
    ComponentState,
    GroupStatus,
    PartitionStatus,
)

GROUP_STATUS_CODE = {GroupStatus.OK: 0, GroupStatus.WARN: 1, GroupStatus.ERR: 2}
PARTITION_STATUS_CODE = {PartitionStatus.OK: 0, PartitionStatus.WARN: 1, PartitionStatus.STOP: 2,
                         PartitionStatus.STALL: 3, PartitionStatus.REWIND: 4}
COMPONENT_STATE_CODE = {ComponentState.OK: 0, ComponentState.STARTING: 1,
                        ComponentState.DEGRADED: 2, ComponentState.DOWN: 3,
                        ComponentState.STANDBY: 4}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _row_samples(row: LagRow) -> list[tuple[str, str, object]]:
    """(family, labels, value) of one lag row: a Kafka partition's, a JetStream consumer's,
    or a queue's."""
    if row.system == NATS:
        labels = _labels(stream=row.topic, consumer=row.group)
        return [("flowscope_jetstream_consumer_pending", labels, row.ready),
                ("flowscope_jetstream_consumer_ack_pending", labels, row.unacknowledged),
                ("flowscope_jetstream_consumer_ack_floor", labels, row.committed),
                ("flowscope_jetstream_stream_last_sequence", labels, row.end)]
    if row.system != KAFKA:
        labels = _labels(system=row.system, queue=row.group, address=row.topic) \
            if row.system == ACTIVEMQ else \
            _labels(system=row.system, queue=row.group, exchange=row.topic)
        return [("flowscope_queue_messages_ready", labels, row.ready),
                ("flowscope_queue_messages_unacknowledged", labels, row.unacknowledged),
                ("flowscope_queue_consumers", labels, row.consumers)]
    labels = _labels(group=row.group, topic=row.topic, partition=row.partition)
    return [("flowscope_consumergroup_lag", labels, row.lag),
            ("flowscope_consumergroup_lag_seconds", labels, row.lag_seconds),
            ("flowscope_consumergroup_committed_offset", labels, row.committed),
            ("flowscope_partition_log_end_offset", labels, row.end),
            ("flowscope_consumergroup_partition_status", labels,
             PARTITION_STATUS_CODE.get(row.status))]


def render_prometheus(rows: Iterable[LagRow], groups: Iterable[GroupLag],
                      counters: Mapping[str, int],
                      components: Iterable[ComponentHealth] = ()) -> str:
    """The exposition text for the latest lag poll and the collector's counters."""
    families: dict[str, tuple[str, list[str]]] = {
        "flowscope_consumergroup_lag": ("Messages not yet consumed, per partition", []),
        "flowscope_consumergroup_lag_seconds": ("Age of the next message to consume", []),
        "flowscope_consumergroup_committed_offset": ("Committed offset", []),
        "flowscope_partition_log_end_offset": ("Log-end offset", []),
        "flowscope_consumergroup_partition_status": (
            "0 OK, 1 WARN, 2 STOP, 3 STALL, 4 REWIND", []),
        "flowscope_consumergroup_status": ("0 OK, 1 WARN, 2 ERR", []),
        "flowscope_queue_messages_ready": ("Messages ready for a consumer, per queue", []),
        "flowscope_queue_messages_unacknowledged": (
            "Messages delivered and not yet acknowledged, per queue", []),
        "flowscope_queue_consumers": ("Consumers attached, per queue", []),
        "flowscope_jetstream_consumer_pending": (
            "Messages not yet delivered, per JetStream consumer", []),
        "flowscope_jetstream_consumer_ack_pending": (
            "Messages delivered and not yet acknowledged, per JetStream consumer", []),
        "flowscope_jetstream_consumer_ack_floor": (
            "Stream sequence below which every message is acknowledged", []),
        "flowscope_jetstream_stream_last_sequence": (
            "Last sequence of the consumer's stream", []),
        "flowscope_backlog_messages": (
            "Messages not yet consumed (acknowledged), per group or queue of each system", []),
        "flowscope_backlog_seconds": (
            "Age of the oldest message waiting, per group or queue of each system", []),
        "flowscope_backlog_status": ("0 OK, 1 WARN, 2 ERR, per group or queue", []),
        "flowscope_collector_events_total": ("What the collector counted, by name", []),
        "flowscope_collector_component_state": (
            "0 ok, 1 starting, 2 degraded, 3 down, per collector component", []),
        "flowscope_collector_component_restarts_total": (
            "Restarts of a collector component after a failure", []),
    }
    for row in rows:
        for name, labels, value in _row_samples(row):
            if value is not None:
                families[name][1].append(f"{name}{labels} {value}")
    for group in groups:
        code = GROUP_STATUS_CODE.get(group.status, 2)
        if group.system == KAFKA:
            families["flowscope_consumergroup_status"][1].append(
                f"flowscope_consumergroup_status{_labels(group=group.group)} {code}")
        labels = _labels(system=group.system, group=group.group)
        for name, value in (("flowscope_backlog_messages", group.lag),
                            ("flowscope_backlog_seconds", group.lag_seconds),
                            ("flowscope_backlog_status", code)):
            if value is not None:
                families[name][1].append(f"{name}{labels} {value}")
    for name, value in sorted(counters.items()):
        families["flowscope_collector_events_total"][1].append(
            f"flowscope_collector_events_total{_labels(name=name)} {value}")
    for component in components:
        labels = _labels(component=component.name)
        families["flowscope_collector_component_state"][1].append(
            f"flowscope_collector_component_state{labels} "
            f"{COMPONENT_STATE_CODE.get(component.state, 3)}")
        families["flowscope_collector_component_restarts_total"][1].append(
            f"flowscope_collector_component_restarts_total{labels} {component.restarts}")
    lines = []
    for name, (help_text, samples) in families.items():
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(lines) + "\n"
