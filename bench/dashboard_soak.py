"""Memory of the dashboard's Python process and of the page through a long stretch of
auto-refresh.

Starts `flowscope dashboard` on a store (--home: a FLOWSCOPE_HOME holding flowscope.db: the
one bench/dashboard_queries.py --home leaves, or ~/.flowscope while `flowscope demo` writes
it), opens it in Debian's Chromium refreshing every --refresh seconds, moves to the next page
every --dwell seconds, and samples the server's resident memory and, in the page, the
JavaScript heap and the number of DOM nodes.

    .venv/bin/python bench/dashboard_soak.py --home ~/.flowscope --minutes 60 --refresh 5
    .venv/bin/python bench/dashboard_soak.py --home /tmp/dq-store --minutes 12 --refresh 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import sync_playwright

from tests.e2e.browser import CHROMIUM_FLAGS, Dashboard, chromium_path
from tests.integration.demo_stack import free_port

PAGES = ["", "lag", "retries", "flows", "latency", "propagation"]
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE_SIZE / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="FLOWSCOPE_HOME with flowscope.db")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--dwell", type=float, default=60.0, help="seconds on each page")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--refresh", type=int, default=5, help="the pages' refresh interval (s)")
    args = parser.parse_args()
    env = dict(os.environ, FLOWSCOPE_HOME=args.home,
               FLOWSCOPE_DASHBOARD_REFRESH=str(args.refresh))
    env.pop("FLOWSCOPE_STORE", None)
    dashboard = Dashboard(env, free_port(), Path(args.home) / "soak-dashboard.log")
    dashboard.start()
    assert dashboard.proc is not None
    samples: list[tuple[float, float]] = []
    in_page: list[tuple[float, float, int]] = []  # (at, JS heap MB, DOM nodes)
    started = time.monotonic()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(),
                                                 args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            index = 0
            next_page = next_sample = started
            while (now := time.monotonic()) < started + args.minutes * 60:
                if now >= next_page:
                    page.goto(f"{dashboard.url}/{PAGES[index % len(PAGES)]}")
                    index += 1
                    next_page = now + args.dwell
                if now >= next_sample:
                    samples.append((now - started, rss_mb(dashboard.proc.pid)))
                    heap, nodes = page.evaluate(
                        "[performance.memory.usedJSHeapSize / 1e6,"
                        " document.getElementsByTagName('*').length]")
                    in_page.append((now - started, heap, nodes))
                    print(f"[soak {now - started:6.0f}s] page {PAGES[(index - 1) % 6] or 'map'}"
                          f", server RSS {samples[-1][1]:.0f} MB, page JS heap {heap:.0f} MB, "
                          f"{nodes} DOM nodes", flush=True)
                    next_sample = now + args.sample
                page.wait_for_timeout(500)  # the browser keeps refreshing meanwhile
            exceptions = page.get_by_test_id("stException").count()
            browser.close()
    finally:
        dashboard.stop()
    warm = [mb for at, mb in samples if at >= 120] or [mb for _, mb in samples]
    first_half = warm[: len(warm) // 2] or warm
    second_half = warm[len(warm) // 2:] or warm
    print(f"refreshes: about {int(args.minutes * 60 / args.refresh)} ({args.refresh} s "
          f"interval), pages visited {index}, exception elements at the end: {exceptions}")
    heaps = [heap for at, heap, _ in in_page if at >= 120] or [h for _, h, _ in in_page]
    early, late = heaps[: len(heaps) // 2] or heaps, heaps[len(heaps) // 2:] or heaps
    print(f"page JS heap: median first half {statistics.median(early):.0f} MB, second half "
          f"{statistics.median(late):.0f} MB, max {max(heaps):.0f} MB; "
          f"DOM nodes max {max(n for _, _, n in in_page)}")
    print(f"server RSS: start {samples[0][1]:.0f} MB, after warm-up {warm[0]:.0f} MB, "
          f"end {samples[-1][1]:.0f} MB, max {max(mb for _, mb in samples):.0f} MB")
    print(f"median RSS first half of the warm run {statistics.median(first_half):.0f} MB, "
          f"second half {statistics.median(second_half):.0f} MB "
          f"(growth {statistics.median(second_half) - statistics.median(first_half):+.0f} MB)")


if __name__ == "__main__":
    main()
