"""The dashboard in a real browser with the demo's NATS leg on: the flow map draws the stream,
the JetStream consumer and the core NATS subject in their own shapes with a legend, a consumer
node focuses every page, the retries page lists the messages JetStream gave up, and the flow
explorer tells each NATS hop's stream, subject and consumer."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from demo_services import subjects
from flowscope.infra.jaeger import JaegerStatus
from flowscope.infra.nats import NatsStatus
from tests.e2e.browser import WAIT_MS, Dashboard, chromium_page, no_exception, open_page
from tests.integration.collector_process import Collector
from tests.integration.demo_stack import DemoStack, free_port
from tests.integration.test_demo_nats import (
    KNOBS,
    RUNNING,
    choose_orders,
    delete_streams,
    post_order,
)

PAGES = {"": "Flow map", "lag": "Consumer lag", "retries": "Retries & dead letters",
         "latency": "Latency", "propagation": "Trace-context propagation"}


@dataclass
class Live:
    dashboard: Dashboard
    stream: str
    status: str
    followed: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str,
         jaeger_endpoints: JaegerStatus, nats_server: NatsStatus) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("e2e-nats")
    prefix = f"j{uuid.uuid4().hex[:8]}."
    collector = Collector.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http,
                                 jaeger_endpoints.query, f"{prefix}otlp_spans")
    collector.env.update(FLOWSCOPE_NATS_URL=nats_server.url,
                         FLOWSCOPE_NATS_MONITORING_URL=nats_server.monitoring_url,
                         FLOWSCOPE_LAG_INTERVAL="1")
    collector.start("--no-rabbitmq")
    stack = DemoStack.create(home, kafka_bootstrap, collector.otlp_url, prefix,
                             nats_url=nats_server.url, **KNOBS)
    stack.start(only=RUNNING)
    dashboard = Dashboard(dict(collector.env, FLOWSCOPE_DASHBOARD_REFRESH="2"), free_port(),
                          home / "dashboard.log")
    try:
        chosen = choose_orders(uuid.uuid4().hex[:6])
        for correlation_id in chosen:
            post_order(stack.config, correlation_id)
        followed = next(c for c, attempt in chosen.items() if attempt is not None)
        spent = next(c for c, attempt in chosen.items() if attempt is None)
        collector.wait_for(lambda f: any(h["consumer"] == "portal" for h in f["hop_list"]),
                           "flow", followed, timeout_s=90)
        collector.wait_for(lambda f: f.get("status") == "dead-lettered", "flow", spent,
                           timeout_s=90)
        stream = subjects.stream_name(stack.config, subjects.SHIPMENTS)
        collector.wait_for(lambda lag: any(
            r["system"] == "nats" and r["topic"] == stream for r in lag["partitions"]), "lag")
        dashboard.start()
        yield Live(dashboard, stream, subjects.subject(stack.config, subjects.STATUS_TEMPLATE),
                   followed)
    finally:
        dashboard.stop()
        stack.stop()
        collector.stop()
        asyncio.run(delete_streams(stack.config))


@pytest.fixture(scope="module")
def page(live: Live) -> Iterator[Page]:
    with chromium_page() as opened:
        yield opened


def _open(page: Page, live: Live, path: str) -> None:
    open_page(page, live.dashboard, path)


def test_the_map_draws_streams_consumers_and_subjects_with_a_legend(page: Page,
                                                                    live: Live) -> None:
    _open(page, live, "")
    graph = page.locator("[data-testid=stPlotlyChart]").first
    expect(graph.locator(".main-svg").first).to_be_attached(timeout=WAIT_MS)
    for legend in ("services", "Kafka topics", "NATS subjects and streams",
                   "JetStream consumers"):
        expect(graph.locator(".legendtext", has_text=re.compile(rf"^{legend}$")).first
               ).to_be_attached(timeout=WAIT_MS)
    for node in (live.stream, f"{live.stream}/tracking", live.status, "shipping", "tracking",
                 "portal"):
        expect(graph.locator("g.textpoint text", has_text=re.compile(rf"^{re.escape(node)}$"))
               .first).to_be_attached(timeout=WAIT_MS)
    no_exception(page)


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_works_focused_on_a_jetstream_consumer(page: Page, live: Live,
                                                          path: str) -> None:
    consumer = f"nats:consumer:{live.stream}/tracking"
    _open(page, live, f"{path}?focus={urllib.parse.quote(consumer)}")
    expect(page.get_by_role("heading", name=PAGES[path], exact=True)).to_be_visible(
        timeout=WAIT_MS)
    expect(page.get_by_role("combobox", name="Focus on")).to_have_value(consumer,
                                                                       timeout=WAIT_MS)
    if path == "lag":
        table = page.get_by_test_id("stDataFrame").first
        expect(table).to_be_visible(timeout=WAIT_MS)
        expect(table).to_contain_text("nats", timeout=WAIT_MS)
    no_exception(page)


def test_the_retries_page_lists_what_jetstream_gave_up(page: Page, live: Live) -> None:
    _open(page, live, "retries")
    heading = page.get_by_role("heading", name="Dead letters", exact=True)
    expect(heading).to_be_visible(timeout=WAIT_MS)
    letters = page.get_by_test_id("stDataFrame").last
    expect(letters).to_be_visible(timeout=WAIT_MS)
    expect(letters).to_contain_text(f"MSG_TERMINATED.{live.stream}.tracking", timeout=WAIT_MS)
    no_exception(page)


def test_the_flow_explorer_tells_each_nats_hop_s_stream_subject_and_consumer(
        page: Page, live: Live) -> None:
    _open(page, live, f"flows?flow={live.followed}")
    expect(page.get_by_text(f"Flow {live.followed}")).to_be_visible(timeout=WAIT_MS)
    hops = page.get_by_test_id("stDataFrame").last
    expect(hops).to_be_visible(timeout=WAIT_MS)
    for text in ("nats", live.stream, "tracking", "portal", "kafka"):
        expect(hops).to_contain_text(text, timeout=WAIT_MS)
    no_exception(page)
