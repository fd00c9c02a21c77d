"""The dashboard in a real browser with the demo's RabbitMQ leg on: the flow map draws the
exchange and queue nodes in their own shapes with a legend, a queue node focuses every page,
and the flow explorer tells each hop's system, routing key and queue."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from flowscope.infra.jaeger import JaegerStatus
from flowscope.infra.rabbitmq import RabbitmqStatus
from tests.e2e.browser import WAIT_MS, Dashboard, chromium_page, no_exception, open_page
from tests.integration.collector_process import Collector
from tests.integration.demo_stack import DemoStack, free_port
from tests.integration.test_demo_rabbitmq import delete_topology, post_upload

RUNNING = ("webhook", "uploads", "processor", "notifier", "thumbnailer", "indexer", "auditor")
KNOBS = {"thumbnail_failure": "0.3", "transient_failure": "0", "permanent_failure": "0",
         "callback_failure": "0", "work_ms": "5", "backoff_base_ms": "50",
         "backoff_max_ms": "200"}
PAGES = {"": "Flow map", "lag": "Consumer lag", "retries": "Retries & dead letters",
         "latency": "Latency", "propagation": "Trace-context propagation"}


@dataclass
class Live:
    dashboard: Dashboard
    prefix: str
    flow: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str,
         jaeger_endpoints: JaegerStatus, rabbitmq_node: RabbitmqStatus) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("e2e-rabbitmq")
    prefix = f"q{uuid.uuid4().hex[:8]}."
    collector = Collector.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http,
                                 jaeger_endpoints.query, f"{prefix}otlp_spans")
    collector.env.update(FLOWSCOPE_RABBITMQ_URL=rabbitmq_node.amqp_url,
                         FLOWSCOPE_RABBITMQ_MANAGEMENT_URL=rabbitmq_node.management_url,
                         FLOWSCOPE_LAG_INTERVAL="1")
    collector.start()
    stack = DemoStack.create(home, kafka_bootstrap, collector.otlp_url, prefix,
                             rabbitmq_url=rabbitmq_node.amqp_url, **KNOBS)
    stack.start(only=RUNNING)
    dashboard = Dashboard(dict(collector.env, FLOWSCOPE_DASHBOARD_REFRESH="2"), free_port(),
                          home / "dashboard.log")
    try:
        flows = [f"e2e-q-{uuid.uuid4().hex[:6]}-{i}" for i in range(6)]
        for flow in flows:
            post_upload(stack.config, flow)
        collector.wait_for(lambda f: f.get("status") == "completed", "flow", flows[0],
                           timeout_s=90)
        collector.wait_for(lambda lag: any(
            r["system"] == "rabbitmq" and r["group"] == f"{prefix}thumbnails.jobs"
            for r in lag["partitions"]), "lag")
        dashboard.start()
        yield Live(dashboard, prefix, flows[0])
    finally:
        dashboard.stop()
        stack.stop()
        collector.stop()
        asyncio.run(delete_topology(stack.config))


@pytest.fixture(scope="module")
def page(live: Live) -> Iterator[Page]:
    with chromium_page() as opened:
        yield opened


def _open(page: Page, live: Live, path: str) -> None:
    open_page(page, live.dashboard, path)


def test_the_map_draws_exchanges_and_queues_with_a_legend(page: Page, live: Live) -> None:
    _open(page, live, "")
    graph = page.locator("[data-testid=stPlotlyChart]").first
    expect(graph.locator(".main-svg").first).to_be_attached(timeout=WAIT_MS)
    for legend in ("services", "Kafka topics", "RabbitMQ exchanges", "RabbitMQ queues"):
        expect(graph.locator(".legendtext", has_text=re.compile(rf"^{legend}$")).first
               ).to_be_attached(timeout=WAIT_MS)
    for node in ("thumbnails", "thumbnails.jobs", "files.events.search", "files.events.audit",
                 "thumbnailer", "indexer", "auditor"):
        expect(graph.locator("g.textpoint text", has_text=re.compile(rf"^{re.escape(node)}$"))
               .first).to_be_attached(timeout=WAIT_MS)
    no_exception(page)


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_works_focused_on_a_queue(page: Page, live: Live, path: str) -> None:
    queue = f"rabbitmq:queue:{live.prefix}thumbnails.jobs"
    separator = "&" if "?" in path else "?"
    _open(page, live, f"{path}{separator}focus={urllib.parse.quote(queue)}")
    expect(page.get_by_role("heading", name=PAGES[path], exact=True)).to_be_visible(
        timeout=WAIT_MS)
    expect(page.get_by_role("combobox", name="Focus on")).to_have_value(queue,
                                                                       timeout=WAIT_MS)
    if path == "lag":
        table = page.get_by_test_id("stDataFrame").first
        expect(table).to_be_visible(timeout=WAIT_MS)
        expect(table).to_contain_text("rabbitmq", timeout=WAIT_MS)
    no_exception(page)


def test_the_flow_explorer_tells_each_hop_s_system_routing_key_and_queue(
        page: Page, live: Live) -> None:
    _open(page, live, f"flows?flow={live.flow}")
    expect(page.get_by_text(f"Flow {live.flow}")).to_be_visible(timeout=WAIT_MS)
    hops = page.get_by_test_id("stDataFrame").last
    expect(hops).to_be_visible(timeout=WAIT_MS)
    for text in ("rabbitmq", "render", f"{live.prefix}thumbnails.jobs", "kafka"):
        expect(hops).to_contain_text(text, timeout=WAIT_MS)
    no_exception(page)
