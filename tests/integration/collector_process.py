"""Run `flowscope collect` for tests, and read the store through `flowscope inspect`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.integration.demo_stack import free_port


def get_json(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    """GET url: its status and JSON body (an HTTP error's body too, as /health's 503)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def post_otlp(url: str, body: bytes, content_type: str = "application/x-protobuf",
              encoding: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    """POST an OTLP body to a receiver's base URL: status, body and headers of the answer."""
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"{url}/v1/traces", data=body, headers=headers, method="POST"),
                timeout=30) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@dataclass
class Collector:
    """A `flowscope collect` with its own home, store, port and spans topic."""

    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, home: Path, bootstrap: str, jaeger_otlp: str, jaeger_query: str,
               spans_topic: str) -> Collector:
        """Settings isolated from any other run."""
        env = dict(os.environ)
        env.update(FLOWSCOPE_HOME=str(home), KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                   FLOWSCOPE_OTLP_ADDRESS=f"127.0.0.1:{free_port()}",
                   FLOWSCOPE_SPANS_TOPIC=spans_topic,
                   FLOWSCOPE_JAEGER_OTLP_ENDPOINT=jaeger_otlp,
                   FLOWSCOPE_JAEGER_QUERY_URL=jaeger_query,
                   FLOWSCOPE_MAX_BODY_BYTES=str(256 * 1024),
                   # The tap reads every topic of the broker unless told otherwise: tests
                   # that need it switch it on for their own topics.
                   FLOWSCOPE_TAP="off")
        return cls(env)

    @property
    def otlp_url(self) -> str:
        """Base URL of its OTLP/HTTP receiver."""
        return f"http://{self.env['FLOWSCOPE_OTLP_ADDRESS']}"

    def start(self, *args: str, timeout_s: float = 60.0) -> None:
        """Start it (with extra `collect` options) and wait (bounded) for its ready line.

        Its output is read by a thread all along, so that a chatty collector never blocks on
        a full pipe.
        """
        self.proc = subprocess.Popen([sys.executable, "-m", "flowscope", "collect", *args],
                                     env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def read(stream: IO[str]) -> None:
            for line in stream:
                self.output.append(line)
                if "collect: ready" in line:
                    ready.set()

        assert self.proc.stdout is not None
        threading.Thread(target=read, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if ready.wait(0.1):
                return
        self.proc.kill()
        self.proc.wait(timeout=30)
        raise AssertionError(f"collector not ready in {timeout_s}s: {''.join(self.output)}")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def inspect(self, *args: str) -> dict[str, object]:
        """`flowscope inspect ... --json` against its store ({} for a flow not there yet)."""
        done = subprocess.run([sys.executable, "-m", "flowscope", "inspect", *args, "--json"],
                              env=self.env, capture_output=True, text=True, timeout=60,
                              check=False)
        if done.returncode != 0 and "inspect: no flow" in done.stderr:
            return {}
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def wait_for(self, predicate, *args: str, timeout_s: float = 60.0  # type: ignore[no-untyped-def]
                 ) -> dict[str, object]:
        """Poll inspect until predicate(result) holds (bounded)."""
        deadline = time.monotonic() + timeout_s
        result: dict[str, object] = {}
        while time.monotonic() < deadline:
            result = self.inspect(*args)
            if result and predicate(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"inspect {' '.join(args)} never satisfied the test: {result}")

    def health(self) -> dict[str, object]:
        """Its /health answer."""
        return get_json(f"{self.otlp_url}/health")[1]

    def wait_for_health(self, predicate, timeout_s: float = 30.0  # type: ignore[no-untyped-def]
                        ) -> dict:  # type: ignore[type-arg]
        """Poll /health until predicate(body) holds (bounded)."""
        deadline = time.monotonic() + timeout_s
        body: dict = {}  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            body = self.health()
            if predicate(body):
                return body
            time.sleep(0.3)
        raise AssertionError(f"/health never satisfied the test: {body}")
