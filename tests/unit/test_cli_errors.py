"""Errors of `flowscope` commands name the component, the cause and where to look."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowscope.cli import main
from tests.integration.demo_stack import free_port


def test_collect_with_an_unusable_store_path_says_so_not_that_it_cannot_listen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("FLOWSCOPE_HOME", str(tmp_path))
    monkeypatch.setenv("FLOWSCOPE_STORE", str(blocker / "flowscope.db"))
    monkeypatch.setenv("FLOWSCOPE_OTLP_ADDRESS", f"127.0.0.1:{free_port()}")
    assert main(["collect", "--no-kafka"]) == 1
    error = capsys.readouterr().err
    assert "collect: cannot start" in error
    assert str(blocker) in error
    assert "cannot listen" not in error
