"""Debian's Chromium under Playwright, and the running dashboard it looks at."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = os.environ.get("FLOWSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("FLOWSCOPE_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))


def chromium_path() -> str:
    """The browser binary; a clear failure when it is not installed."""
    found = shutil.which(CHROMIUM) or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    assert found, (f"browser: no Chromium at {CHROMIUM}; install Debian's package "
                   "(apt-get install chromium) or set FLOWSCOPE_CHROMIUM")
    return found


@dataclass
class Dashboard:
    """A `flowscope dashboard` process on its own port."""

    env: dict[str, str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Where the browser goes."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start it and wait (bounded) until /_stcore/health answers ok."""
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flowscope", "dashboard", "--port", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as answer:
                    if answer.read() == b"ok":
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"dashboard not healthy in {timeout_s}s; log {self.log}:\n"
                             f"{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


WAIT_MS = 45_000  # for a page of the live dashboard to draw


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A page of Debian's Chromium (headless, tall enough for a whole dashboard page)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(),
                                             args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1440, "height": 2000})
        finally:
            browser.close()


def open_page(page: Page, dashboard: Dashboard, path: str) -> None:
    """Open a page of the dashboard and wait (bounded) for its main area."""
    page.goto(f"{dashboard.url}/{path}")
    expect(page.get_by_test_id("stMain")).to_be_visible(timeout=WAIT_MS)


def no_exception(page: Page) -> None:
    """The page shows no Streamlit exception (its text is the assertion's message)."""
    assert page.get_by_test_id("stException").count() == 0, page.get_by_test_id(
        "stException").first.inner_text()
