"""The pages say when a collector component is down or degraded, or the collector stopped
reporting; and nothing when all is well."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from collectors.supervise import Health
from dashboard.collector_health import STALE_S, collector_notes
from flowscope.demo import health_changes
from flowscope.inspect import inspect_health
from store.contract import ComponentRow
from tests.store_writer import open_writable
from tests.unit.test_dashboard_pages import APP, PAGES
from tests.unit.test_hostile_input import RULES

NOW = 1_800_000_000.0


def _row(component: str, state: str, reason: str | None = None, at_s: float = NOW
         ) -> ComponentRow:
    return ComponentRow(component, state, reason, NOW - 60, 2, at_s)


def test_down_and_degraded_components_are_named_with_their_reason() -> None:
    notes = collector_notes([_row("tap", "down", "RuntimeError: boom"),
                             _row("lag_poller", "degraded", "broker away"),
                             _row("spans_topic", "ok")], NOW)
    assert [(n.level, n.reason) for n in notes] == [("error", "RuntimeError: boom"),
                                                    ("warning", "broker away")]
    assert "`tap` is down" in notes[0].headline
    assert "restarted 2 times" in notes[0].headline


def test_a_collector_that_stopped_reporting_is_one_warning() -> None:
    notes = collector_notes([_row("tap", "down", "x", at_s=NOW - STALE_S - 5)], NOW)
    assert len(notes) == 1
    assert "has not reported for 35 s" in notes[0].headline


def test_several_collectors_are_named_and_one_gone_silent_is_said_so() -> None:
    rows = [ComponentRow("tap", "down", "boom", NOW - 60, 1, NOW, "host-a:10"),
            ComponentRow("tap", "ok", None, NOW - 60, 0, NOW, "host-b:20"),
            ComponentRow("lag_poller", "standby", "another runs it", NOW - 60, 0, NOW,
                         "host-b:20"),
            ComponentRow("spans_topic", "down", "old", NOW - 600, 0, NOW - STALE_S - 5,
                         "host-c:30")]
    notes = collector_notes(rows, NOW)
    assert [n.level for n in notes] == ["warning", "error"]
    assert "`host-c:30` has not reported since" in notes[0].headline
    assert "`tap on host-a:10` is down" in notes[1].headline  # host-c's old rows left out


def test_all_well_or_never_reported_says_nothing() -> None:
    assert collector_notes([], NOW) == []
    assert collector_notes([_row("tap", "ok"), _row("x", "starting")], NOW) == []
    assert collector_notes([_row("tap", "down", at_s=float("inf"))], NOW)[0].level == "error"


@pytest.mark.parametrize("page", PAGES)
def test_every_page_shows_a_component_that_is_down(page: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store.db"
    monkeypatch.setenv("FLOWSCOPE_HOME", str(tmp_path))
    monkeypatch.setenv("FLOWSCOPE_STORE", str(path))
    health = Health()
    health.ok("spans_topic")
    health.down("tap", "RuntimeError: <b>boom</b> **x**")
    store = open_writable(path, RULES)
    store.write_health(health.snapshot(), time.time_ns())
    store.close()
    app = AppTest.from_file(APP, default_timeout=60)
    app.switch_page(page)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("`tap` is down" in e.value or "tap" in e.value for e in app.error)
    assert "RuntimeError: <b>boom</b> **x**" in [c.value for c in app.code]


def test_the_demo_says_when_a_component_goes_down_and_comes_back() -> None:
    ok = {"tap": ("ok", None), "spans_topic": ("ok", None)}
    down = {"tap": ("down", "RuntimeError: boom"), "spans_topic": ("ok", None)}
    assert health_changes({}, ok) == []
    assert health_changes(ok, down) == ["collector: tap is down: RuntimeError: boom"]
    assert health_changes(down, down) == []
    assert health_changes(down, ok) == ["collector: tap is ok again"]
    assert health_changes({}, {"x": ("degraded", None)}) == [
        "collector: x is degraded: no reason given"]


def test_inspect_health_lists_components_and_the_age_of_the_report(tmp_path: Path) -> None:
    store = open_writable(tmp_path / "s.db", RULES)
    assert "no health report" in inspect_health(store, False)
    health = Health()
    health.down("tap", "RuntimeError: boom")
    health.ok("spans_topic")
    store.write_health(health.snapshot(), int(NOW * 1e9))
    text = inspect_health(store, False, now_s=NOW + 5)
    assert "tap" in text
    assert "RuntimeError: boom" in text
    assert "reported 5s ago" in text
    assert "stopped" in inspect_health(store, False, now_s=NOW + 300)
    document = json.loads(inspect_health(store, True, now_s=NOW + 5))
    assert {c["component"]: c["state"] for c in document["components"]} == {
        "spans_topic": "ok", "tap": "down"}
    store.close()
