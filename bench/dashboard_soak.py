"""Memory of the dashboard's Python process through a long stretch of auto-refresh.

Starts `flowscope dashboard` on a store (--home: a FLOWSCOPE_HOME holding flowscope.db, e.g.
the one bench/dashboard_queries.py --home leaves, or ~/.flowscope after `make demo`), opens
it in Debian's Chromium with a 1-second refresh, moves to the next page every --dwell
seconds, and samples the server's resident memory. At the default 5-second refresh an hour
is 720 refreshes; --minutes 12 at 1 second gives as many.

    .venv/bin/python bench/dashboard_soak.py --home /tmp/dq-store [--minutes 12] [--dwell 60]
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
    args = parser.parse_args()
    env = dict(os.environ, FLOWSCOPE_HOME=args.home, FLOWSCOPE_DASHBOARD_REFRESH="1")
    env.pop("FLOWSCOPE_STORE", None)
    dashboard = Dashboard(env, free_port(), Path(args.home) / "soak-dashboard.log")
    dashboard.start()
    assert dashboard.proc is not None
    samples: list[tuple[float, float]] = []
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
                    print(f"[soak {now - started:6.0f}s] page {PAGES[(index - 1) % 6] or 'map'}"
                          f", server RSS {samples[-1][1]:.0f} MB", flush=True)
                    next_sample = now + args.sample
                page.wait_for_timeout(500)  # the browser keeps refreshing meanwhile
            exceptions = page.get_by_test_id("stException").count()
            browser.close()
    finally:
        dashboard.stop()
    warm = [mb for at, mb in samples if at >= 120] or [mb for _, mb in samples]
    first_half = warm[: len(warm) // 2] or warm
    second_half = warm[len(warm) // 2:] or warm
    print(f"refreshes: about {int(args.minutes * 60)} (1 s interval), pages visited {index}, "
          f"exception elements at the end: {exceptions}")
    print(f"server RSS: start {samples[0][1]:.0f} MB, after warm-up {warm[0]:.0f} MB, "
          f"end {samples[-1][1]:.0f} MB, max {max(mb for _, mb in samples):.0f} MB")
    print(f"median RSS first half of the warm run {statistics.median(first_half):.0f} MB, "
          f"second half {statistics.median(second_half):.0f} MB "
          f"(growth {statistics.median(second_half) - statistics.median(first_half):+.0f} MB)")


if __name__ == "__main__":
    main()
