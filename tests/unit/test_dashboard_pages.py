"""Every dashboard page, run by Streamlit's AppTest against a store seeded with known data."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from base.settings import Settings
from dashboard import queries
from store.contract import FlowRow, Store
from store.factory import open_store
from tests.dashboard_seed import COMPLETED, DEAD, DEAD_KEY, HOSTILE, SLOW, Seeded, seed_store

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
PAGES = ["app_pages/flow_map.py", "app_pages/lag.py", "app_pages/retries.py",
         "app_pages/flows.py", "app_pages/latency.py", "app_pages/propagation.py"]


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLOWSCOPE_HOME", str(tmp_path))
    monkeypatch.setenv("FLOWSCOPE_STORE", str(tmp_path / "store.db"))
    monkeypatch.delenv("FLOWSCOPE_JAEGER_UI_URL", raising=False)
    return tmp_path / "store.db"


@pytest.fixture
def seeded(store_env: Path) -> Seeded:
    return seed_store(store_env, Settings.from_env())


@pytest.fixture
def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60)


def _run(app: AppTest, page: str, **params: str) -> AppTest:
    app.switch_page(page)
    for key, value in params.items():
        app.query_params[key] = value
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def _chart_specs(app: AppTest) -> list[dict[str, object]]:
    return [json.loads(c.proto.spec) for c in app.get("plotly_chart")]


def _values(data: object) -> list[object]:
    """A Plotly array, plain or binary-encoded ({'dtype', 'bdata'})."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)  # type: ignore[call-overload]


LOADED: list[str] = []


def _first(store: Store, argument: str, now_ns: int) -> str:
    LOADED.append("first")
    return f"first {argument}"


def _second(store: Store, argument: str, now_ns: int) -> str:
    LOADED.append("second")
    return f"second {argument}"


# Built once, as queries.py builds its own: by one factory, so their cached functions have
# the same module and source, and only the name each is given apart.
FIRST, SECOND = queries.cached(_first), queries.cached(_second)


def test_two_loaders_of_one_argument_keep_their_own_cached_results(
        seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, "tick", lambda: 0)  # one clock tick for every call
    LOADED.clear()
    assert [FIRST("x"), SECOND("x"), FIRST("x"), SECOND("x")] == [
        "first x", "second x", "first x", "second x"]
    assert LOADED == ["first", "second"]  # each loaded once, then read from its cache
    # and so the dashboard's own, of one window
    nodes, flows = queries.nodes(900), queries.recent_flows(900)
    assert "files.uploaded" in nodes
    assert flows
    assert all(isinstance(flow, FlowRow) for flow in flows)


def test_a_loader_is_cached_once_only() -> None:
    with pytest.raises(ValueError, match="cached already"):
        queries.cached(queries.load_nodes)


def test_settings_are_read_once_per_run_and_again_on_the_next(
        app: AppTest, seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Settings] = []
    read = Settings.from_env

    def counted(env: object = None) -> Settings:
        reads.append(read())
        return reads[-1]

    monkeypatch.setattr(Settings, "from_env", counted)
    _run(app, PAGES[0])  # the sidebar, the focus nodes, the map, its series, the health box
    assert len(reads) == 1
    _run(app, PAGES[2])
    assert len(reads) == 2


def test_flow_map_shows_the_seeded_overview_and_graph(app: AppTest, seeded: Seeded) -> None:
    _run(app, PAGES[0])
    metrics = _metrics(app)
    assert metrics["Completed"] == str(len(COMPLETED) + 1)  # the slow flow completed too
    assert metrics["Dead-lettered"] == "1"
    assert metrics["Failed"] == "0"
    assert metrics["Worst lag"] == "3.5 s"
    graph = json.dumps(_chart_specs(app)[0])
    for node in ("uploads", "files.uploaded", "processor", "files.dlq", "notifier"):
        assert node in graph
    edges = app.dataframe[0].value
    assert len(edges) == 7
    retry = edges[edges["source"] == "files.uploaded.retry"].iloc[0]
    assert retry["retry_rate"] == 1.0
    # the seed's first message was sent 660 s ago: rates are over those 660 s (in 10-second
    # buckets), not over the whole 15-minute window
    uploaded = edges[edges["source"] == "files.uploaded"].iloc[0]
    assert 660 <= uploaded["count"] / uploaded["rate"] <= 680


def test_focus_in_the_url_narrows_the_edges(app: AppTest, seeded: Seeded) -> None:
    _run(app, PAGES[0], focus="files.dlq")
    edges = app.dataframe[0].value
    assert list(edges["target"]) == ["files.dlq"]


def test_lag_page_shows_groups_partitions_and_trend(app: AppTest, seeded: Seeded) -> None:
    _run(app, PAGES[1])
    groups, partitions = (d.value for d in app.dataframe)
    row = groups.iloc[0]
    assert (row["group"], row["status"], row["lag"]) == ("processor", "WARN", 12)
    assert "will not catch up" in row["outlook"]
    assert sorted(partitions["lag"]) == [5, 7]
    trend = _chart_specs(app)[0]["data"][0]
    assert _values(trend["y"]) == [3, 7, 12]  # total lag of the group at each poll


def test_retries_page_shows_rates_attempts_and_dead_letters_as_text(app: AppTest,
                                                                   seeded: Seeded) -> None:
    _run(app, PAGES[2])
    rates, letters = (d.value for d in app.dataframe)
    retried = rates[rates["topic"] == "files.uploaded.retry"].iloc[0]
    assert (retried["service"], retried["retries"]) == ("processor", 2)
    letter = letters.iloc[0]
    assert (letter["reason"], letter["correlation_id"], letter["key"]) == ("disk full", DEAD,
                                                                           DEAD_KEY)
    assert HOSTILE in letter["headers"]
    assert f"flow={DEAD}" in letter["open"]
    assert HOSTILE in app.code[0].value
    assert not any("<img" in m.value for m in app.markdown)
    attempts = json.dumps(_chart_specs(app)[0])
    assert "attempt" in attempts


@pytest.mark.parametrize("search", ["flow", "trace", "key", "message"])
def test_flow_explorer_finds_a_flow_by_any_of_its_names(app: AppTest, seeded: Seeded,
                                                        search: str) -> None:
    text = {"flow": DEAD, "trace": seeded.dead_trace_id, "key": DEAD_KEY,
            "message": seeded.dead_message_id}[search]
    _run(app, PAGES[3], flow=text)
    metrics = _metrics(app)
    assert metrics["Status"] == "dead-lettered"
    assert metrics["Retries"] == "1"
    assert f"Flow {DEAD}" in app.text[0].value
    assert app.get("plotly_chart"), "no waterfall"
    assert HOSTILE in app.code[0].value  # its dead letter's headers, as text


def test_flow_explorer_lists_what_failed_in_a_flow(app: AppTest, seeded: Seeded) -> None:
    _run(app, PAGES[3], flow=DEAD)
    failed = app.dataframe[0].value
    assert list(zip(failed["service"], failed["step"], failed["error"], strict=True)) == [
        ("processor", "process files.uploaded", "ValueError"),
        ("processor", "process files.uploaded.retry", "ValueError")]
    assert set(failed["trace_id"]) == {seeded.dead_trace_id}


def test_flow_explorer_collapses_a_ten_minute_wait(app: AppTest, seeded: Seeded) -> None:
    _run(app, PAGES[3], flow=SLOW)
    waterfall = _chart_specs(app)[0]
    notes = [a.get("text", "") for a in waterfall["layout"].get("annotations", [])]
    assert any("10.0 min collapsed" in n for n in notes), notes
    assert waterfall["layout"]["xaxis"]["title"]["text"].startswith("time since the flow")


def test_flow_explorer_links_to_jaeger_only_when_configured(
        app: AppTest, seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(app, PAGES[3], flow=DEAD)
    assert not app.get("link_button")
    monkeypatch.setenv("FLOWSCOPE_JAEGER_UI_URL", "http://127.0.0.1:16686")
    _run(app, PAGES[3], flow=DEAD)
    urls = [b.proto.url for b in app.get("link_button")]
    assert urls == [f"http://127.0.0.1:16686/trace/{seeded.dead_trace_id}",
                    f"http://127.0.0.1:16686/api/traces/{seeded.dead_trace_id}"]


def test_flow_explorer_says_when_nothing_matches(app: AppTest, seeded: Seeded) -> None:
    _run(app, PAGES[3], flow="no-such-flow")
    assert "No flow matches" in app.warning[0].value


def test_latency_page_shows_percentiles_per_flow_type_and_hops(app: AppTest,
                                                               seeded: Seeded) -> None:
    _run(app, PAGES[4])
    series, breakdown = _chart_specs(app)
    names = {trace["name"] for trace in series["data"]}
    assert {"files.notified p50", "files.notified p95", "files.notified p99"} <= names
    hops = app.dataframe[0].value
    assert set(hops["hop"]) == {"files.uploaded → processor", "files.notified → notifier",
                                "files.uploaded.retry → processor"}
    assert breakdown["layout"]["xaxis"]["title"]["text"] == "time (ms)"


def test_propagation_page_shows_the_share_with_trace_context(app: AppTest,
                                                             seeded: Seeded) -> None:
    _run(app, PAGES[5])
    table = app.dataframe[0].value
    uploaded = table[table["topic"] == "files.uploaded"].iloc[0]
    assert (uploaded["messages"], uploaded["with_context"]) == (3, 2)
    assert uploaded["producer"] == "uploads"


@pytest.mark.parametrize("page", PAGES)
def test_every_page_explains_an_empty_store(app: AppTest, store_env: Path, page: str) -> None:
    open_store(Settings.from_env()).close()  # created, and empty
    _run(app, page)
    shown = " ".join(e.value for e in app.info) + " ".join(e.value for e in app.success)
    assert "make demo" in shown or "No message" in shown or "No flows" in shown


def test_a_missing_store_is_a_clear_error_not_a_stack_trace(app: AppTest,
                                                            store_env: Path) -> None:
    _run(app, PAGES[0])
    assert "cannot be read" in app.error[0].value
    assert str(store_env) in app.code[0].value


def test_a_message_id_beyond_any_offset_is_no_match_not_a_crash(app: AppTest,
                                                                seeded: Seeded) -> None:
    _run(app, PAGES[3], flow="files.dlq.0.99999999999999999999")
    assert "No flow matches" in app.warning[0].value
