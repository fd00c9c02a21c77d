"""The dashboard in a real browser, on a live store: the collector fed by the demo services.

Screenshots of every page are saved under test-artifacts/screenshots (FLOWSCOPE_TEST_ARTIFACTS).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from playwright.sync_api import Page, expect

from flowscope.infra.jaeger import JaegerStatus
from tests.e2e.browser import (
    ARTIFACTS,
    WAIT_MS,
    Dashboard,
    chromium_page,
    no_exception,
    open_page,
)
from tests.integration.collector_process import Collector
from tests.integration.demo_stack import DemoStack, free_port

HOSTILE = "<img src=x onerror=alert(1)>"
PAGES = {"": "Flow map", "lag": "Consumer lag", "retries": "Retries & dead letters",
         "latency": "Latency", "propagation": "Trace-context propagation"}


@dataclass
class Live:
    """The running pieces and what the test knows was sent."""

    dashboard: Dashboard
    correlation_id: str
    hostile_id: str
    jaeger_ui: str
    shots: Path


async def _send_hostile_dead_letter(bootstrap: str, topic: str, correlation_id: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", key=HOSTILE.encode(), headers=[
            ("correlation-id", correlation_id.encode()), ("dlq-reason", HOSTILE.encode()),
            ("x-hostile", HOSTILE.encode())])
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str,
         jaeger_endpoints: JaegerStatus) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("e2e")
    prefix = f"e2e{uuid.uuid4().hex[:8]}."
    collector = Collector.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http,
                                 jaeger_endpoints.query, f"{prefix}otlp_spans")
    collector.env.update(FLOWSCOPE_TAP="on", FLOWSCOPE_TAP_TOPICS=f"^{re.escape(prefix)}.*",
                         FLOWSCOPE_LAG_INTERVAL="1")
    collector.start()
    stack = DemoStack.create(home, kafka_bootstrap, collector.otlp_url, prefix)
    stack.start()
    dashboard = Dashboard(dict(collector.env, FLOWSCOPE_JAEGER_UI_URL=jaeger_endpoints.query,
                               FLOWSCOPE_DASHBOARD_REFRESH="2"), free_port(),
                          home / "dashboard.log")
    try:
        report = stack.loadgen("--rate", "10", "--duration", "6", "--transient-failure", "0.3",
                               "--permanent-failure", "0.15")
        correlation_id = str(report["uploads"][0]["correlation_id"])  # type: ignore[index]
        hostile_id = f"hostile-{uuid.uuid4().hex[:6]}"
        asyncio.run(_send_hostile_dead_letter(kafka_bootstrap, f"{prefix}files.dlq",
                                              hostile_id))
        collector.wait_for(lambda flow: flow["hops"] >= 2, "flow", correlation_id)
        collector.wait_for(lambda flow: flow["status"] == "dead-lettered", "flow",
                           hostile_id)
        collector.wait_for(lambda lag: any(r["topic"].startswith(prefix)
                                           for r in lag["partitions"]), "lag")
        dashboard.start()
        shots = ARTIFACTS / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        yield Live(dashboard, correlation_id, hostile_id, jaeger_endpoints.query, shots)
    finally:
        dashboard.stop()
        stack.stop()
        collector.stop()


@pytest.fixture(scope="module")
def browser_page(live: Live) -> Iterator[tuple[Page, list[str]]]:
    dialogs: list[str] = []
    with chromium_page() as page:
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        yield page, dialogs


def _open(page: Page, live: Live, path: str) -> None:
    open_page(page, live.dashboard, path)


def _charts_rendered(page: Page, at_least: int) -> None:
    charts = page.locator("[data-testid=stPlotlyChart] .main-svg")
    expect(charts.nth(at_least - 1)).to_be_attached(timeout=WAIT_MS)


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_renders_populated_without_exception(browser_page: tuple[Page, list[str]],
                                                        live: Live, path: str) -> None:
    page, dialogs = browser_page
    _open(page, live, path)
    expect(page.get_by_role("heading", name=PAGES[path], exact=True)).to_be_visible(
        timeout=WAIT_MS)
    _charts_rendered(page, 1)
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=WAIT_MS)
    no_exception(page)
    page.screenshot(path=str(live.shots / f"{path or 'map'}.png"), full_page=True)
    assert dialogs == []


def test_flow_map_draws_services_and_topics(browser_page: tuple[Page, list[str]],
                                            live: Live) -> None:
    page, _ = browser_page
    _open(page, live, "")
    _charts_rendered(page, 1)
    graph = page.locator("[data-testid=stPlotlyChart]").first
    for node in ("uploads", "processor", "notifier"):
        expect(graph.get_by_text(node, exact=True).first).to_be_attached(timeout=WAIT_MS)
    expect(page.get_by_test_id("stMetricValue").first).to_be_visible()


def test_search_by_correlation_id_shows_its_waterfall_and_trace_link(
        browser_page: tuple[Page, list[str]], live: Live) -> None:
    page, _ = browser_page
    _open(page, live, f"flows?flow={live.correlation_id}")
    expect(page.get_by_text(f"Flow {live.correlation_id}")).to_be_visible(timeout=WAIT_MS)
    _charts_rendered(page, 1)
    waterfall = page.locator("[data-testid=stPlotlyChart]").first
    expect(waterfall.get_by_text("waiting in topic")).to_be_attached(timeout=WAIT_MS)
    link = page.get_by_role("link", name=re.compile("in Jaeger"))
    expect(link.first).to_have_attribute("href", re.compile(
        re.escape(live.jaeger_ui) + r"/trace/[0-9a-f]{32}$"))
    no_exception(page)
    page.screenshot(path=str(live.shots / "flows.png"), full_page=True)


def test_hostile_header_values_are_literal_text(browser_page: tuple[Page, list[str]],
                                                live: Live) -> None:
    page, dialogs = browser_page
    _open(page, live, f"flows?flow={live.hostile_id}")
    expect(page.get_by_text(f"Flow {live.hostile_id}")).to_be_visible(timeout=WAIT_MS)
    code = page.get_by_test_id("stCode").first
    expect(code).to_contain_text(f'"reason": "{HOSTILE}"', timeout=WAIT_MS)
    expect(code).to_contain_text(f"x-hostile={HOSTILE}")
    assert page.locator("img[src='x']").count() == 0
    _open(page, live, "retries")
    expect(page.get_by_test_id("stCode").first).to_be_visible(timeout=WAIT_MS)
    assert page.locator("img[src='x']").count() == 0
    assert dialogs == []
    page.screenshot(path=str(live.shots / "dead-letter.png"), full_page=True)


def test_clicking_a_node_focuses_every_page_on_it(browser_page: tuple[Page, list[str]],
                                                  live: Live) -> None:
    page, _ = browser_page
    _open(page, live, "")
    _charts_rendered(page, 1)
    _click_node(page, "processor")
    _open(page, live, "lag?focus=processor")
    expect(page.get_by_role("combobox", name="Focus on")).to_have_value("processor",
                                                                       timeout=WAIT_MS)
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=WAIT_MS)
    no_exception(page)


def _click_node(page: Page, name: str, tries: int = 4) -> None:
    """Click a node's marker on the flow map until the focus is in the URL. The live map is
    drawn anew at each refresh (its rates change), and a click that lands while it is being
    redrawn goes nowhere, for a person too: the marker is found again and clicked again."""
    graph = page.locator("[data-testid=stPlotlyChart]").first
    for _ in range(tries):
        label = graph.locator("g.textpoint text", has_text=re.compile(rf"^{re.escape(name)}$"))
        expect(label.first).to_be_attached(timeout=WAIT_MS)
        box = label.first.bounding_box()
        markers = [m.bounding_box() for m in graph.locator(".scatterlayer .points path").all()]
        below = [m for m in markers if box and m and m["y"] > box["y"]
                 and abs(m["x"] + m["width"] / 2 - (box["x"] + box["width"] / 2)) < 5]
        if below:  # else the chart was redrawn while it was measured
            marker = min(below, key=lambda m: m["y"])
            page.mouse.click(marker["x"] + marker["width"] / 2,
                             marker["y"] + marker["height"] / 2)
            try:
                expect(page).to_have_url(re.compile(rf"[?&]focus={re.escape(name)}"),
                                         timeout=8_000)
                return
            except AssertionError:
                continue
    raise AssertionError(f"{tries} clicks on the {name} node did not focus on it: {page.url}")
