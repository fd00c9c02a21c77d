"""`flowscope inspect` output on a store seeded with known flows (no server)."""

from __future__ import annotations

import json
from pathlib import Path

from base.settings import Settings
from flowscope import inspect
from store.factory import flow_rules, open_store
from store.records import GroupLag, LagRow
from tests.dashboard_seed import COMPLETED, DEAD, seed_store
from tests.store_writer import open_writable


def _settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"FLOWSCOPE_HOME": str(tmp_path),
                              "FLOWSCOPE_STORE": str(tmp_path / "store.db")})


def test_inspect_flow_lists_the_steps_that_failed(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    seeded = seed_store(tmp_path / "store.db", settings)
    store = open_store(settings, readonly=True)
    try:
        found = json.loads(inspect.inspect_flow(store, DEAD, as_json=True) or "")
        text = inspect.inspect_flow(store, DEAD, as_json=False) or ""
        clean = json.loads(inspect.inspect_flow(store, COMPLETED[0], as_json=True) or "")
    finally:
        store.close()
    assert [(f["service"], f["step"], f["error"], f["trace_id"]) for f in found["failed_steps"]] \
        == [("processor", "process files.uploaded", "ValueError", seeded.dead_trace_id),
            ("processor", "process files.uploaded.retry", "ValueError", seeded.dead_trace_id)]
    failed = text.split("failed steps:\n", 1)[1].splitlines()
    assert failed[0].split() == ["AT", "SERVICE", "STEP", "KIND", "ERROR"]
    assert [line.split()[1:] for line in failed[1:]] == [
        ["processor", "process", "files.uploaded", "consumer", "ValueError"],
        ["processor", "process", "files.uploaded.retry", "consumer", "ValueError"]]
    assert clean["failed_steps"] == []


def test_inspect_lag_prints_jetstream_consumers_in_a_table_of_their_own(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    writable = open_writable(settings.collect.store, flow_rules(settings.collect))
    writable.write_lag(
        [LagRow("tracking", "SHIPMENTS", None, 90, 130, 40, 12.5, "STALL", 100.0, "nats", 38, 2),
         LagRow("g", "files", 0, 5, 7, 2, 0.5, "OK", 100.0)],
        [GroupLag("tracking", "ERR", "STALL", 40, 12.5, 0.0, 3.0, None, 100.0, "nats"),
         GroupLag("g", "OK", None, 2, 0.5, 1.0, 0.0, None, 100.0)])
    writable.close()
    store = open_store(settings, readonly=True)
    try:
        text = inspect.inspect_lag(store, None, as_json=False)
        found = json.loads(inspect.inspect_lag(store, None, as_json=True))
    finally:
        store.close()
    nats_table = next(t for t in text.split("\n\n") if "CONSUMER" in t).splitlines()
    assert nats_table[0].split() == ["SYSTEM", "CONSUMER", "STREAM", "ACK_FLOOR", "LAST_SEQ",
                                     "PENDING", "ACK_PENDING", "LAG", "LAG_S", "STATUS"]
    assert nats_table[1].split() == ["nats", "tracking", "SHIPMENTS", "90", "130", "38", "2",
                                     "40", "12.5", "STALL"]
    row = next(r for r in found["partitions"] if r["system"] == "nats")
    assert (row["group"], row["topic"], row["partition"], row["committed"], row["end"]) == \
        ("tracking", "SHIPMENTS", None, 90, 130)
