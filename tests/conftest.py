"""Test-session rules shared by every test folder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import psycopg
import pytest

from base.settings import Settings
from flowscope.infra import postgres

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test."""
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test fails the run: skipped integration tests prove nothing."""
    if os.environ.get("CI") and _skipped and exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"CI: {len(_skipped)} test(s) skipped; CI counts that as failure:")
            for nodeid in _skipped:
                reporter.write_line(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a real PostgreSQL server: FLOWSCOPE_POSTGRES_URL's, a running native one, or
    a new one (Debian's server binaries; a machine without them fails here with the apt-get
    command). What this session started, it stops."""
    settings = Settings.from_env()
    already = settings.postgres.external or postgres.status(settings).running
    current = postgres.start(settings)
    yield current.url
    if not already:
        postgres.stop(settings)


@pytest.fixture
def postgres_schema(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A store URL of this test's own: a new schema of the server's database (dropped after
    the test), named in the connection's search path."""
    name = "test_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        db.execute(f"CREATE SCHEMA {name}")
    joiner = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{joiner}options=-csearch_path%3D{name}"
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
