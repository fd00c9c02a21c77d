"""Open the store the settings name: the one place that knows the backends."""

from __future__ import annotations

from pathlib import Path

from base.settings import CollectorSettings, Settings
from store.contract import Store
from store.postgres.backend import PostgresStore, is_postgres_url
from store.sqlite.backend import SqliteStore
from store.vocabulary import FlowRules


def flow_rules(collector: CollectorSettings) -> FlowRules:
    """The flow rules the settings describe."""
    return FlowRules(collector.completed_topics, collector.dead_letter_topics,
                     collector.compensated_topics, collector.stuck_after_s)


def open_store(settings: Settings, *, readonly: bool = False) -> Store:
    """The store named by FLOWSCOPE_STORE (default under FLOWSCOPE_HOME)."""
    collector = settings.collect
    return open_store_at(collector.store, flow_rules(collector), bucket_s=collector.bucket_s,
                         raw_retention_s=collector.raw_retention_s,
                         aggregate_retention_s=collector.aggregate_retention_s,
                         readonly=readonly)


def open_store_at(location: Path | str, rules: FlowRules, *, bucket_s: int = 10,
                  raw_retention_s: float = 86400, aggregate_retention_s: float = 7 * 86400,
                  readonly: bool = False) -> Store:
    """The store at a location: a file path, sqlite:///path, or a postgresql:// URL
    (StoreError when it cannot be opened, or is not a Flowscope store of a version this one
    reads)."""
    text = str(location)
    if is_postgres_url(text):
        return PostgresStore(text, rules, bucket_s=bucket_s, raw_retention_s=raw_retention_s,
                             aggregate_retention_s=aggregate_retention_s, readonly=readonly)
    path = Path(text.removeprefix("sqlite://")) if text.startswith("sqlite:///") else Path(text)
    return SqliteStore(path, rules, bucket_s=bucket_s, raw_retention_s=raw_retention_s,
                       aggregate_retention_s=aggregate_retention_s, readonly=readonly)
