"""Read traces back from the real Jaeger's query API (v1 JSON), with a bounded wait."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

Trace = dict[str, Any]


def fetch_trace(query: str, trace_id: str, complete: Callable[[Trace], bool],
                timeout_s: float = 30.0) -> Trace:
    """Poll GET /api/traces/<id> until complete(trace) holds; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{query}/api/traces/{trace_id}", timeout=5) as answer:
                data = json.load(answer)["data"]
            if data and complete(data[0]):
                return data[0]
            last = f"{len(data[0]['spans']) if data else 0} spans, not complete"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id} not complete in Jaeger after {timeout_s}s: {last}")


def fetch_spans_v3(query: str, trace_id: str, complete: Callable[[list[dict[str, Any]]], bool],
                   timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Poll GET /api/v3/traces/<id> (OTLP JSON) until complete(spans) holds.

    Each span is flattened to {name, spanId, parentSpanId, links, kind, service, start_ns,
    attributes (key -> the value as text)}. The v3 API
    keeps OTLP's parent and links apart; the v1 API folds a link to the parent span into one
    FOLLOWS_FROM reference.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            url = f"{query}/api/v3/traces/{trace_id}"
            with urllib.request.urlopen(url, timeout=5) as answer:
                spans = _flatten(json.load(answer))
            if complete(spans):
                return spans
            last = f"{len(spans)} spans, not complete"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id} not complete in Jaeger after {timeout_s}s: {last}")


def _flatten(answer: dict[str, Any]) -> list[dict[str, Any]]:
    spans = []
    for resource_spans in answer.get("result", {}).get("resourceSpans", []):
        attributes = resource_spans.get("resource", {}).get("attributes", [])
        service = next((a["value"].get("stringValue") for a in attributes
                        if a["key"] == "service.name"), None)
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                spans.append({"name": span["name"], "spanId": span["spanId"],
                              "parentSpanId": span.get("parentSpanId", ""),
                              "links": [link["spanId"] for link in span.get("links", [])],
                              "kind": span.get("kind"), "service": service,
                              "start_ns": int(span.get("startTimeUnixNano", 0)),
                              "attributes": {a["key"]: str(next(iter(a["value"].values()), ""))
                                             for a in span.get("attributes", [])}})
    return spans
