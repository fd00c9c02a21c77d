"""Every reader on a store of extremes (tests/extreme_store.py): each dashboard page and each
`flowscope inspect` command renders it within its time, says what it left out, and shows
hostile text as text only; the store's bounded reads are the head of its full ones."""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from base.settings import Settings
from dashboard import charts, queries, transforms, waterfall
from flowscope import inspect
from store.factory import open_store
from store.records import Hop
from tests.extreme_store import (
    BOLD,
    EXTREME_FLOW,
    LONG,
    LONG_FLOW,
    SCRIPT,
    TERMINAL,
    Extreme,
    build_extreme_store,
)
from tests.store_writer import WritableStore

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
PAGES = ["app_pages/flow_map.py", "app_pages/lag.py", "app_pages/retries.py",
         "app_pages/flows.py", "app_pages/latency.py", "app_pages/propagation.py"]
# The same store took 17 s and more per page before the bounds; these leave room for a
# slow, shared machine while catching any return of that.
PAGE_TARGET_S = 10.0
INSPECT_TARGET_S = 3.0
SEARCHES = [LONG_FLOW, EXTREME_FLOW, SCRIPT, BOLD, LONG, TERMINAL, "x.0." + "9" * 5000,
            "\x00", "%s' OR 1=1 --", "a" * 32]
MARKUP = ("<script", "**bold**", "javascript:", "\x1b")
SHOWN_IN_CHARTS = {"text", "hovertext", "name", "legendgroup", "x", "y"}


@pytest.fixture(scope="module")
def extreme(tmp_path_factory: pytest.TempPathFactory) -> Extreme:
    home = tmp_path_factory.mktemp("extreme")
    settings = Settings.from_env({"FLOWSCOPE_HOME": str(home),
                                  "FLOWSCOPE_STORE": str(home / "store.db")})
    return build_extreme_store(home / "store.db", settings)


@pytest.fixture
def store_env(extreme: Extreme, monkeypatch: pytest.MonkeyPatch) -> Extreme:
    monkeypatch.setenv("FLOWSCOPE_HOME", str(extreme.path.parent))
    monkeypatch.setenv("FLOWSCOPE_STORE", str(extreme.path))
    monkeypatch.delenv("FLOWSCOPE_JAEGER_UI_URL", raising=False)
    return extreme


@pytest.fixture
def store(store_env: Extreme) -> Iterator[WritableStore]:
    opened = open_store(Settings.from_env(), readonly=True)
    yield opened
    opened.close()


def _run(page: str, **params: str) -> tuple[AppTest, float]:
    app = AppTest.from_file(APP, default_timeout=120)
    app.switch_page(page)
    for key, value in params.items():
        app.query_params[key] = value
    started = time.perf_counter()
    app.run()
    elapsed = time.perf_counter() - started
    assert not app.exception, [e.value for e in app.exception]
    failed = [e.value for e in app.error if e.value.startswith(("Reading", "The store"))]
    assert not failed, [c.value for c in app.code]  # a query that failed, caught by the page
    return app, elapsed


def _markdown(app: AppTest) -> list[str]:
    """The text of every element Streamlit renders as Markdown."""
    texts = [e.value for kind in (app.markdown, app.caption, app.title, app.header,
                                  app.subheader, app.info, app.warning, app.error, app.success)
             for e in kind]
    return texts + [str(part) for m in app.metric for part in (m.label, m.value)]


def _strings(value: object, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, text) of every string in a chart's spec."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)


def _assert_text_only(app: AppTest) -> None:
    for text in _markdown(app):
        prose = re.sub(r"`[^`\n]*`", "", text)  # inline code shows its text as typed
        assert not any(mark in prose for mark in MARKUP), text[:200]
        assert len(text) < 2 * transforms.TEXT_LIMIT + 200, text[:200]
    for chart in app.get("plotly_chart"):
        for key, text in _strings(json.loads(chart.proto.spec)):
            assert not re.search(r"<(?!br>|/?extra>)[a-z/]", text, re.IGNORECASE), text[:200]
            if key in SHOWN_IN_CHARTS:  # escaping makes a cut name up to 6 times longer
                assert len(text) < 16 * transforms.TEXT_LIMIT, text[:200]
    for frame in (d.value for d in app.dataframe):
        for column in frame.columns:
            if column != "open" and (frame[column].dtype == object
                                     or pd.api.types.is_string_dtype(frame[column].dtype)):
                longest = frame[column].map(lambda v: len(v) if isinstance(v, str) else 0)
                assert longest.max() <= transforms.TEXT_LIMIT, column
    for box in app.selectbox:
        assert all(len(str(o)) <= transforms.TEXT_LIMIT for o in box.options)


def _values(data: object) -> list[object]:
    """A Plotly array, plain or binary-encoded ({'dtype', 'bdata'})."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)  # type: ignore[call-overload]


def _captions(app: AppTest) -> str:
    return "\n".join(c.value for c in app.caption)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_the_extremes_in_time_as_text(store_env: Extreme, page: str) -> None:
    app, elapsed = _run(page)
    assert elapsed < PAGE_TARGET_S
    _assert_text_only(app)


@pytest.mark.parametrize("search", SEARCHES)
def test_a_search_for_any_text_renders_in_time_as_text(store_env: Extreme, search: str) -> None:
    app, elapsed = _run(PAGES[3], flow=search)
    assert elapsed < PAGE_TARGET_S
    _assert_text_only(app)
    if search in (LONG_FLOW, EXTREME_FLOW, SCRIPT, BOLD, LONG):  # flows of these ids
        assert app.metric, "the flow was not found"


def test_flow_map_keeps_the_busiest_edges_and_says_how_many_it_left_out(
        store_env: Extreme, store: WritableStore) -> None:
    app, _ = _run(PAGES[0])
    left_out = store_env.edges - queries.MAP_EDGES
    assert (f"{queries.MAP_EDGES} edges of {store_env.edges:,} shown (the busiest); "
            f"{left_out:,} left out") in _captions(app)
    shown = app.dataframe[0].value
    assert len(shown) == queries.MAP_EDGES
    every = sorted((e.count for e in store.topology(store_env.now_ns - 900 * 10**9).edges),
                   reverse=True)
    assert sorted(shown["count"], reverse=True) == every[:queries.MAP_EDGES]


def test_a_focused_quiet_node_keeps_its_edges_on_the_map(store_env: Extreme) -> None:
    quiet = "extreme.topic-00000"  # its edges carry 1 and 2,920 messages: not the busiest
    app, _ = _run(PAGES[0], focus=quiet)
    focused = app.dataframe[0].value
    assert set(focused["source"]) | set(focused["target"]) >= {quiet, "svc-0", "worker-1"}
    assert "the focused node's first" in _captions(app)
    assert quiet in json.dumps(json.loads(app.get("plotly_chart")[0].proto.spec))


def test_flow_explorer_shows_the_first_hops_of_a_long_flow_and_what_it_left_out(
        store_env: Extreme) -> None:
    app, _ = _run(PAGES[3], flow=LONG_FLOW)
    left_out = store_env.long_flow_rows - queries.FLOW_HOPS
    captions = _captions(app)
    assert (f"The first {queries.FLOW_HOPS} of this flow's {store_env.long_flow_rows:,} hops "
            f"are shown, in time order; {left_out:,} left out.") in captions
    assert re.search(r"[\d,]+ idle stretches collapsed .* the longest are labelled", captions)
    assert len(app.dataframe[-1].value) == queries.FLOW_HOPS
    spec = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert 0 < len(spec["layout"]["annotations"]) <= charts.BREAK_LABELS
    lines = next(t for t in spec["data"] if t.get("yaxis") == "y2")
    stretches = int(re.search(r"([\d,]+) idle stretches", captions)[1].replace(",", ""))
    assert len(_values(lines["x"])) == 3 * stretches > 3 * charts.BREAK_LABELS


def test_flow_explorer_shows_times_past_pandas_range_at_its_ends(store_env: Extreme) -> None:
    app, _ = _run(PAGES[3], flow=EXTREME_FLOW)
    assert "started 1677-09-21" in app.text[0].value
    failed = app.dataframe[0].value
    years = {t.year for t in failed["at"] if pd.notna(t)}
    assert years == {1677, 1970, 2262}
    assert any(SCRIPT[:20] in c.value for c in app.code)  # its dead letter's headers, as text


def test_dead_letters_stamped_past_2262_are_listed_at_its_end(store_env: Extreme) -> None:
    app, _ = _run(PAGES[2])
    letters = app.dataframe[-1].value
    assert 2262 in {t.year for t in letters["time"]}
    assert SCRIPT in app.code[0].value


COMMANDS = {
    "topology": lambda store, as_json: inspect.inspect_topology(store, 900, as_json),
    "flows": lambda store, as_json: inspect.inspect_flows(store, 900, as_json, 100),
    "flow (long)": lambda store, as_json: inspect.inspect_flow(store, LONG_FLOW, as_json),
    "flow (extreme)": lambda store, as_json: inspect.inspect_flow(store, EXTREME_FLOW, as_json),
    "flow (hostile id)": lambda store, as_json: inspect.inspect_flow(store, TERMINAL, as_json),
    "lag": lambda store, as_json: inspect.inspect_lag(store, None, as_json),
    "propagation": lambda store, as_json: inspect.inspect_propagation(store, 900, as_json),
    "counters": inspect.inspect_counters,
}


def _strict(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_inspect_command_renders_the_extremes(store: WritableStore, command: str,
                                                    as_json: bool) -> None:
    started = time.perf_counter()
    shown = COMMANDS[command](store, as_json)
    assert time.perf_counter() - started < INSPECT_TARGET_S
    assert shown is not None
    if as_json:
        json.loads(shown, parse_constant=_strict)  # no Infinity or NaN
        return
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", shown)  # only its own line breaks
    assert max(len(line) for line in shown.splitlines()) < 12 * inspect.CELL_LIMIT


def test_inspect_says_how_many_edges_and_hops_it_left_out(store: WritableStore,
                                                          extreme: Extreme) -> None:
    rows, left_out = extreme.long_flow_rows, extreme.long_flow_rows - inspect.HOPS_SHOWN
    topology = inspect.inspect_topology(store, 900, False)
    assert re.search(rf"{inspect.EDGES_SHOWN} edges of [\d,]+ shown \(the busiest\); "
                     r"[\d,]+ left out", topology)
    as_json = json.loads(inspect.inspect_topology(store, 900, True))
    assert len(as_json["edges"]) == inspect.EDGES_SHOWN
    assert as_json["edges_left_out"] == extreme.edges - inspect.EDGES_SHOWN
    flow = inspect.inspect_flow(store, LONG_FLOW, False) or ""
    assert (f"({inspect.HOPS_SHOWN:,} hops of {rows:,} shown, the first in time order; "
            f"{left_out:,} left out)") in flow
    flow_json = json.loads(inspect.inspect_flow(store, LONG_FLOW, True) or "")
    assert len(flow_json["hop_list"]) == inspect.HOPS_SHOWN
    assert flow_json["hops_left_out"] == left_out


@pytest.mark.parametrize("limit", [1, 49, 500, 10_099, 10_100, 20_000])
def test_a_flows_first_hops_are_the_head_of_all_its_hops(store: WritableStore,
                                                         limit: int) -> None:
    now = time.time_ns()
    full = store.flow(LONG_FLOW, now)
    head = store.flow_head(LONG_FLOW, now, limit)
    assert full is not None
    assert head is not None
    assert head[1] == full[1][:limit]
    assert head[2] == max(len(full[1]) - limit, 0)


def test_busiest_edges_rank_by_messages_or_by_retries_and_count_every_edge(
        store: WritableStore, extreme: Extreme) -> None:
    since = extreme.now_ns - 900 * 10**9
    every = store.topology(since).edges
    for by, weight in (("count", lambda e: (e.count,)),
                       ("retries", lambda e: (e.retries, e.count))):
        topology, total = store.busiest_topology(since, 50, by)
        assert total == len(every) == extreme.edges
        expected = sorted(every, key=weight, reverse=True)[:50]
        assert sorted(map(weight, topology.edges)) == sorted(map(weight, expected))
        assert set(topology.nodes) == {n for e in topology.edges for n in (e.source, e.target)}


def test_find_flows_never_raises_on_any_text(store: WritableStore) -> None:
    for text in [*SEARCHES, "\ud800", "topic.0.1", "topic.99999999999.1", " " * 10_000]:
        assert isinstance(store.find_flows(text), list)


# -- the pure pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "unit", "year"), [
    (-(2**63), "ns", 1677), (2**63 - 1, "ns", 2262), (0, "ns", 1970),
    (2**63 - 1, "ms", 2262), (-(2**63), "ms", 1677), (9.2e18, "s", 2262),
    (float("-inf"), "s", 1677), (10**30, "ns", 2262)])
def test_times_past_pandas_range_are_shown_at_its_ends(value: float, unit: str,
                                                       year: int) -> None:
    assert transforms.utc_time(value, unit).year == year
    assert transforms.utc_times(pd.Series([value, None]), unit).iloc[0].year == year


def test_text_is_cut_with_a_mark_and_escaped_after_cutting() -> None:
    assert transforms.cut_text("x" * 300) == "x" * 199 + "…"
    assert transforms.cut_text(None) == ""
    assert charts.safe("a" * 7 + "<b>", limit=9) == "a" * 7 + "&lt;…"
    frame = transforms.cut_columns(pd.DataFrame({"name": [LONG, "ok"], "open": [LONG, "x"],
                                                 "n": [1, 2]}), keep=["open"])
    assert list(frame["name"].str.len()) == [transforms.TEXT_LIMIT, 2]
    assert frame["open"][0] == LONG


def _hop(start: int, end: int) -> Hop:
    return Hop("t", 0, 0, "a", "b", "g", start, start, end, end, None, False, "t" * 32)


def test_waterfall_of_times_at_int64s_ends_has_true_lengths() -> None:
    segments, breaks = waterfall.build_waterfall([_hop(-(2**63), 2**63 - 1), _hop(0, 0)])
    wait = segments[segments["kind"] == "wait"].iloc[0]
    assert wait["true_ms"] == pytest.approx((2**64 - 1) / 1e6)
    assert [length > 0 for _, length in breaks] == [True, True]


def test_waterfall_of_ten_thousand_gaps_is_quick_and_collapses_each() -> None:
    hops = [_hop(i * 3_000_000_000, i * 3_000_000_000 + 50_000_000) for i in range(10_000)]
    started = time.perf_counter()
    segments, breaks = waterfall.build_waterfall(hops)
    figure = charts.waterfall(segments, breaks)
    assert time.perf_counter() - started < 10.0  # it was over a minute
    assert len(breaks) == 9_999
    ends = segments["start_ms"] + segments["width_ms"]
    assert ends.max() == pytest.approx(10_000 * 50 + 9_999 * 300, rel=1e-6)
    labels = sorted(a.x for a in figure.layout.annotations)
    assert len(labels) == charts.BREAK_LABELS  # stretches evenly spread: as many as fit
    gap = ends.max() / charts.BREAK_LABELS
    assert min(b - a for a, b in itertools.pairwise(labels)) >= gap
