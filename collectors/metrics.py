"""Lag and collector counters in the Prometheus text format (GET /metrics on the collector's
loopback port), the way Burrow, kafka-lag-exporter and kminion users wire lag into Grafana."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from collectors.supervise import ComponentHealth
from store.records import GroupLag, LagRow
from store.vocabulary import ComponentState, GroupStatus, PartitionStatus

GROUP_STATUS_CODE = {GroupStatus.OK: 0, GroupStatus.WARN: 1, GroupStatus.ERR: 2}
PARTITION_STATUS_CODE = {PartitionStatus.OK: 0, PartitionStatus.WARN: 1, PartitionStatus.STOP: 2,
                         PartitionStatus.STALL: 3, PartitionStatus.REWIND: 4}
COMPONENT_STATE_CODE = {ComponentState.OK: 0, ComponentState.STARTING: 1,
                        ComponentState.DEGRADED: 2, ComponentState.DOWN: 3}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


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
        "flowscope_collector_events_total": ("What the collector counted, by name", []),
        "flowscope_collector_component_state": (
            "0 ok, 1 starting, 2 degraded, 3 down, per collector component", []),
        "flowscope_collector_component_restarts_total": (
            "Restarts of a collector component after a failure", []),
    }
    for row in rows:
        labels = _labels(group=row.group, topic=row.topic, partition=row.partition)
        for name, value in (("flowscope_consumergroup_lag", row.lag),
                            ("flowscope_consumergroup_lag_seconds", row.lag_seconds),
                            ("flowscope_consumergroup_committed_offset", row.committed),
                            ("flowscope_partition_log_end_offset", row.end),
                            ("flowscope_consumergroup_partition_status",
                             PARTITION_STATUS_CODE.get(row.status))):
            if value is not None:
                families[name][1].append(f"{name}{labels} {value}")
    for group in groups:
        families["flowscope_consumergroup_status"][1].append(
            f"flowscope_consumergroup_status{_labels(group=group.group)} "
            f"{GROUP_STATUS_CODE.get(group.status, 2)}")
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
