"""The dashboard in a real browser with the demo's Artemis leg on: the flow map draws the
addresses and queues in their own shapes with a legend, a queue node focuses every page (the
lag page shows its backlog), the retries page lists the invoice requests the broker moved to
its dead-letter queue, and the flow explorer tells each Artemis hop's address and queue."""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from demo_services import addresses
from flowscope.infra.jaeger import JaegerStatus
from tests.e2e.browser import WAIT_MS, Dashboard, chromium_page, no_exception, open_page
from tests.integration.collector_process import Collector
from tests.integration.conftest import ArtemisBroker
from tests.integration.demo_stack import DemoStack, free_port
from tests.integration.test_demo_artemis import KNOBS, RUNNING, choose_orders, post_order

PAGES = {"": "Flow map", "lag": "Consumer lag", "retries": "Retries & dead letters",
         "latency": "Latency", "propagation": "Trace-context propagation"}


@dataclass
class Live:
    dashboard: Dashboard
    invoices: str
    events: str
    ledger: str
    dead: str
    followed: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str,
         jaeger_endpoints: JaegerStatus, artemis_broker: ArtemisBroker) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("e2e-artemis")
    prefix = f"v{uuid.uuid4().hex[:8]}."
    collector = Collector.create(home, kafka_bootstrap, jaeger_endpoints.otlp_http,
                                 jaeger_endpoints.query, f"{prefix}otlp_spans")
    collector.env.update(FLOWSCOPE_ARTEMIS_URL=artemis_broker.amqp_url,
                         FLOWSCOPE_ARTEMIS_MANAGEMENT_URL=artemis_broker.management_url,
                         FLOWSCOPE_LAG_INTERVAL="1")
    collector.start("--no-rabbitmq", "--no-nats")
    stack = DemoStack.create(home, kafka_bootstrap, collector.otlp_url, prefix,
                             artemis_url=artemis_broker.amqp_url, **KNOBS)
    stack.start(only=RUNNING)
    dashboard = Dashboard(dict(collector.env, FLOWSCOPE_DASHBOARD_REFRESH="2"), free_port(),
                          home / "dashboard.log")
    config = stack.config
    try:
        chosen = choose_orders(uuid.uuid4().hex[:6])
        for correlation_id in chosen:
            post_order(config, correlation_id)
        followed = next(c for c, attempt in chosen.items() if attempt is not None)
        spent = next(c for c, attempt in chosen.items() if attempt is None)
        collector.wait_for(lambda f: any(h["consumer"] == addresses.LEDGER
                                         for h in f["hop_list"]),
                           "flow", followed, timeout_s=90)
        collector.wait_for(lambda f: f.get("status") == "dead-lettered", "flow", spent,
                           timeout_s=90)
        invoices = addresses.address(config, addresses.INVOICES)
        collector.wait_for(lambda lag: any(
            r["system"] == "activemq" and r["group"] == invoices for r in lag["partitions"]),
            "lag")
        dashboard.start()
        yield Live(dashboard, invoices, addresses.address(config, addresses.BILLING_EVENTS),
                   addresses.subscription_queue(config, addresses.BILLING_EVENTS,
                                                addresses.LEDGER),
                   addresses.dead_letter_queue(config, addresses.INVOICES), followed)
    finally:
        dashboard.stop()
        stack.stop()
        collector.stop()


@pytest.fixture(scope="module")
def page(live: Live) -> Iterator[Page]:
    with chromium_page() as opened:
        yield opened


def _open(page: Page, live: Live, path: str) -> None:
    open_page(page, live.dashboard, path)


def test_the_map_draws_addresses_and_queues_with_a_legend(page: Page, live: Live) -> None:
    _open(page, live, "")
    graph = page.locator("[data-testid=stPlotlyChart]").first
    expect(graph.locator(".main-svg").first).to_be_attached(timeout=WAIT_MS)
    for legend in ("services", "Kafka topics", "Artemis addresses", "Artemis queues"):
        expect(graph.locator(".legendtext", has_text=re.compile(rf"^{legend}$")).first
               ).to_be_attached(timeout=WAIT_MS)
    for node in ("invoices", "billing.events", "billing.events.ledger", "orders", "billing",
                 "ledger", "mailer"):
        # Node labels drop the names' common prefix (the run's).
        expect(graph.locator("g.textpoint text", has_text=re.compile(rf"^{re.escape(node)}$"))
               .first).to_be_attached(timeout=WAIT_MS)
    no_exception(page)


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_works_focused_on_an_artemis_queue(page: Page, live: Live,
                                                      path: str) -> None:
    queue = f"activemq:queue:{live.invoices}"
    _open(page, live, f"{path}?focus={urllib.parse.quote(queue)}")
    expect(page.get_by_role("heading", name=PAGES[path], exact=True)).to_be_visible(
        timeout=WAIT_MS)
    expect(page.get_by_role("combobox", name="Focus on")).to_have_value(queue,
                                                                       timeout=WAIT_MS)
    if path == "lag":
        table = page.get_by_test_id("stDataFrame").first
        expect(table).to_be_visible(timeout=WAIT_MS)
        expect(table).to_contain_text("activemq", timeout=WAIT_MS)
    no_exception(page)


def test_the_retries_page_lists_what_the_broker_dead_lettered(page: Page, live: Live) -> None:
    _open(page, live, "retries")
    heading = page.get_by_role("heading", name="Dead letters", exact=True)
    expect(heading).to_be_visible(timeout=WAIT_MS)
    letters = page.get_by_test_id("stDataFrame").last
    expect(letters).to_be_visible(timeout=WAIT_MS)
    expect(letters).to_contain_text(live.dead, timeout=WAIT_MS)
    no_exception(page)


def test_the_flow_explorer_tells_each_artemis_hop_s_address_and_queue(
        page: Page, live: Live) -> None:
    _open(page, live, f"flows?flow={live.followed}")
    expect(page.get_by_text(f"Flow {live.followed}")).to_be_visible(timeout=WAIT_MS)
    hops = page.get_by_test_id("stDataFrame").last
    expect(hops).to_be_visible(timeout=WAIT_MS)
    for text in ("activemq", live.invoices, live.ledger, "billing", "kafka"):
        expect(hops).to_contain_text(text, timeout=WAIT_MS)
    no_exception(page)
