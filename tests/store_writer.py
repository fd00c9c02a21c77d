"""A store with the collector's write path on top (collectors/flows/writer.py), as tests and
benchmarks write to one: write_spans and write_messages go through flow derivation, every
other call to the store itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from base.settings import Settings
from collectors.flows.writer import FlowWriter
from store.contract import Store, WriteResult
from store.factory import flow_rules, open_store, open_store_at
from store.records import MessageRecord, SpanRecord
from store.vocabulary import FlowRules


class WritableStore:
    """A store, and the FlowWriter that writes to it."""

    def __init__(self, store: Store, rules: FlowRules, bucket_s: int = 10) -> None:
        self.store = store
        self.writer = FlowWriter(store, rules, bucket_s)

    def write_spans(self, records: Sequence[SpanRecord]) -> WriteResult:
        """Spans and what derives from them, as the collector writes them."""
        return self.writer.write_spans(records)

    def write_messages(self, records: Sequence[MessageRecord]) -> int:
        """Tapped messages, as the collector writes them."""
        return self.writer.write_messages(records)

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


def open_writable(location: Path | str, rules: FlowRules, *, bucket_s: int = 10,
                  **options: object) -> WritableStore:
    """The store at a location, opened through the factory, with the write path on top."""
    store = open_store_at(location, rules, bucket_s=bucket_s, **options)  # type: ignore[arg-type]
    return WritableStore(store, rules, bucket_s)


def open_settings_store(settings: Settings) -> WritableStore:
    """The store the settings name, with the write path the collector would put on it."""
    return WritableStore(open_store(settings), flow_rules(settings.collect),
                         settings.collect.bucket_s)
