"""The README's dashboard screenshots, taken from a running dashboard.

    make demo                                        # in another terminal, then:
    .venv/bin/python docs/screenshots.py --only flow-map lag   # while the group is paused
    .venv/bin/python docs/screenshots.py --only retries latency propagation flows  # later

Each page is opened in Debian's Chromium (Playwright), waited on (bounded) until its charts are
drawn and no Streamlit exception is shown, and saved as a PNG under docs/. The flow explorer
shows the newest completed flow that was retried, found in the default store (FLOWSCOPE_STORE).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base.settings import Settings
from store.factory import open_store
from tests.e2e.browser import CHROMIUM_FLAGS, chromium_path

# (file name, url path); each page is taken once its charts are drawn
PAGES = [("flow-map", ""), ("lag", "lag"), ("retries", "retries"), ("latency", "latency"),
         ("propagation", "propagation"), ("flows", "flows")]


def retried_flow() -> str:
    """The newest completed flow with a retry, from the store the demo writes."""
    store = open_store(Settings.from_env(), readonly=True)
    try:
        now = time.time_ns()
        flows = store.flows(now - 3600 * 10**9, now, 5000)
    finally:
        store.close()
    for flow in flows:
        if flow.status == "completed" and flow.retries > 0:
            return flow.id
    raise SystemExit("screenshots: no completed flow with a retry in the store yet; let the "
                     "demo run longer (its failure burst starts after about 80 s)")


def shoot(page: Page, url: str, out: Path, timeout_ms: int) -> None:
    """Open a page, wait for its charts and for Streamlit to finish running it."""
    page.goto(url)
    page.get_by_test_id("stPlotlyChart").first.wait_for(timeout=timeout_ms)
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=timeout_ms)
    if page.get_by_test_id("stException").count():
        raise SystemExit(f"screenshots: {url} shows an exception; see the dashboard's log")
    page.screenshot(path=str(out))
    print(f"screenshots: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8501")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--window", default="15m")
    parser.add_argument("--timeout", type=float, default=45.0, help="seconds per page")
    parser.add_argument("--only", nargs="+", choices=[name for name, _ in PAGES],
                        help="these pages only (say, the lag while a group is paused)")
    args = parser.parse_args()
    pages = [p for p in PAGES if not args.only or p[0] in args.only]
    flow = retried_flow() if any(name == "flows" for name, _ in pages) else ""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(),
                                             args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            for name, path in pages:
                query = f"?window={args.window}" + (f"&flow={flow}" if name == "flows" else "")
                shoot(page, f"{args.url}/{path}{query}", args.out / f"{name}.png",
                      int(args.timeout * 1000))
        finally:
            browser.close()


if __name__ == "__main__":
    main()
