"""Jolokia, Artemis' management API over HTTP: one request, and whether a broker is started.

Synchronous (urllib), for the launcher and the tests; it imports nothing of the project.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# A read of every broker's Started attribute (the broker's name is not needed).
STARTED = {"type": "read", "mbean": "org.apache.activemq.artemis:broker=*",
           "attribute": "Started"}


def jolokia_request(management_url: str, body: dict[str, object] | list[dict[str, object]],
                    timeout_s: float = 2.0) -> tuple[int | None, object]:
    """POST a request to Jolokia, with the URL's credentials as basic auth and its own origin
    (Jolokia checks the Origin header): (HTTP status or None when nothing answers, JSON or
    None)."""
    parts = urlsplit(management_url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(
        urlunsplit(parts._replace(netloc=netloc)), data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json",
                 "Origin": f"{parts.scheme}://{netloc}"})
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK_HOSTS else []
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout_s) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return None, None


def broker_started(management_url: str, timeout_s: float = 2.0) -> bool:
    """True when Jolokia answers and a broker there reports Started."""
    code, answer = jolokia_request(management_url, STARTED, timeout_s)
    return code == 200 and reports_started(answer)


def reports_started(answer: object) -> bool:
    """True when Jolokia's answer to STARTED shows a started broker."""
    if not isinstance(answer, dict) or answer.get("status") != 200:
        return False
    value = answer.get("value")
    return isinstance(value, dict) and any(
        isinstance(attributes, dict) and attributes.get("Started") is True
        for attributes in value.values())
