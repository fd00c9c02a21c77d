"""`flowscope inspect` output on a store seeded with known flows (no server)."""

from __future__ import annotations

import json
from pathlib import Path

from base.settings import Settings
from flowscope import inspect
from store.factory import open_store
from tests.dashboard_seed import COMPLETED, DEAD, seed_store


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
