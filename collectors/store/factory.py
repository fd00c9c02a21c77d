"""Open the store the settings name; kept light, since `flowscope inspect` starts here."""

from __future__ import annotations

from collectors.flows.assembler import FlowRules
from collectors.store.sqlite import SqliteStore
from flowscope.settings import CollectorSettings, Settings


def flow_rules(collector: CollectorSettings) -> FlowRules:
    """The flow rules the settings describe."""
    return FlowRules(collector.completed_topics, collector.dead_letter_topics,
                     collector.compensated_topics, collector.stuck_after_s)


def open_store(settings: Settings, *, readonly: bool = False) -> SqliteStore:
    """The store named by FLOWSCOPE_STORE (default under FLOWSCOPE_HOME)."""
    collector = settings.collect
    return SqliteStore(collector.store, flow_rules(collector), bucket_s=collector.bucket_s,
                       raw_retention_s=collector.raw_retention_s,
                       aggregate_retention_s=collector.aggregate_retention_s, readonly=readonly)
