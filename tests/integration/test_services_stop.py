"""`flowscope services` stops promptly on SIGTERM, even while it waits for its services."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.integration.demo_stack import DemoStack


def test_sigterm_while_services_start_stops_them_all(kafka_bootstrap: str,
                                                     tmp_path: Path) -> None:
    stack = DemoStack.create(tmp_path, kafka_bootstrap, "http://127.0.0.1:9",
                             f"stop{uuid.uuid4().hex[:6]}.")
    proc = subprocess.Popen([sys.executable, "-m", "flowscope", "services"], env=stack.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = tmp_path / "services" / "services.json"
    deadline = time.monotonic() + 60
    while not state.exists():  # the services are being started, not yet answering
        assert proc.poll() is None, proc.stdout
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = [entry["pid"] for entry in json.loads(state.read_text()).values()]
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=45)
    assert proc.returncode == 0, output
    assert time.monotonic() - stopped_at < 20, output
    assert "ready:" not in output
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], output
